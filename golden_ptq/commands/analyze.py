"""``golden-ptq analyze``: which layers are sensitive (``golden-ptq tune`` is in ``tune.py``)."""
from __future__ import annotations

import os
from typing import List

from golden_ptq.commands.common import (OUTPUT_ROOT, Stopwatch, load_quant_config, network_helper, quant_config_name,
                                        scheme_line, split_windows)
from golden_ptq.commands.tune import run_tune  # noqa: F401  (the tune job lives in its own module)


def _load(args, stages):
    """(config path, config, tokenizer, float network, calibration windows)."""
    config_path, config = load_quant_config(args)
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
