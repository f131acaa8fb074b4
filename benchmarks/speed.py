"""Inference speed of SmolLM2-135M: FP32 and every shipped deploy form, side by side.

Prefill tokens/s at 1 x 512 and 4 x 512, decode tokens/s at batch 1 and 8 (after a short
prompt), for golden_ptq FP32 and each ``configs/ptq/*.yaml`` (quantized on a few calibration
windows, which only fixes scales: speed does not depend on them), with the library's defaults
(compiled decode steps, eager prefill; ``--compiled-forward`` / ``--eager`` change that). With the
optional ``bench`` extra (transformers + torch CPU) the same GGUF is loaded by transformers too.

Each form is measured in its own process together with FP32, interleaved column by column and
the order reversed every other round (FP32 then form, form then FP32, ...), so every ratio compares
figures taken side by side in one process, neither side gains from its position, and noise shows as
the spread between best and median.

transformers runs in processes of its own, alternating with processes that run golden_ptq FP32 alone
(FP32, transformers, transformers, FP32, ...; ``--tf-processes`` of each): in one process each
framework's idle threads take CPU from the other (torch's beside MindSpore cost golden_ptq's FP32
prefill ~10-20% on a 2-core Xeon). ``--tf-same-process`` measures them side by side in one process
instead.

    python benchmarks/speed.py
    python benchmarks/speed.py --forms a8w8_dynamic a16w8 --repeats 5 --no-transformers
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import psutil

from golden_ptq import PTQ, PTQConfig
from golden_ptq.eval.corpus import corpus_windows
from golden_ptq.kernels import kernel_info, set_native_kernels
from golden_ptq.networks.default_model import default_gguf_path
from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.networks.loaders import load_gguf

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs", "ptq")
PREFILL_SHAPES = [(1, 512), (4, 512)]
DECODE_BATCHES = [1, 8]
PROMPT = 16


def rss_gb() -> float:
    return psutil.Process().memory_info().rss / 1e9


def cpu_flags() -> str:
    with open("/proc/cpuinfo") as handle:
        flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    wanted = ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_tile"]
    return " ".join(f for f in wanted if f in flags)


class GoldenRunner:
    """Prefill / decode timings of a golden_ptq network, with the library's defaults (compiled
    decode steps, eager prefill) unless told otherwise. The short decode prompts are always
    prefilled eagerly (untimed) so they add no graphs."""

    def __init__(self, network, compiled: bool, compiled_forward: bool):
        self.network, self.compiled_forward = network, compiled_forward
        network.set_compiled(decode=compiled, forward=compiled_forward)

    def prefill(self, ids: np.ndarray) -> None:
        self.network.compiled_forward = self.compiled_forward
        self.network.prefill(ids).asnumpy()

    def decode(self, ids: np.ndarray, steps: int) -> float:
        """Seconds for ``steps`` decode steps after prefilling ``ids``."""
        self.network.compiled_forward = False
        logits = self.network.prefill(ids).asnumpy()
        token = logits.argmax(-1)
        start = time.perf_counter()
        for _ in range(steps):
            token = self.network.decode_step(token).asnumpy().argmax(-1)
        seconds = time.perf_counter() - start
        self.network.reset_cache()
        return seconds


class TransformersRunner:
    """The same measurements on a transformers model (torch, CPU, eval, no grad)."""

    def __init__(self, model, torch):
        self.model, self.torch = model, torch

    def prefill(self, ids: np.ndarray) -> None:
        with self.torch.no_grad():
            self.model(self.torch.from_numpy(ids.astype(np.int64)), use_cache=True)

    def decode(self, ids: np.ndarray, steps: int) -> float:
        torch = self.torch
        with torch.no_grad():
            out = self.model(torch.from_numpy(ids.astype(np.int64)), use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            start = time.perf_counter()
            for _ in range(steps):
                out = self.model(token, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            return time.perf_counter() - start


def load_transformers(threads: int):
    """SmolLM2 from the same GGUF through transformers' GGUF loader, or None without the bench extra."""
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:
        return None
    torch.set_num_threads(threads)
    path = default_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 torch_dtype=torch.float32)
    model.eval()
    return TransformersRunner(model, torch)


