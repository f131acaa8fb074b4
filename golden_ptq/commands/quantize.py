"""``golden-ptq quantize``: the main job — calibrate, save, reload in DEPLOY mode, compare with float."""
from __future__ import annotations

import datetime
import os
from typing import List

from golden_ptq.commands.common import (OUTPUT_ROOT, Stopwatch, folder_bytes, human_bytes, network_helper,
                                        quant_config_name, report_writers, scheme_line, split_windows)


def run(args, stages) -> List[str]:
    """Returns the summary lines; ``stages`` is the job's progress bar (one step per stage)."""
    from golden_ptq import PTQ, PTQConfig, PTQMode
    from golden_ptq.deploy import load_quantized, packaged_quant_config, save_quantized
    from golden_ptq.eval.perplexity import perplexity

    clock = Stopwatch()
    config_path = packaged_quant_config(args.quant_config)
    config = PTQConfig.load(config_path)
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
    stages.set_description("load model")
    network = helper.create_network()
    if network.tp.parallel and not args.output:
        raise ValueError(f"quantize under msrun ({network.tp.size} ranks): pass --output FOLDER, the folder every "
                         f"rank writes its rank_<i>/ set into")
    stages.update()
    stages.set_description("FP32 perplexity")
    progress = not args.quiet
    fp_ppl = perplexity(network, eval_windows.reshape(-1), seq, batch_size=args.batch_size, progress=progress,
                        desc="FP32 eval")
    fp16_bytes = sum(p.size for _, p in network.parameters_and_names()) * 2
    stages.update()
    stages.set_description("calibrate")
    # No output-error measurement here: it costs ~5 GB more on SmolLM2 (`golden-ptq analyze` does it);
    # the report ranks layers by range_parm.
    ptq = PTQ(config, progress=progress)
    ptq.apply(network, helper, calib)
    ptq.convert(network)
    calib_s = ptq.calibration_seconds
    stages.update()
    stages.set_description("save")
    facts = [f"date: {datetime.date.today().isoformat()}", f"quant config: {config_path}",
             f"network config: {helper.config_path}", f"calibration: {ptq.calibration_tokens} tokens "
             f"({len(calib)} x {seq}) in {calib_s:.1f} s", f"layers: {scheme_line(ptq.scheme_counts())}"]
    runtime = {"seq_length": seq}
    save_quantized(network, ptq, output, tokenizer=tokenizer, runtime=runtime,
                   extra_files=report_writers(ptq, f"golden-ptq quantize: {name}", facts))
    del network
    stages.update()
    stages.set_description("reload (DEPLOY)")
    deployed, _ = load_quantized(output)
    stages.update()
    stages.set_description("quantized perplexity")
    q_ppl = perplexity(deployed, eval_windows.reshape(-1), seq, batch_size=args.batch_size, progress=progress,
                       desc="quantized eval")
    stages.update()
    size = folder_bytes(output)
    tp = deployed.tp
    where = output if not tp.parallel else f"{output} (rank_0 .. rank_{tp.size - 1})"
    return [
        f"quantized {name}: {scheme_line(ptq.scheme_counts())}",
        f"calibration: {ptq.calibration_tokens} tokens in {calib_s:.1f} s",
        f"perplexity on {eval_windows.size} held-out tokens: FP32 {fp_ppl:.4f} -> quantized {q_ppl:.4f} "
        f"(ratio {q_ppl / fp_ppl:.4f})",
        f"saved: {human_bytes(size)} ({size / fp16_bytes:.3f} x the fp16 parameters, {human_bytes(fp16_bytes)})",
        f"time: {clock.seconds():.0f} s",
        f"output: {where}",
        f"  report.md has every layer; use it with: golden-ptq eval --model {output} | golden-ptq generate "
        f"--model {output} \"Call me\"",
    ]
