"""``golden-ptq export`` (a saved quantized folder -> compressed-tensors, msModelSlim layout or GGUF) and
``golden-ptq import`` (a compressed-tensors checkpoint -> a golden_ptq quantized folder)."""
from __future__ import annotations

from typing import List

from golden_ptq.commands.common import Stopwatch, folder_bytes, human_bytes

STAGES = {"export": 2, "import": 2}


def add_parser(subparsers) -> None:
    """Register ``export`` and ``import`` on the main parser's subparsers."""
    from golden_ptq.commands.arguments import existing_folder
    from golden_ptq.export import FORMATS
    exp = subparsers.add_parser("export", help="write a saved quantized model for another engine: compressed-tensors "
                                               "(transformers, vLLM), msmodelslim (MindIE, vLLM-Ascend) or gguf "
                                               "(llama.cpp)")
    exp.add_argument("folder", type=existing_folder, help="a folder written by `golden-ptq quantize`")
    exp.add_argument("--format", required=True, choices=FORMATS, help="target layout")
    exp.add_argument("--output", required=True, help="folder to write (replaced as a whole)")
    exp.add_argument("--dtype", choices=("float32", "float16"), default=None,
                     help="dtype of the tensors that stay float (default: float32; float16 for msmodelslim)")
    exp.add_argument("--float-kv-cache", action="store_true",
                     help="compressed-tensors: drop C8 KV-cache scales (the KV cache then runs in float)")
    _common(exp)
    exp.set_defaults(job="export")

    imp = subparsers.add_parser("import", help="read a compressed-tensors checkpoint into a golden_ptq quantized "
                                               "folder (then eval / generate / export it)")
    imp.add_argument("folder", type=existing_folder, help="a compressed-tensors model folder (config.json with "
                                                          "quantization_config, *.safetensors)")
    imp.add_argument("--output", required=True, help="golden_ptq quantized folder to write")
    _common(imp)
    imp.set_defaults(job="import")


def _common(parser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")


def run(args, stages) -> List[str]:
    """Summary lines of ``export`` or ``import``."""
    clock = Stopwatch()
    if args.job == "import":
        from golden_ptq.export.import_ct import import_compressed_tensors
        stages.set_description("import")
        stages.update()
        _, ptq, _ = import_compressed_tensors(args.folder, args.output)
        stages.update()
        from golden_ptq.commands.common import scheme_line
        return [f"imported {args.folder}: {scheme_line(ptq.scheme_counts())}",
                f"saved: {human_bytes(folder_bytes(args.output))} in {clock.seconds():.0f} s",
                f"output: {args.output}  (golden-ptq eval --model {args.output})"]
    from golden_ptq.export import export_model
    stages.set_description("read + convert")
    stages.update()
    facts = export_model(args.folder, args.format, args.output, dtype=args.dtype, float_kv_cache=args.float_kv_cache)
    stages.update()
    return [f"exported {args.folder} as {args.format}", *facts,
            f"saved: {human_bytes(folder_bytes(args.output))} in {clock.seconds():.0f} s", f"output: {args.output}"]