def build_forms(names: List[str], calib: List[np.ndarray], compiled: bool, compiled_forward: bool,
                vocab_probe: int = 2, network=None):
    """Each form built, then warmed up at once (first calls compile its graphs), before the next.
    ``network``: the float SmolLM2 already loaded (the FP32 form; the others copy its weights), else
    loaded here."""
    if network is None:
        network, _ = load_gguf(default_gguf_path(), max_position_embeddings=2048)
    weights = {name: p.asnumpy() for name, p in network.parameters_and_names()}
    config = network.config
    forms, memory, warmup = {}, {}, {}
    for name in names:
        before = rss_gb()
        net = network if name == "fp32" else LlamaForCausalLM.from_arrays(config, weights)
        if name != "fp32":
            ptq = PTQ(PTQConfig.load(os.path.join(CONFIG_DIR, f"{name}.yaml")))
            ptq.apply(net, None, calib)
            ptq.convert(net)
        runner = GoldenRunner(net, compiled, compiled_forward)
        start = time.perf_counter()
        measure(runner, np.random.RandomState(0), config.vocab_size, vocab_probe)
        warmup[name] = time.perf_counter() - start
        forms[name] = runner
        memory[name] = rss_gb() - before if name != "fp32" else rss_gb()
        print(f"built {name}; warm-up (first calls, graph compilation) {warmup[name]:.1f} s", flush=True)
    return forms, memory, warmup


def measure(runner, rng: np.random.RandomState, vocab: int, decode_steps: int) -> Dict[str, float]:
    """Tokens/s of one round: prefill shapes and decode batches."""
    return {column: measure_column(runner, column, rng, vocab, decode_steps) for column in COLUMNS}


COLUMNS = [f"prefill {b}x{n}" for b, n in PREFILL_SHAPES] + [f"decode b{b}" for b in DECODE_BATCHES]


def measure_column(runner, column: str, rng: np.random.RandomState, vocab: int, decode_steps: int) -> float:
    """Tokens/s of one column (``COLUMNS``) in one round."""
    if column.startswith("prefill"):
        batch, length = (int(v) for v in column.split()[1].split("x"))
        ids = rng.randint(0, vocab, (batch, length))
        start = time.perf_counter()
        runner.prefill(ids)
        return batch * length / (time.perf_counter() - start)
    batch = int(column.split()[1][1:])
    ids = rng.randint(0, vocab, (batch, PROMPT))
    return batch * decode_steps / runner.decode(ids, decode_steps)


def interleaved_rounds(runners: Dict[str, object], repeats: int, vocab: int,
                       decode_steps: int) -> Dict[str, List[Dict[str, float]]]:
    """Every column measured on every runner back to back, the runners' order reversed every other
    round (A B, B A, ...): whichever runs first or second after another network gains or loses
    nothing systematic (measured: running second cost FP32 itself ~1-7% in prefill)."""
    samples: Dict[str, List[Dict[str, float]]] = {name: [] for name in runners}
    names = list(runners)
    for round_index in range(repeats):
        order = names if round_index % 2 == 0 else names[::-1]
        row: Dict[str, Dict[str, float]] = {name: {} for name in names}
        for column in COLUMNS:
            for name in order:
                rng = np.random.RandomState(round_index)   # the same token ids for every runner
                row[name][column] = measure_column(runners[name], column, rng, vocab, decode_steps)
        for name in names:
            samples[name].append(row[name])
    return samples


