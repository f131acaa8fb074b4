"""PTQ acceptance figures on SmolLM2-135M: perplexity, calibration time, checkpoint sizes, peak RSS.

Calibration: the first half of the Moby-Dick corpus, cut into --seq-length windows (--calib-samples
of them). Evaluation: perplexity on the last fifth, non-overlapping --seq-length windows
(--eval-windows of them; 0 = the whole last fifth).

    python benchmarks/ptq_smollm2.py                         # all schemes, default sizes
    python benchmarks/ptq_smollm2.py --schemes fp32 a16w8 --eval-windows 0
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

import mindspore as ms
import numpy as np

from common import score_perplexity
from golden_ptq import PTQ, OutliersSuppressionType, PTQConfig, QuantGranularity
from golden_ptq.io.checkpoint import save_checkpoint
from golden_ptq.eval.corpus import corpus_split, corpus_windows
from golden_ptq.networks.default_model import default_gguf_path
from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.networks.loaders import load_gguf
from golden_ptq.quant_cells import QuantLinear

I8 = ms.int8
SMOOTH = OutliersSuppressionType.SMOOTH
SCHEMES = {
    "a16w8": dict(),
    "a16w8+emb": dict(embedding_quant_dtype=I8),
    "c8": dict(weight_quant_dtype=None, kvcache_quant_dtype=I8),
    "a8w8": dict(act_quant_dtype=I8),
    "a8w8+smooth": dict(act_quant_dtype=I8, outliers_suppression=SMOOTH),
    "a8w8+smooth+blacklist": dict(act_quant_dtype=I8, outliers_suppression=SMOOTH, opname_blacklist=["w2", "lm_head"]),
    "a8w8-dynamic": dict(act_quant_dtype=I8, act_quant_granularity=QuantGranularity.PER_TOKEN),
    # as peer tools run it: lm_head (the tied embedding here) stays float
    "a8w8-dynamic-head-float": dict(act_quant_dtype=I8, act_quant_granularity=QuantGranularity.PER_TOKEN,
                                    opname_blacklist=["lm_head"]),
    "a8w8c8+smooth": dict(act_quant_dtype=I8, kvcache_quant_dtype=I8, outliers_suppression=SMOOTH),
}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6



def fp16_ckpt_bytes(weights, folder) -> int:
    path = os.path.join(folder, "fp16.ckpt")
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v.astype(np.float16))} for k, v in weights.items()], path)
    return os.path.getsize(path)


def linear_bytes(network):
    """(bytes of quantized Linear parameters, fp16 bytes of the same Linears' float weights)."""
    quant, fp16, seen = 0, 0, set()
    for _, cell in network.cells_and_names():
        if isinstance(cell, QuantLinear):
            for _, p in cell.parameters_and_names(expand=False):
                if id(p) not in seen:
                    seen.add(id(p))
                    quant += p.asnumpy().nbytes
            fp16 += cell.in_features * cell.out_features * 2 + (cell.out_features * 2 if cell.bias is not None else 0)
    return quant, fp16


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schemes", nargs="*", default=["fp32"] + list(SCHEMES))
    parser.add_argument("--seq-length", type=int, default=512)
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    unknown = [s for s in args.schemes if s != "fp32" and s not in SCHEMES]
    if unknown:
        parser.error(f"unknown scheme(s) {unknown}; choose from {['fp32'] + list(SCHEMES)}")

    network, tokenizer = load_gguf(default_gguf_path(), max_position_embeddings=2048)
    weights = {name: p.asnumpy() for name, p in network.parameters_and_names()}
    config = network.config
    del network
    eval_text = corpus_split("evaluation")
    seq = args.seq_length
    calib = list(corpus_windows(tokenizer, "calibration", seq, args.calib_samples))
    if len(calib[-1]) < seq:
        raise SystemExit("calibration text too short for the requested samples")
    eval_tokens = np.asarray(tokenizer.encode(eval_text))
    windows = args.eval_windows or len(eval_tokens) // seq
    print(f"calibration: {args.calib_samples} x {seq} tokens; evaluation: {windows} x {seq} tokens "
          f"of {len(eval_tokens)} in the last fifth", flush=True)

    results = []
    with tempfile.TemporaryDirectory() as folder:
        fp16_bytes = fp16_ckpt_bytes(weights, folder)
        fp32_ppl = None
        for scheme in args.schemes:
            network = LlamaForCausalLM.from_arrays(config, weights)
            row = {"scheme": scheme}
            if scheme == "fp32":
                batches = np.stack(calib).reshape(-1, 8, seq) if len(calib) % 8 == 0 else np.stack(calib)[None]
                network(batches[0]).asnumpy()  # compile for the shape
                start = time.time()
                for batch in batches:
                    network(batch).asnumpy()
                row["fp32_forward_over_calibration_s"] = round(time.time() - start, 2)
            else:
                ptq = PTQ(PTQConfig(**SCHEMES[scheme]))
                ptq.apply(network, None, calib)
                ptq.convert(network)
                row["calibration_s"] = round(ptq.calibration_seconds, 2)
                path = os.path.join(folder, f"{scheme}.ckpt")
                save_checkpoint(network, path)
                row["ckpt_bytes"] = os.path.getsize(path)
                row["ckpt_vs_fp16"] = round(row["ckpt_bytes"] / fp16_bytes, 3)
                half = os.path.join(folder, f"{scheme}-f16floats.ckpt")
                save_checkpoint(network, half, desc_path=os.path.join(folder, "desc.json"), float_dtype="float16")
                row["ckpt_f16_floats_vs_fp16"] = round(os.path.getsize(half) / fp16_bytes, 3)
                q, f = linear_bytes(network)
                if f:
                    row["quant_linear_vs_fp16"] = round(q / f, 4)
            ppl = score_perplexity(row, network, eval_tokens, seq, windows, fp32_ppl or None)
            if scheme == "fp32":
                fp32_ppl = ppl
                row["vs_fp32"] = 1.0
            row["peak_rss_gb"] = round(peak_rss_gb(), 2)
            results.append(row)
            print(json.dumps(row), flush=True)
            del network
    print(f"fp16 checkpoint of the same model: {fp16_bytes} bytes")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"args": vars(args), "fp16_ckpt_bytes": fp16_bytes, "results": results}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
