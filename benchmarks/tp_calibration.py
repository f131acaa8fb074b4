"""Calibration wall time and peak RSS per rank for SmolLM2 at TP=1 (one process) vs TP=2 (msrun, 2 workers),
and how far the TP=2 quantized network's logits are from TP=1's.

    python benchmarks/tp_calibration.py --calib-samples 4 --seq-length 256

Runs this file once as a plain process (TP=1) and once under ``msrun --worker_num=2`` (TP=2); each
rank loads its slice of the default GGUF model, calibrates with ``--quant-config`` (default
A8W8 + SmoothQuant + C8) on the first tokens of Moby-Dick's first half, scores the first
windows of the last fifth with the quantized network, and writes
``tp{size}_rank{r}.json`` / ``.npy`` into ``--output-dir``; the driver prints one row per rank, the
largest logit difference from TP=1 on the first evaluation window (and, for scale, the TP=1
quantization error) and the perplexities of both layouts on ``--check-windows`` windows. SmolLM2 has
9 query heads and 3 KV heads: on 2 ranks the query heads go 5 + 4 and the KV heads are replicated.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))


class PeakRSS(threading.Thread):
    """This process's resident memory, sampled every 20 ms; ``peak`` in bytes."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.stopped = 0, False

    def run(self) -> None:
        import psutil
        proc = psutil.Process()
        while not self.stopped:
            self.peak = max(self.peak, proc.memory_info().rss)
            time.sleep(0.02)

    def stop(self) -> int:
        self.stopped = True
        self.join()
        return self.peak


def worker(args) -> None:
    import numpy as np
    from golden_ptq import PTQ, PTQConfig
    from golden_ptq.eval.corpus import corpus_split, corpus_windows
    from golden_ptq.eval.perplexity import perplexity
    from golden_ptq.networks.default_model import default_gguf_path
    from golden_ptq.networks.loaders import load_gguf
    from golden_ptq.parallel import barrier, init_from_launcher

    ctx = init_from_launcher()
    os.makedirs(args.output_dir, exist_ok=True)
    sampler = PeakRSS()
    sampler.start()
    start = time.time()
    network, tokenizer = load_gguf(default_gguf_path(), max_position_embeddings=2048)
    load_s = time.time() - start
    seq = args.seq_length
    calib = list(corpus_windows(tokenizer, "calibration", seq, args.calib_samples))
    barrier(ctx)  # both ranks start calibrating together
    start = time.time()
    ptq = PTQ(PTQConfig.load(args.quant_config))
    ptq.apply(network, None, calib)
    ptq.convert(network)
    calib_s = time.time() - start
    peak = sampler.stop()
    eval_text = corpus_split("evaluation")
    eval_tokens = np.asarray(tokenizer.encode(eval_text[: seq * 8 * args.check_windows]))
    check = eval_tokens[None, :seq]
    np.save(os.path.join(args.output_dir, f"tp{ctx.size}_rank{ctx.rank}_quant.npy"), network(check).asnumpy())
    quant_ppl = perplexity(network, eval_tokens, seq, batch_size=1, max_windows=args.check_windows)
    float_ppl = None
    if ctx.size == 1:  # the float network's logits and perplexity, for the scale of the quantization error
        float_net, _ = load_gguf(default_gguf_path(), max_position_embeddings=2048)
        np.save(os.path.join(args.output_dir, "tp1_float.npy"), float_net(check).asnumpy())
        float_ppl = round(perplexity(float_net, eval_tokens, seq, batch_size=1, max_windows=args.check_windows), 4)
    result = {"tp_size": ctx.size, "rank": ctx.rank, "quant_config": args.quant_config,
              "calibration_tokens": ptq.calibration_tokens, "load_s": round(load_s, 2),
              "calibration_s": round(calib_s, 2), "peak_rss_mb": round(peak / 2**20, 1),
              "parameter_mb": round(sum(p.asnumpy().nbytes for _, p in network.parameters_and_names()) / 2**20, 1),
              "quant_perplexity": round(quant_ppl, 4), "float_perplexity": float_ppl}
    with open(os.path.join(args.output_dir, f"tp{ctx.size}_rank{ctx.rank}.json"), "w", encoding="utf-8") as handle:
        json.dump(result, handle)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(cmd, timeout: int, env=None) -> None:
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, env=env)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise SystemExit(f"timed out after {timeout} s: {' '.join(cmd)}")
    if code:
        raise SystemExit(f"exit {code}: {' '.join(cmd)}")


def driver(args) -> None:
    worker_args = ["--run-rank", "--quant-config", args.quant_config, "--calib-samples", str(args.calib_samples),
                   "--check-windows", str(args.check_windows),
                   "--seq-length", str(args.seq_length), "--output-dir", args.output_dir]
    run([sys.executable, HERE, *worker_args], args.timeout)
    msrun = shutil.which("msrun")
    if msrun is None:
        raise SystemExit("msrun (installed with mindspore) is not on PATH")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    run([msrun, "--worker_num=2", "--local_worker_num=2", f"--master_port={free_port()}",
         f"--log_dir={os.path.join(args.output_dir, 'msrun_log')}", "--join=True", HERE, *worker_args],
        args.timeout, env)
    rows = []
    for name in ("tp1_rank0", "tp2_rank0", "tp2_rank1"):
        with open(os.path.join(args.output_dir, f"{name}.json"), encoding="utf-8") as handle:
            rows.append(json.load(handle))
    print(f"{'TP':>3} {'rank':>4} {'tokens':>7} {'load s':>7} {'calib s':>8} {'peak RSS MB':>12} {'params MB':>10}")
    for r in rows:
        print(f"{r['tp_size']:>3} {r['rank']:>4} {r['calibration_tokens']:>7} {r['load_s']:>7} {r['calibration_s']:>8} "
              f"{r['peak_rss_mb']:>12} {r['parameter_mb']:>10}")
    import numpy as np
    tp1 = np.load(os.path.join(args.output_dir, "tp1_rank0_quant.npy"))
    quant_error = float(np.abs(tp1 - np.load(os.path.join(args.output_dir, "tp1_float.npy"))).max())
    for rank in range(2):
        diff = float(np.abs(np.load(os.path.join(args.output_dir, f"tp2_rank{rank}_quant.npy")) - tp1).max())
        rows[rank + 1]["max_logit_diff_vs_tp1"] = diff
        print(f"TP=2 rank {rank}: quantized logits max |diff| vs TP=1 {diff:.3g} (TP=1 quantized vs float: "
              f"{quant_error:.3g}) over the first {args.seq_length} evaluation tokens; perplexity on "
              f"{args.check_windows} x {args.seq_length} tokens: TP=2 {rows[rank + 1]['quant_perplexity']}, "
              f"TP=1 {rows[0]['quant_perplexity']}, float {rows[0]['float_perplexity']}")
    print(json.dumps(rows))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quant-config", default="configs/ptq/a8w8_smooth_c8.yaml")
    parser.add_argument("--check-windows", type=int, default=4,
                        help="evaluation windows of seq-length tokens scored by both layouts (perplexity)")
    parser.add_argument("--calib-samples", type=int, default=4)
    parser.add_argument("--seq-length", type=int, default=256)
    parser.add_argument("--output-dir", default="runs/tp_calibration")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per run (TP=1, then TP=2)")
    parser.add_argument("--run-rank", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.output_dir = os.path.abspath(args.output_dir)
    args.quant_config = os.path.join(ROOT, args.quant_config) if not os.path.isabs(args.quant_config) \
        else args.quant_config
    (worker if args.run_rank else driver)(args)


if __name__ == "__main__":
    main()
