"""golden-ptq: post-training quantization of Llama-family LLMs on MindSpore, on any CPU.

  golden-ptq quantize                       the main job on the embedded SmolLM2 (a8w8_dynamic)
  golden-ptq quantize --quant-config a8w8_smooth_c8 --output runs/a8w8c8
  golden-ptq eval --model runs/a8w8c8       perplexity of a saved quantized model
  golden-ptq generate --model runs/a8w8c8 "Call me"
  golden-ptq analyze --quant-config a8w8_static     which layers are sensitive
  golden-ptq tune --quant-config a8w8_static --target 1.01   fewest float layers for a target
  golden-ptq export runs/a8w8c8 --format compressed-tensors --output runs/a8w8c8-ct   serve it elsewhere
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from golden_ptq.commands.arguments import existing_file, existing_folder, non_negative_int, positive_float, positive_int

JOBS = ("quantize", "eval", "perplexity", "generate", "analyze", "tune", "export", "import")


def _network_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--network-config", type=existing_file, default=None,
                        help="network yaml (default: the embedded SmolLM2-135M-Instruct; with --model, the saved "
                             "folder's network.yaml)")


def _text_options(parser: argparse.ArgumentParser, windows_help: str, windows_default: int) -> None:
    parser.add_argument("--text", type=existing_file, default=None,
                        help="UTF-8 text to calibrate/evaluate on (default: the packaged Moby-Dick; first half "
                             "calibrates, middle 30%% validates, last fifth evaluates)")
    parser.add_argument("--seq-length", type=positive_int, default=512, help="tokens per window (default: %(default)s)")
    parser.add_argument("--eval-windows", type=non_negative_int, default=windows_default,
                        help=windows_help + " (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="windows per forward (default: %(default)s)")


def _calibration_options(parser: argparse.ArgumentParser) -> None:
    from golden_ptq.config.ptq_config import CALIBRATION_INPUTS
    from golden_ptq.deploy import shipped_quant_configs
    parser.add_argument("--quant-config", default="a8w8_dynamic",
                        help=f"PTQConfig yaml, or the name of a shipped config: {', '.join(shipped_quant_configs())} "
                             f"(default: %(default)s)")
    _network_option(parser)
    parser.add_argument("--calib-samples", type=positive_int, default=16,
                        help="calibration windows of --seq-length tokens (default: %(default)s)")
    parser.add_argument("--calibration-inputs", choices=CALIBRATION_INPUTS, default=None,
                        help="what each decoder layer is calibrated on: the outputs of the layers before it as "
                             "quantized (two passes per layer), or the float network's (one pass, about half "
                             "the time); default: the config's algo_args['calibration_inputs'], else quantized")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="golden-ptq", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{quantize,eval,generate,analyze,tune,export,import}")

    quant = sub.add_parser("quantize", help="quantize, save, reload in DEPLOY mode, compare with float (main job)")
    _calibration_options(quant)
    quant.add_argument("--output", default=None,
                       help="folder for the quantized model (default: ./golden_ptq_out/<config name>/)")
    quant.add_argument("--stream", action="store_true",
                       help="read, calibrate and write one decoder layer at a time (models larger than memory; "
                            "the FP32 perplexity is then not measured; disable_level is refused)")
    _text_options(quant, "evaluation windows (0 = the whole last fifth)", 16)
    _common(quant)
    quant.set_defaults(job="quantize")

    for name in ("eval", "perplexity"):
        ev = sub.add_parser(name, help="perplexity of the float network or a saved quantized model"
                            + (" (alias of eval)" if name == "perplexity" else ""))
        ev.add_argument("--model", type=existing_folder, default=None,
                        help="a folder written by `golden-ptq quantize` (default: the float network)")
        _network_option(ev)
        ev.add_argument("--split", choices=("evaluation", "validation", "calibration"), default="evaluation",
                        help="which part of the text to score (default: %(default)s)")
        _text_options(ev, "windows to score (0 = the whole split)", 0)
        _common(ev)
        ev.set_defaults(job="eval")

    gen = sub.add_parser("generate", help="greedy continuation of prompts")
    gen.add_argument("prompt", nargs="+")
    gen.add_argument("--model", type=existing_folder, default=None,
                     help="a folder written by `golden-ptq quantize` (default: the float network)")
    _network_option(gen)
    gen.add_argument("--max-new-tokens", type=positive_int, default=24, help="(default: %(default)s)")
    _common(gen)
    gen.set_defaults(job="generate")

    ana = sub.add_parser("analyze", help="per-layer sensitivity report (csv, markdown, PNG) without saving a model")
    _calibration_options(ana)
    ana.add_argument("--output", default=None, help="report folder (default: ./golden_ptq_out/<config>-analysis/)")
    ana.add_argument("--order-by", choices=("output_error", "range_parm"), default="output_error",
                     help="ranking signal (default: %(default)s)")
    ana.add_argument("--text", type=existing_file, default=None, help="text to calibrate on (default: Moby-Dick)")
    ana.add_argument("--seq-length", type=positive_int, default=512, help="(default: %(default)s)")
    _common(ana)
    ana.set_defaults(job="analyze")

    tune = sub.add_parser("tune", help="roll back the fewest Linear layers to float so the perplexity ratio "
                                       "on the validation split (or a precision test's score) meets --target; "
                                       "save that model")
    _calibration_options(tune)
    tune.add_argument("--target", type=positive_float, default=1.01,
                      help="score ratio to reach: quantized / FP32 perplexity, or with --task FP32 / quantized "
                           "accuracy (boolq) or F1 (squad1.1); 1 is the float model (default: %(default)s)")
    tune.add_argument("--task", choices=("perplexity", "boolq", "squad1.1"), default="perplexity",
                      help="what a trial is scored on: perplexity of the validation split, or a precision test "
                           "on --dataset-path (default: %(default)s)")
    tune.add_argument("--dataset-path", type=existing_file, default=None,
                      help="the precision test's file for --task boolq (dev.jsonl) or squad1.1 (dev-v1.1.json)")
    tune.add_argument("--task-samples", type=positive_int, default=200,
                      help="questions scored per trial with --task; a quarter of them screen a candidate "
                           "(default: %(default)s)")
    tune.add_argument("--signal", choices=("output_error", "range_parm"), default="output_error",
                      help="sensitivity ranking the search follows (default: %(default)s)")
    tune.add_argument("--output", default=None, help="folder for the trial log, report and best/ model "
                                                     "(default: ./golden_ptq_out/<config>-tuned/); rerun to resume")
    tune.add_argument("--screen-windows", type=non_negative_int, default=None,
                      help="validation windows a candidate is screened on before its full score; 0: no screen "
                           "(default: a quarter of --eval-windows, at most 2)")
    tune.add_argument("--reject-above", type=positive_float, default=None,
                      help="screen ratio above which a candidate is rejected as garbled (default: 1 + 3 x (target - 1))")
    tune.add_argument("--max-float", type=non_negative_int, default=None,
                      help="at most this many float Linear layers; beyond it the next of --methods is tried "
                           "(default: no cap)")
    tune.add_argument("--methods", type=lambda text: [m for m in text.split(",") if m], default=[],
                      help="outlier methods to cycle through when the config misses the target, e.g. m2,m6,m4 "
                           "(default: none)")
    _text_options(tune, "validation windows scored per trial", 8)
    _common(tune)
    tune.set_defaults(job="tune")
    from golden_ptq.commands.export import add_parser as add_export_parsers
    add_export_parsers(sub)
    return parser


STAGES = {"quantize": 6, "eval": 2, "generate": 2, "analyze": 3, "tune": 4, "export": 2, "import": 2}


def _run(args) -> List[str]:
    from tqdm import tqdm
    with tqdm(total=STAGES[args.job], desc="start", unit="stage", disable=args.quiet, dynamic_ncols=True,
              bar_format="{desc:<22} {n_fmt}/{total_fmt} stages [{elapsed}]", file=sys.stderr) as stages:
        if args.job == "quantize":
            from golden_ptq.commands.quantize import run
            return run(args, stages)
        if args.job == "eval":
            from golden_ptq.commands.evaluate import run_eval
            return run_eval(args, stages)
        if args.job in ("export", "import"):
            from golden_ptq.commands.export import run as run_export
            return run_export(args, stages)
        if args.job == "generate":
            from golden_ptq.commands.evaluate import run_generate
            return run_generate(args, stages)
        from golden_ptq.commands.analyze import run_analyze, run_tune
        return run_analyze(args, stages) if args.job == "analyze" else run_tune(args, stages)


def _with_job_args(argv: List[str]) -> List[str]:
    """Append ``$GOLDEN_PTQ_<JOB>_ARGS`` (e.g. ``GOLDEN_PTQ_QUANTIZE_ARGS="--calib-samples 2"``): settings a
    script or CI gives every call of one job without editing the command lines it runs."""
    import os
    import shlex
    job = next((a for a in argv if a in JOBS), None)
    extra = os.environ.get(f"GOLDEN_PTQ_{job.upper()}_ARGS", "") if job else ""
    return argv + shlex.split(extra)


def main(argv: Optional[List[str]] = None) -> int:
    """Run a job; a user error prints one line (``--debug`` shows the traceback) and returns 2."""
    args = build_parser().parse_args(_with_job_args(sys.argv[1:]) if argv is None else list(argv))
    try:
        lines = _run(args)
    except KeyboardInterrupt:
        print("golden-ptq: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the command line's boundary
        if args.debug:
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        kind = "" if isinstance(err, (ValueError, OSError, KeyError, NotImplementedError)) else f"{type(err).__name__}: "
        print(f"golden-ptq {args.job}: error: {kind}{message} (--debug shows the traceback)", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
