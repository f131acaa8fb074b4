"""``golden-ptq analyze`` (which layers are sensitive) and ``golden-ptq tune`` (fewest float layers for a target)."""
from __future__ import annotations

import os
from typing import List

from golden_ptq.commands.common import (OUTPUT_ROOT, Stopwatch, network_helper, quant_config_name, report_writers,
                                        scheme_line, split_windows)


def _load(args, stages):
    """(config path, config, tokenizer, float network, calibration windows)."""
    from golden_ptq import PTQConfig
    from golden_ptq.deploy import packaged_quant_config
    config_path = packaged_quant_config(args.quant_config)
    config = PTQConfig.load(config_path)
    helper = network_helper(args.network_config)
    tokenizer = helper.create_tokenizer()
    calib = list(split_windows(tokenizer, "calibration", args.seq_length, args.calib_samples, args.text))
    stages.set_description("load model")
    network = helper.create_network()
    stages.update()
    return config_path, config, tokenizer, network, calib


def _calibrate(args, stages, config, network, calib, keep_float_cells: bool):
    from golden_ptq import PTQ
    stages.set_description("calibrate")
    ptq = PTQ(config, measure_sensitivity=True, keep_float_cells=keep_float_cells, progress=not args.quiet)
    ptq.apply(network, None, calib)
    stages.update()
    return ptq


def run_analyze(args, stages) -> List[str]:
    """Calibrate with output-error measurement and write the sensitivity report (no model is saved)."""
    from golden_ptq.algorithm.sensitivity import write_sensitivity_report
    import importlib.util
    clock = Stopwatch()
    config_path, config, _, network, calib = _load(args, stages)
    ptq = _calibrate(args, stages, config, network, calib, keep_float_cells=False)
    output = args.output or os.path.join(OUTPUT_ROOT, quant_config_name(config_path) + "-analysis")
    stages.set_description("report")
    png = importlib.util.find_spec("matplotlib") is not None
    paths = write_sensitivity_report(ptq, output, order_by=args.order_by, png=png)
    stages.update()
    top = sorted(ptq.output_errors.items(), key=lambda kv: -kv[1])[:5]
    return [f"analyzed {quant_config_name(config_path)}: {scheme_line(ptq.scheme_counts())}",
            "most sensitive by output error (relative MSE): " + ", ".join(f"{n} {e:.3g}" for n, e in top),
            f"time: {clock.seconds():.0f} s", f"report: {', '.join(sorted(paths.values()))}"]


def run_tune(args, stages) -> List[str]:
    """Calibrate once, then roll back the fewest Linear layers so that the perplexity ratio on the
    validation split (never used for calibration or the reported evaluation) meets ``--target``;
    save that model."""
    from golden_ptq.algorithm.rollback import search_rollback
    from golden_ptq.deploy import save_quantized
    from golden_ptq.eval.perplexity import perplexity
    clock = Stopwatch()
    config_path, config, tokenizer, network, calib = _load(args, stages)
    val = split_windows(tokenizer, "validation", args.seq_length, args.eval_windows, args.text).reshape(-1)
    stages.set_description("FP32 perplexity")
    fp_ppl = perplexity(network, val, args.seq_length, batch_size=args.batch_size, progress=not args.quiet,
                        desc="FP32 eval")
    ptq = _calibrate(args, stages, config, network, calib, keep_float_cells=True)
    stages.set_description("tune")

    def score(net) -> float:
        return perplexity(net, val, args.seq_length, batch_size=args.batch_size) / fp_ppl

    result = search_rollback(ptq, network, score, args.target, signal=args.signal)
    ptq.convert(network)
    stages.update()
    name = quant_config_name(config_path) + "-tuned"
    output = args.output or os.path.join(OUTPUT_ROOT, name)
    stages.set_description("save")
    facts = [f"target perplexity ratio {args.target} on {val.size} validation tokens; FP32 {fp_ppl:.4f}",
             *result.summary().splitlines()]
    save_quantized(network, ptq, output, tokenizer=tokenizer, runtime={"seq_length": args.seq_length},
                   extra_files=report_writers(ptq, f"golden-ptq tune: {name}", facts))
    stages.update()
    verdict = "reached" if result.reached else "NOT reached (the best model tried is saved)"
    return [f"tuned {quant_config_name(config_path)}: {scheme_line(ptq.scheme_counts())}",
            f"target ratio {args.target} {verdict}: ratio {result.score:.4f} with {len(result.rolled_back)} "
            f"Linear layer(s) float, {len(result.trials)} trial(s) scored on {val.size} validation tokens",
            f"time: {clock.seconds():.0f} s", f"output: {output}"]
