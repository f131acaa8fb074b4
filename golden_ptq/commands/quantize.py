"""``golden-ptq quantize``: the main job — calibrate, save, reload in DEPLOY mode, compare with float."""
from __future__ import annotations

import datetime
import os
from typing import List

from golden_ptq.commands.common import (OUTPUT_ROOT, Stopwatch, folder_bytes, human_bytes, load_quant_config,
                                        network_helper, quant_config_name, report_writers, scheme_line, split_windows)


def run(args, stages) -> List[str]:
    """Returns the summary lines; ``stages`` is the job's progress bar (one step per stage)."""
    from golden_ptq import PTQ, PTQMode
    from golden_ptq.deploy import load_quantized, save_quantized
    from golden_ptq.eval.perplexity import perplexity

    clock = Stopwatch()
    config_path, config = load_quant_config(args)
    if config.mode is PTQMode.DEPLOY:
        raise ValueError(f"{config_path}: mode is DEPLOY (a config saved beside a quantized model); quantize needs "
                         f"a QUANTIZE config — set `mode: QUANTIZE` or use a shipped config such as a8w8_dynamic")
    name = quant_config_name(config_path)
    output = args.output or os.path.join(OUTPUT_ROOT, name)
    helper = network_helper(args.network_config)
    tokenizer = helper.create_tokenizer()
    seq = args.seq_length
    calib = list(split_windows(tokenizer, "calibration", seq, args.calib_samples, args.text))
    if len(calib) < args.calib_samples:
        raise ValueError(f"--calib-samples {args.calib_samples}: the calibration text has only {len(calib)} windows "
                         f"of {seq} tokens")
    eval_windows = split_windows(tokenizer, "evaluation", seq, args.eval_windows, args.text)
    progress = not args.quiet
    runtime = {"seq_length": seq}
    title = f"golden-ptq quantize: {name}"

    def facts(ptq) -> List[str]:
        return [f"date: {datetime.date.today().isoformat()}", f"quant config: {config_path}",
                f"network config: {helper.config_path}", f"calibration: {ptq.calibration_tokens} tokens "
                f"({len(calib)} x {seq}) in {ptq.calibration_seconds:.1f} s",
                f"layers: {scheme_line(ptq.scheme_counts())}"] + (["streamed: one decoder layer at a time"]
                                                                  if args.stream else [])

    if args.stream:  # the float model is never whole in memory: read, calibrate and write a layer at a time
        from golden_ptq.networks.network_config import parameter_count
        from golden_ptq.streaming import quantize_streamed
        from golden_ptq.streaming.float_source import open_float_source
        source = open_float_source(*helper.weights_source())
        fp16_bytes = 2 * parameter_count(source.config)
        stages.update()
        stages.set_description("calibrate (streamed)")
        ptq = quantize_streamed(source, config, calib, output, progress=progress, tokenizer=tokenizer,
                                runtime=runtime, extra_files=lambda done: report_writers(done, title, facts(done)))
        clock.lap("calibrate and save (streamed)")
        fp_ppl = None
        stages.update()
        stages.update()
    else:
        stages.set_description("load model")
        network = helper.create_network()
        if network.tp.parallel and not args.output:
            raise ValueError(f"quantize under msrun ({network.tp.size} ranks): pass --output FOLDER, the folder "
                             f"every rank writes its rank_<i>/ set into")
        clock.lap("load")
        stages.update()
        stages.set_description("FP32 perplexity")
        fp_ppl = perplexity(network, eval_windows.reshape(-1), seq, batch_size=args.batch_size, progress=progress,
                            desc="FP32 eval")
        fp16_bytes = sum(p.size for _, p in network.parameters_and_names()) * 2
        clock.lap("FP32 eval")
        stages.update()
        stages.set_description("calibrate")
        # No output-error measurement here: it costs memory (`golden-ptq analyze` does it); the report
        # ranks layers by range_parm.
        ptq = PTQ(config, progress=progress)
        ptq.apply(network, helper, calib)
        ptq.convert(network)
        clock.lap("calibrate")
        stages.update()
        stages.set_description("save")
        save_quantized(network, ptq, output, tokenizer=tokenizer, runtime=runtime,
                       extra_files=report_writers(ptq, title, facts(ptq)))
        del network
        clock.lap("save")
    stages.update()
    stages.set_description("reload (DEPLOY)")
    deployed, _ = load_quantized(output)
    clock.lap("reload")
    stages.update()
    stages.set_description("quantized perplexity")
    q_ppl = perplexity(deployed, eval_windows.reshape(-1), seq, batch_size=args.batch_size, progress=progress,
                       desc="quantized eval")
    clock.lap("quantized eval")
    stages.update()
    size = folder_bytes(output)
    tp = deployed.tp
    where = output if not tp.parallel else f"{output} (rank_0 .. rank_{tp.size - 1})"
    return [
        f"quantized {name}: {scheme_line(ptq.scheme_counts())}",
        f"calibration: {ptq.calibration_tokens} tokens in {ptq.calibration_seconds:.1f} s",
        (f"perplexity on {eval_windows.size} held-out tokens: FP32 {fp_ppl:.4f} -> quantized {q_ppl:.4f} "
         f"(ratio {q_ppl / fp_ppl:.4f})" if fp_ppl is not None else
         f"perplexity on {eval_windows.size} held-out tokens: quantized {q_ppl:.4f} (FP32 not measured: --stream "
         f"never holds the float model)"),
        f"saved: {human_bytes(size)} ({size / fp16_bytes:.3f} x the fp16 parameters, {human_bytes(fp16_bytes)})",
        f"time: {clock.seconds():.0f} s ({clock.breakdown()})",
        f"output: {where}",
        f"  report.md has every layer; use it with: golden-ptq eval --model {output} | golden-ptq generate "
        f"--model {output} \"Call me\"",
    ]