def main(argv=None) -> int:
    shipped = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(CONFIG_DIR, "*.yaml")))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--forms", nargs="*", default=shipped, help=f"any of {shipped} (FP32 is always measured)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--calib-windows", type=int, default=2)
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument("--tf-processes", type=int, default=2,
                        help="processes each of golden_ptq FP32 alone and transformers alone, alternating")
    parser.add_argument("--tf-same-process", action="store_true",
                        help="transformers beside golden_ptq FP32 in one process instead")
    parser.add_argument("--no-native", action="store_true", help="quantized forms on MindSpore ops only")
    parser.add_argument("--eager", action="store_true", help="golden_ptq op by op (PyNative), nothing compiled")
    parser.add_argument("--compiled-forward", action="store_true",
                        help="compiled prefill too (opt-in: each form then holds several GB of graphs)")
    parser.add_argument("--json", default=None, help="also write the raw figures here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [f for f in args.forms if f not in shipped]
    if unknown:
        parser.error(f"unknown form(s) {unknown}; choose from {shipped}")
    if args.worker:
        return worker(args)
    # One process per pair (FP32 + one form, or FP32 + transformers): MindSpore 2.10's graph parser
    # has been seen to confuse cells in a process that builds and compiles many networks.
    together = args.tf_same_process and not args.no_transformers
    partners = (["transformers"] if together else []) + list(args.forms)
    flags = [a for a in (argv if argv is not None else sys.argv[1:])]
    results = {}
    if not args.no_transformers and not together:
        combined = _transformers_apart(flags, args.tf_processes)
        if combined is not None:
            results["transformers"] = combined
    for partner in partners:
        print(f"measuring fp32 + {partner} ...", flush=True)
        result = _run_worker(flags, partner)
        if result is not None:
            results[partner] = result
    print_table(results)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"cpu_flags": cpu_flags(), "kernels": kernel_info().__dict__, "results": results,
                       "args": vars(args)}, handle, indent=1)
    return 0


def _run_worker(flags: List[str], partner: str) -> Optional[dict]:
    """One worker process's RESULT, or None (it failed or skipped: said on stdout)."""
    cmd = [sys.executable, os.path.abspath(__file__), *_strip_forms(flags), "--worker", partner]
    # os.environ, not the inherited C environment: importing MindSpore setenv()s OMP_NUM_THREADS=1 there
    # (os.environ does not see it), and a child inheriting it runs numpy's OpenBLAS on one thread --
    # golden_ptq's FP32 prefill at ~0.65x (2026-12-03).
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        print(f"  failed ({tail})", flush=True)
        return None
    result = json.loads(lines[-1][len("RESULT "):])
    if result.get("skipped"):
        print(f"  {result['skipped']}", flush=True)
        return None
    return result


ALONE_FP32, ALONE_TF = "fp32-alone", "transformers-alone"


def alternating_order(processes: int) -> List[str]:
    """Worker order for FP32-alone and transformers-alone processes: A B, B A, A B, ... so that
    neither always runs first (or on a machine just warmed by the other)."""
    order: List[str] = []
    for i in range(processes):
        pair = [ALONE_FP32, ALONE_TF]
        order += pair if i % 2 == 0 else pair[::-1]
    return order


def _transformers_apart(flags: List[str], processes: int) -> Optional[dict]:
    """golden_ptq FP32 and transformers, each alone in its own processes, alternating; their rounds
    pooled into the shape of a side-by-side result (``samples`` for ``fp32`` and ``transformers``)."""
    samples: Dict[str, List[Dict[str, float]]] = {"fp32": [], "transformers": []}
    peak, warmup = 0.0, {}
    for partner in alternating_order(max(1, processes)):
        print(f"measuring {partner} ...", flush=True)
        result = _run_worker(flags, partner)
        if result is None:
            return None
        for name, rows in result["samples"].items():
            samples[name] += rows
            warmup[name] = result["warmup_s"][name]
        if "fp32" in result["samples"]:
            peak = max(peak, result["peak_rss_gb"])
    return {"samples": samples, "peak_rss_gb": peak, "warmup_s": warmup, "apart": True,
            "kernels": result["kernels"], "fell_back_to_eager": []}


def _strip_forms(flags: List[str]) -> List[str]:
    """The command line without ``--forms ...`` and ``--json X`` (a worker gets its partner)."""
    out, skip = [], False
    for i, flag in enumerate(flags):
        if flag in ("--forms", "--json"):
            skip = True
            if flag == "--json":
                skip = "one"
            continue
        if skip == "one":
            skip = False
            continue
        if skip and not flag.startswith("--"):
            continue
        skip = False
        out.append(flag)
    return out


