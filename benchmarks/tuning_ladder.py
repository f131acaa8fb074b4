"""The msModelSlim W8A8 tuning ladder on SmolLM2-135M: perplexity per step, and what was rolled back.

Rows (``--schemes``; default all), each a fresh network calibrated on the first half of the
Moby-Dick corpus (``--calib-samples`` windows of ``--seq-length`` tokens) and scored by
perplexity on the last fifth (``--eval-windows`` windows; 0 = all):

    fp32                      the float model
    w8a8                      plain W8A8, static per-tensor activations, act_method --act-method
    w8a8-calibN               the same with --large-calib-samples windows (the guide's 50)
    w8a8+m1 ... w8a8+m6       + each W8A8 anti_method (m5 is reported as not implemented)
    w8a16, w8a16+m3           weight-only, plain and AWQ
    w4a16, w4a16+m3           4-bit weights per group of --group-size, plain and AWQ
    w4a16-asym                the same, asymmetric (min/max per group: the grid GGUF Q4_1 stores)
    w8a8+<method>-calibN      + --method on --tuned-calib-samples windows: the rollback rows' base
    manual                    + --method, all feed_forward.w2 rolled back (disable_names)
    auto                      + --method, disable_level L<--levels> (one row per level)
    manual+auto               both
    search-<method>           + <method> (default row: --method), calibrated once, then
                              search_rollback: the fewest layers (by --signal) rolled back for
                              perplexity <= (1 + --search-tolerance) x FP32's on --search-on data
                              (default: the held-out middle of the text, between the calibration
                              half and the evaluation fifth); one perplexity evaluation per trial
                              (--search-max-layers caps the layers); the row then reports the
                              evaluation windows like every other row

The rollback rows (manual, auto, manual+auto, search) calibrate on --tuned-calib-samples windows:
the guide raises the calibration data to 10-50 samples before rolling back.

    python benchmarks/tuning_ladder.py --calib-samples 2 --eval-windows 1 --schemes fp32 w8a8   # smoke
    python benchmarks/tuning_ladder.py --schemes fp32 search-m2 --search-tolerance 0.01        # search
    python benchmarks/tuning_ladder.py --json runs/ladder.json                                # full
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import mindspore as ms
import numpy as np

from common import score_perplexity
from golden_ptq import PTQ, PTQConfig, QuantGranularity, search_rollback
from golden_ptq.eval.corpus import corpus_split, corpus_windows
from golden_ptq.networks.default_model import default_gguf_path
from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.networks.loaders import load_gguf

I8 = ms.int8
SEARCH_METHODS = ("m1", "m2", "m4", "m6")  # the W8A8 anti_methods a search-<method> row can use


def ladder(args, num_layers: int):
    """scheme -> (PTQConfig kwargs, calibration windows)."""
    w8a8 = dict(act_quant_dtype=I8, act_method=args.act_method)
    w2 = [f"model.layers.{i}.feed_forward.w2" for i in range(num_layers)]
    rows = {"w8a8": (w8a8, args.calib_samples),
            f"w8a8-calib{args.large_calib_samples}": (w8a8, args.large_calib_samples)}
    for method in ("m1", "m2", "m4", "m5", "m6"):
        rows[f"w8a8+{method}"] = (dict(w8a8, anti_method=method), args.calib_samples)
    group = dict(weight_bits=4, weight_quant_granularity=QuantGranularity.PER_GROUP, group_size=args.group_size)
    rows.update({"w8a16": (dict(), args.calib_samples), "w8a16+m3": (dict(anti_method="m3"), args.calib_samples),
                 "w4a16": (group, args.calib_samples), "w4a16+m3": (dict(group, anti_method="m3"), args.calib_samples),
                 "w4a16-asym": (dict(group, weight_symmetric=False), args.calib_samples)})
    tuned = dict(w8a8, anti_method=args.method)
    rows[f"w8a8+{args.method}-calib{args.tuned_calib_samples}"] = (tuned, args.tuned_calib_samples)  # before rollback
    rows["manual"] = (dict(tuned, disable_names=w2), args.tuned_calib_samples)
    for level in args.levels or [num_layers]:
        rows[f"auto-L{level}"] = (dict(tuned, disable_level=f"L{level}", rollback_signal=args.signal),
                                  args.tuned_calib_samples)
        rows[f"manual+auto-L{level}"] = (dict(tuned, disable_names=w2, disable_level=f"L{level}",
                                              rollback_signal=args.signal), args.tuned_calib_samples)
    for method in sorted({args.method} | {s[len("search-"):] for s in args.schemes or [] if s.startswith("search-")}):
        if method in SEARCH_METHODS:
            rows[f"search-{method}"] = (dict(w8a8, anti_method=method, rollback_signal=args.signal),
                                        args.tuned_calib_samples)
    return rows


def run_search(row: dict, ptq: PTQ, network, kwargs: dict, args, score, fp32_ppl: float) -> None:
    """search_rollback on a network calibrated once: the fewest layers for ppl <= (1 + tol) x FP32
    (``score`` and ``fp32_ppl`` on the --search-on data)."""
    target = (1.0 + args.search_tolerance) * fp32_ppl
    start = time.time()
    result = search_rollback(ptq, network, score, target, signal=kwargs["rollback_signal"],
                             max_layers=args.search_max_layers)
    row["search"] = {"signal": result.signal, "tolerance": args.search_tolerance,
                     "scored_on": args.search_on, "fp32_perplexity": round(fp32_ppl, 4), "target": round(target, 4),
                     "reached": result.reached,
                     "chosen_level": result.level, "disable_level": result.disable_level,
                     "candidates": len(result.ranking), "search_perplexity": round(result.score, 4),
                     "trials": [[t.level, round(t.score, 4)] for t in result.trials],
                     "search_s": round(time.time() - start, 1)}
    print(result.summary(), flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schemes", nargs="*", default=None, help="rows to run (default: all)")
    parser.add_argument("--seq-length", type=int, default=512)
    parser.add_argument("--calib-samples", type=int, default=2, help="calibration windows (the guide starts at 2)")
    parser.add_argument("--large-calib-samples", type=int, default=50)
    parser.add_argument("--tuned-calib-samples", type=int, default=16,
                        help="calibration windows of the rollback rows: manual, auto, search (default 16)")
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--act-method", type=int, default=3, choices=[1, 2, 3])
    parser.add_argument("--method", default="m2", help="anti_method of the rollback rows (default: m2)")
    parser.add_argument("--levels", type=int, nargs="*", default=None, help="disable_level values (default: layers)")
    parser.add_argument("--signal", default="range_parm", choices=["range_parm", "output_error"])
    parser.add_argument("--search-tolerance", type=float, default=0.01,
                        help="search rows: target perplexity = (1 + this) x FP32's (default 0.01)")
    parser.add_argument("--search-on", default="validation", choices=["validation", "eval"],
                        help="search rows score on the held-out middle of the text (default) or the evaluation windows")
    parser.add_argument("--search-max-layers", type=int, default=None, help="search rows: roll back at most this many")
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    network, tokenizer = load_gguf(default_gguf_path(), max_position_embeddings=2048)
    weights = {name: p.asnumpy() for name, p in network.parameters_and_names()}
    config = network.config
    del network
    rows = ladder(args, config.num_layers)
    schemes = args.schemes or ["fp32"] + list(rows)
    unknown = [s for s in schemes if s != "fp32" and s not in rows]
    if unknown:
        parser.error(f"unknown scheme(s) {unknown}; choose from {['fp32'] + list(rows)}")
    eval_text = corpus_split("evaluation")
    seq = args.seq_length
    most = max([args.calib_samples] + [rows[s][1] for s in schemes if s in rows])
    calib_windows = corpus_windows(tokenizer, "calibration", seq, most)
    eval_tokens = np.asarray(tokenizer.encode(eval_text))
    windows = args.eval_windows or len(eval_tokens) // seq
    print(f"calibration: windows of {seq} tokens from the first half; evaluation: {windows} x {seq} tokens "
          f"of the last fifth", flush=True)

    search_tokens = eval_tokens if args.search_on == "eval" else np.asarray(tokenizer.encode(corpus_split("validation")))
    results, fp32_ppl, search_fp32 = [], None, None
    for scheme in schemes:
        row = {"scheme": scheme}
        network = LlamaForCausalLM.from_arrays(config, weights)
        if scheme != "fp32":
            kwargs, samples = rows[scheme]
            row["calib_samples"] = samples
            calib = list(calib_windows[:samples])
            search = scheme.startswith("search-")
            if search and search_fp32 is None:  # the target needs FP32's perplexity: score the float network first
                search_fp32 = score_perplexity({}, network, search_tokens, seq, windows)
            try:
                ptq = PTQ(PTQConfig(**kwargs), keep_float_cells=search)
            except NotImplementedError as err:
                row["error"] = str(err)
                results.append(row)
                print(json.dumps(row), flush=True)
                continue
            ptq.apply(network, None, calib)
            if search:
                run_search(row, ptq, network, kwargs, args,
                           lambda net: score_perplexity({}, net, search_tokens, seq, windows), search_fp32)
            ptq.convert(network)
            row["calibration_s"] = round(ptq.calibration_seconds, 1)
            floats = sorted(set(kwargs.get("disable_names", [])) | set(ptq.rolled_back))
            row["rolled_back_count"] = len(floats)
            row["rolled_back"] = floats
            if ptq.range_parms:
                top = sorted(ptq.range_parms, key=lambda n: -ptq.range_parms[n])[:3]
                row["top_range_parm"] = {n: round(ptq.range_parms[n], 2) for n in top}
        ppl = score_perplexity(row, network, eval_tokens, seq, windows, fp32_ppl or None)
        if scheme == "fp32":
            fp32_ppl = ppl
            row["vs_fp32"] = 1.0
        results.append(row)
        print(json.dumps(row), flush=True)
        del network
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"args": vars(args), "results": results}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
