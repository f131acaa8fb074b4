"""Quantize a MindFormers Llama in place, as Golden Stick's guide does, on CPU (needs the optional mindformers).

    # 0. no MindFormers model at hand: write the embedded SmolLM2 as one (run yaml + checkpoint)
    python samples/mindformers_llama.py export --output runs/mf_smollm2

    # 1. calibrate MindFormers' own LlamaForCausalLM and save the quantized checkpoint (MindFormers names)
    python samples/mindformers_llama.py quantize --config runs/mf_smollm2/run_llama.yaml \
        --quant-config configs/ptq/a8w8_smooth_c8.yaml --output runs/mf_a8w8c8

    # 2. in a new process: build the network again, PTQ in DEPLOY mode, load strictly, generate
    python samples/mindformers_llama.py deploy --config runs/mf_smollm2/run_llama.yaml \
        --quant-ckpt runs/mf_a8w8c8 --prompt "The capital of France is"

``quantize`` takes the float weights from the run yaml's ``load_checkpoint`` (or ``--load-checkpoint``).
Tensor parallelism (``msrun``) is refused: MindFormers' legacy Llama splits its layers through
semi-auto-parallel shard strategies that only a compiled graph applies, while golden_ptq runs it
eagerly on CPU. Tried with 2 CPU workers, ``semi_auto_parallel`` and ``model_parallel: 2``: each
worker built ``wq`` whole and ran the whole model. For TP=2, load the MindFormers model into
golden_ptq's own network (``golden_ptq.mindformers.load_mindformers``), which splits under msrun.
"""
import argparse
import os
import sys


def _calibration(helper, n_samples: int, seq: int):
    from golden_ptq.eval.corpus import corpus_windows
    return list(corpus_windows(helper.create_tokenizer(), "calibration", seq, n_samples))


def export(args) -> str:
    from golden_ptq.mindformers import export_mindformers
    from golden_ptq.networks.default_model import default_gguf_path
    from golden_ptq.networks.loaders import load_gguf
    network, _ = load_gguf(args.gguf or default_gguf_path(), max_position_embeddings=args.seq_length)
    tokenizer = {"type": "golden_ptq_default"} if not args.gguf else {}
    export_mindformers(network, args.output, qkv_concat=args.qkv_concat, param_dtype=args.param_dtype,
                       fmt=args.format, seq_length=args.seq_length, tokenizer=tokenizer)
    path = os.path.join(args.output, "run_llama.yaml")
    print(f"MindFormers run yaml: {path}")
    return path


def quantize(args) -> str:
    from golden_ptq import PTQ, PTQConfig, PTQMode
    from golden_ptq.deploy import save_quantized
    from golden_ptq.mindformers.helper import MFLlamaHelper
    from golden_ptq.mindformers.quant_cells import register_mindformers
    config = PTQConfig.load(args.quant_config)
    if config.mode is not PTQMode.QUANTIZE:
        raise SystemExit(f"{args.quant_config}: mode must be QUANTIZE to calibrate")
    helper = MFLlamaHelper(args.config, checkpoint=args.load_checkpoint)
    network = helper.create_network()
    ptq = PTQ(config)
    register_mindformers(ptq.registry)
    seq = args.calib_seq_length or min(helper.get_spec("seq_length"), 256)
    ptq.apply(network, helper, _calibration(helper, args.n_samples, seq))
    ptq.convert(network)
    path = save_quantized(network, ptq, args.output, args.format)
    print(ptq.summary())
    print(f"quantized checkpoint saved at {path}")
    return path


def deploy(args) -> str:
    from golden_ptq.mindformers.helper import MFLlamaHelper
    helper = MFLlamaHelper(args.config)
    network, _ = helper.load_quantized(args.quant_ckpt)
    text = helper.generate(network, args.prompt, max_new_tokens=args.max_new_tokens)[0]
    print(f"{args.prompt}{text}")
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export", help="write a GGUF model (default: SmolLM2) as a MindFormers model")
    p.add_argument("--output", required=True)
    p.add_argument("--gguf", help="a GGUF file (default: the embedded SmolLM2)")
    p.add_argument("--seq-length", type=int, default=2048)
    p.add_argument("--param-dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--qkv-concat", action="store_true")
    p.add_argument("--format", default="safetensors", choices=["ckpt", "safetensors"])
    p = sub.add_parser("quantize", help="calibrate MindFormers' network and save the quantized checkpoint")
    p.add_argument("--config", required=True, help="MindFormers run yaml")
    p.add_argument("--load-checkpoint", help="float checkpoint (default: the yaml's load_checkpoint)")
    p.add_argument("--quant-config", required=True, help="PTQConfig yaml (see configs/ptq/)")
    p.add_argument("--output", required=True)
    p.add_argument("--n-samples", type=int, default=8)
    p.add_argument("--calib-seq-length", type=int, default=None)
    p.add_argument("--format", default="ckpt", choices=["ckpt", "safetensors"])
    p = sub.add_parser("deploy", help="load the quantized checkpoint in DEPLOY mode and generate")
    p.add_argument("--config", required=True, help="MindFormers run yaml")
    p.add_argument("--quant-ckpt", required=True, help="folder written by quantize")
    p.add_argument("--prompt", default="The capital of France is")
    p.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args(argv)
    if int(os.environ.get("MS_WORKER_NUM", "1")) > 1:
        raise SystemExit("samples/mindformers_llama.py runs in one process: MindFormers' parallel layers are not "
                         "split on CPU (see the module docstring)")
    return {"export": export, "quantize": quantize, "deploy": deploy}[args.command](args)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
