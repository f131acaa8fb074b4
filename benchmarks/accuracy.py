"""Accuracy of every shipped PTQ config against FP32 on held-out text: one table.

For FP32 and each config (``--configs``: shipped names or yaml paths; default every shipped
config), on ``--windows`` windows of ``--seq-length`` tokens of the evaluation split of the
packaged text (its last fifth; calibration uses the first half, ``--calib-samples`` windows):

    ppl ratio   perplexity / FP32's perplexity on the same windows
    mean KL     mean over predicted tokens of KL(P_fp32 || P_quantized), nats
    top-1       fraction of predicted tokens whose most likely next token is FP32's

FP32's log-probabilities are kept in a float32 memory-mapped file in a temporary folder
(``windows x (seq_length - 1) x vocab`` x 4 bytes: 1.6 GB for 16 windows of 512 on SmolLM2),
so each config runs the model once.

    python benchmarks/accuracy.py --windows 4 --calib-samples 2 --configs a16w8      # smoke
    python benchmarks/accuracy.py --windows 16 --json runs/accuracy.json             # the table
    python benchmarks/accuracy.py --split validation --offset 20 --windows 8         # another held-out slice
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from importlib import resources
from typing import Dict, List

import numpy as np

from golden_ptq import PTQ, PTQConfig
from golden_ptq.deploy import packaged_quant_config
from golden_ptq.eval.corpus import corpus_windows
from golden_ptq.networks.default_model import default_gguf_path
from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.networks.loaders import load_gguf


def shipped_configs() -> List[str]:
    folder = resources.files("golden_ptq").joinpath("configs", "ptq")
    return sorted(entry.name[:-5] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def log_probs(logits: np.ndarray) -> np.ndarray:
    """log-softmax over the last axis, float64."""
    logits = logits.astype(np.float64)
    top = logits.max(axis=-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))


class Scorer:
    """Runs networks over the same windows; the first (FP32) is the reference of the others."""

    def __init__(self, windows: np.ndarray, folder: str, batch_size: int = 2):
        self.windows, self.batch_size = windows, batch_size
        self.folder = folder
        self.reference = None

    def _rows(self, network):
        for first in range(0, len(self.windows), self.batch_size):
            batch = self.windows[first:first + self.batch_size]
            logits = network(batch).asnumpy()
            for row in range(len(batch)):
                yield first + row, log_probs(logits[row, :-1]), batch[row, 1:]

    def score(self, network) -> Dict[str, float]:
        n, seq = self.windows.shape
        nll = kl = agree = 0.0
        count = 0
        make_reference = self.reference is None
        for index, logp, targets in self._rows(network):
            nll += float(-np.take_along_axis(logp, targets[:, None], axis=-1).sum())
            count += logp.shape[0]
            if make_reference:
                if self.reference is None:
                    path = os.path.join(self.folder, "fp32_logprobs.f32")
                    self.reference = np.memmap(path, np.float32, "w+", shape=(n,) + logp.shape)
                self.reference[index] = logp
                continue
            ref = self.reference[index].astype(np.float64)
            kl += float((np.exp(ref) * (ref - logp)).sum())
            agree += float((ref.argmax(axis=-1) == logp.argmax(axis=-1)).sum())
        out = {"perplexity": float(np.exp(nll / count)), "tokens": count}
        if not make_reference:
            out.update(mean_kl=kl / count, top1=agree / count)
        return out


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def markdown(rows: List[dict]) -> str:
    lines = ["| config | ppl | ppl ratio | mean KL | top-1 | float Linears | calib s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | error: {r['error']} | | | | | |")
            continue
        lines.append(f"| {r['config']} | {r['perplexity']:.4f} | {r['ratio']:.4f} | "
                     f"{r.get('mean_kl', 0.0):.5f} | {r.get('top1', 1.0):.4f} | {r.get('float_linears', '')} | "
                     f"{r.get('calibration_s', '')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="*", default=None, help="shipped config names or yaml paths (default: all shipped)")
    parser.add_argument("--windows", type=int, default=16, help="evaluation windows (default 16)")
    parser.add_argument("--seq-length", type=int, default=512)
    parser.add_argument("--calib-samples", type=int, default=16, help="calibration windows (default 16, as the CLI)")
    parser.add_argument("--split", default="evaluation", choices=("evaluation", "validation"),
                        help="held-out split of the packaged text (default evaluation; validation: the middle 30%%)")
    parser.add_argument("--offset", type=int, default=0, help="skip this many held-out windows first (default 0)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    configs = args.configs or shipped_configs()
    paths = {name: packaged_quant_config(name) for name in configs}   # a bad name fails before any work

    network, tokenizer = load_gguf(default_gguf_path(), max_position_embeddings=2048)
    weights = {name: p.asnumpy() for name, p in network.parameters_and_names()}
    model_config = network.config
    seq = args.seq_length
    windows = corpus_windows(tokenizer, args.split, seq, args.offset + args.windows)[args.offset:]
    if len(windows) < args.windows:
        raise SystemExit(f"--offset {args.offset} --windows {args.windows}: the {args.split} split has only "
                         f"{args.offset + len(windows)} windows of {seq} tokens")
    calib = list(corpus_windows(tokenizer, "calibration", seq, args.calib_samples))
    command = "python benchmarks/accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (f"{command}\ndate {datetime.date.today().isoformat()}, CPU {cpu_name()} ({os.cpu_count()} cores); "
              f"held-out: {len(windows)} x {seq} tokens of the {args.split} split (from window {args.offset}); "
              f"calibration: {len(calib)} x {seq} "
              f"tokens of the calibration split")
    print(header, flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="golden_ptq_accuracy.") as folder:
        scorer = Scorer(windows, folder)
        start = time.time()
        fp32 = scorer.score(network)
        rows.append({"config": "fp32", "perplexity": fp32["perplexity"], "ratio": 1.0, "eval_s": round(time.time() - start, 1)})
        print(json.dumps(rows[-1]), flush=True)
        del network
        for name, path in paths.items():
            row = {"config": name}
            network = LlamaForCausalLM.from_arrays(model_config, weights)
            try:
                ptq = PTQ(PTQConfig.load(path))
                ptq.apply(network, None, calib)
                ptq.convert(network)
            except (NotImplementedError, ValueError) as err:
                row["error"] = str(err)
                rows.append(row)
                print(json.dumps(row), flush=True)
                continue
            row["calibration_s"] = round(ptq.calibration_seconds, 1)
            row["float_linears"] = sum(1 for r in ptq.records if r.layer_type == "Linear" and r.spec.skip_reason)
            start = time.time()
            result = scorer.score(network)
            row.update(result, ratio=result["perplexity"] / fp32["perplexity"], eval_s=round(time.time() - start, 1))
            rows.append(row)
            print(json.dumps(row), flush=True)
            del network
    print()
    print(header)
    print(markdown(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"command": command, "header": header, "rows": rows}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