def worker(args) -> int:
    """FP32 and ``args.worker`` in this process, rounds interleaved (``fp32-alone`` /
    ``transformers-alone``: that one alone); prints one RESULT json line."""
    if args.no_native:
        set_native_kernels(False)
    partner = args.worker
    network, tokenizer = load_gguf(default_gguf_path(), max_position_embeddings=2048)
    vocab = network.config.vocab_size   # every process draws its token ids from the same range
    calib = list(corpus_windows(tokenizer, "calibration", 256, args.calib_windows))
    runners: Dict[str, object] = {}
    memory: Dict[str, float] = {}
    warmup: Dict[str, float] = {}
    if partner != ALONE_TF:
        names = ["fp32"] + ([] if partner in ("transformers", ALONE_FP32) else [partner])
        runners, memory, warmup = build_forms(names, calib, compiled=not args.eager,
                                              compiled_forward=args.compiled_forward and not args.eager,
                                              network=network)
    del network   # the FP32 runner keeps it; a transformers-alone process does not need it
    if partner in ("transformers", ALONE_TF):
        before = rss_gb()
        hf = load_transformers(threads=psutil.cpu_count(logical=True) or 1)
        if hf is None:
            print("RESULT " + json.dumps({"skipped": "transformers/torch not installed (pip install .[bench])"}))
            return 0
        runners["transformers"] = hf
        memory["transformers"] = rss_gb() - before
        start = time.perf_counter()
        measure(hf, np.random.RandomState(0), vocab, 2)
        warmup["transformers"] = time.perf_counter() - start
    samples = interleaved_rounds(runners, args.repeats, vocab, args.decode_steps)
    info = kernel_info()
    fallbacks = [name for name, r in runners.items() if isinstance(r, GoldenRunner) and not args.eager
                 and not r.network.compiled_decode]
    print("RESULT " + json.dumps({"samples": samples, "rss_gb": memory, "warmup_s": warmup,
                                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
                                  "kernels": info.isa if info.available and info.enabled else "off",
                                  "fell_back_to_eager": fallbacks}))
    return 0


def print_table(results: Dict[str, dict]) -> None:
    """One row per form; ratios against the FP32 measured in the same process."""
    if not results:
        print("no results")
        return
    kernels = next(iter(results.values()))["kernels"]
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')}  CPU flags: {cpu_flags()}  cores: {psutil.cpu_count()}  "
          f"native kernels: {kernels}")
    first = next(iter(results.values()))["samples"]["fp32"]
    columns = list(first[0])

    def best(rows, c):
        return max(r[c] for r in rows)

    def med(rows, c):
        return statistics.median(r[c] for r in rows)

    apart = any(result.get("apart") for result in results.values())
    print("tokens/s: best (median) of the interleaved rounds; ×fp32: best over the best of golden_ptq FP32 "
          "measured in the same process; ×tf: golden_ptq FP32 over transformers FP32, "
          + ("each alone in its own processes, alternating" if apart else "measured in the same process"))
    print(f"| form | {' | '.join(columns)} | peak RSS GB (with fp32) | warm-up s |")
    print("|" + "---|" * (len(columns) + 3))
    for partner, result in results.items():
        samples = result["samples"]
        fp32 = samples["fp32"]
        if partner == "transformers":
            tf = samples["transformers"]
            cells = [f"{best(fp32, c):.1f} ({med(fp32, c):.1f}) {best(fp32, c) / best(tf, c):.2f}×tf" for c in columns]
            print(f"| fp32 | {' | '.join(cells)} | {result['peak_rss_gb']:.2f} | {result['warmup_s']['fp32']:.0f} |")
            cells = [f"{best(tf, c):.1f} ({med(tf, c):.1f})" for c in columns]
            print(f"| transformers | {' | '.join(cells)} | | {result['warmup_s']['transformers']:.0f} |")
            continue
        rows = samples[partner]
        cells = [f"{best(rows, c):.1f} ({med(rows, c):.1f}) {best(rows, c) / best(fp32, c):.2f}×fp32" for c in columns]
        note = " (fell back to eager)" if partner in result.get("fell_back_to_eager", []) else ""
        print(f"| {partner}{note} | {' | '.join(cells)} | {result['peak_rss_gb']:.2f} | "
              f"{result['warmup_s'][partner]:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
