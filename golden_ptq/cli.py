"""``golden-ptq``: the command line. ``golden-ptq --help`` lists the jobs."""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import List, Optional

DEFAULT_NETWORK = "configs/smollm2_135m.yaml"


def _helper(path: Optional[str]):
    import os
    from golden_ptq.networks.helper import NetworkHelper
    if path is None:
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = os.path.join(repo, DEFAULT_NETWORK)
        if not os.path.isfile(path):  # installed without the checkout: same settings inline
            return NetworkHelper({"model": {"source": "gguf", "path": "default", "max_position_embeddings": 2048}})
    return NetworkHelper(path)


def _eval_tokens(tokenizer, text_path: Optional[str], max_tokens: Optional[int]):
    import numpy as np
    from golden_ptq.eval.corpus import corpus_split
    eval_text = corpus_split("evaluation", text_path)
    tokens = np.asarray(tokenizer.encode(eval_text), dtype=np.int64)
    return tokens[:max_tokens] if max_tokens else tokens


def cmd_generate(args) -> int:
    helper = _helper(args.network_config)
    network = helper.create_network()
    for prompt, text in zip(args.prompt, helper.generate(network, args.prompt, max_new_tokens=args.max_new_tokens)):
        print(f"{prompt}{text}")
    return 0


def cmd_perplexity(args) -> int:
    from golden_ptq.eval.perplexity import perplexity
    helper = _helper(args.network_config)
    network = helper.create_network()
    tokens = _eval_tokens(helper.create_tokenizer(), args.text, args.max_tokens)
    start = time.time()
    ppl = perplexity(network, tokens, args.seq_length, batch_size=args.batch_size)
    result = {"perplexity": round(ppl, 4), "tokens": int(tokens.size), "seq_length": args.seq_length,
              "seconds": round(time.time() - start, 1)}
    print(json.dumps(result))
    return 0


def cmd_quantize(args) -> int:
    """The main job: calibrate, save, reload in DEPLOY mode, and compare with the float network."""
    import os
    import tempfile

    import numpy as np
    from golden_ptq import PTQ, PTQConfig
    from golden_ptq.deploy import load_quantized, save_quantized
    from golden_ptq.eval.corpus import corpus_split
    from golden_ptq.eval.perplexity import perplexity

    helper = _helper(args.network_config)
    config = PTQConfig.load(args.quant_config or _default_quant_config())
    tokenizer = helper.create_tokenizer()
    seq = args.seq_length
    calib_text, eval_text = corpus_split("calibration", args.text), corpus_split("evaluation", args.text)
    calib_tokens = np.asarray(tokenizer.encode(calib_text[: seq * 8 * args.calib_samples]))
    calib = [calib_tokens[i * seq:(i + 1) * seq] for i in range(min(args.calib_samples, len(calib_tokens) // seq))]
    eval_tokens = np.asarray(tokenizer.encode(eval_text))
    windows = args.eval_windows or None

    network = helper.create_network()
    if network.tp.parallel and not args.output:
        raise SystemExit(f"golden-ptq quantize under msrun ({network.tp.size} ranks): pass --output FOLDER, the "
                         f"folder every rank writes its rank_<i>/ checkpoint into")
    fp_ppl = perplexity(network, eval_tokens, seq, batch_size=args.batch_size, max_windows=windows)
    float_bytes = sum(p.asnumpy().size for _, p in network.parameters_and_names()) * 2
    tp_size = network.tp.size
    ptq = PTQ(config)
    ptq.apply(network, helper, calib)
    ptq.convert(network)
    output = args.output or tempfile.mkdtemp(prefix="golden_ptq_")
    path = save_quantized(network, ptq, output)
    print(ptq.summary(), flush=True)
    del network
    deployed, _ = load_quantized(helper, output)
    q_ppl = perplexity(deployed, eval_tokens, seq, batch_size=args.batch_size, max_windows=windows)
    scored = (windows or len(eval_tokens) // seq) * seq
    result = {"quant_config": os.path.basename(args.quant_config or _default_quant_config()), "tp_size": tp_size,
              "calibration_tokens": ptq.calibration_tokens, "calibration_s": round(ptq.calibration_seconds, 1),
              "eval_tokens": scored, "fp32_perplexity": round(fp_ppl, 4), "quant_perplexity": round(q_ppl, 4),
              "perplexity_ratio": round(q_ppl / fp_ppl, 4), "checkpoint": path,
              "checkpoint_bytes": os.path.getsize(path), "fp16_parameter_bytes": int(float_bytes),
              "checkpoint_vs_fp16": round(os.path.getsize(path) / float_bytes, 3)}
    print(json.dumps(result, indent=1))
    return 0


def _default_quant_config() -> str:
    import os
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(repo, "configs", "ptq", "a8w8_dynamic.yaml")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="golden-ptq", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="greedy continuation of prompts with the float network")
    gen.add_argument("prompt", nargs="+")
    gen.add_argument("--network-config", default=None, help=f"network yaml (default {DEFAULT_NETWORK})")
    gen.add_argument("--max-new-tokens", type=int, default=24)
    gen.set_defaults(func=cmd_generate)

    ppl = sub.add_parser("perplexity", help="perplexity of the float network on the evaluation text")
    ppl.add_argument("--network-config", default=None)
    ppl.add_argument("--text", default=None, help="text file (default: the Moby-Dick corpus; last fifth is scored)")
    ppl.add_argument("--seq-length", type=int, default=512)
    ppl.add_argument("--batch-size", type=int, default=1)
    ppl.add_argument("--max-tokens", type=int, default=None, help="score only the first N evaluation tokens")
    ppl.set_defaults(func=cmd_perplexity)

    quant = sub.add_parser("quantize", help="quantize the model, save it, reload it in DEPLOY mode and compare "
                                            "perplexity and size with the float model (the main job)")
    quant.add_argument("--quant-config", default=None, help="PTQConfig yaml (default configs/ptq/a8w8_dynamic.yaml)")
    quant.add_argument("--network-config", default=None)
    quant.add_argument("--output", default=None, help="folder for the quantized model (default: a temp folder)")
    quant.add_argument("--text", default=None, help="text corpus (default Moby-Dick: first half calibrates, "
                                                     "last fifth evaluates)")
    quant.add_argument("--seq-length", type=int, default=512)
    quant.add_argument("--calib-samples", type=int, default=16, help="calibration windows of seq-length tokens")
    quant.add_argument("--eval-windows", type=int, default=16, help="evaluation windows (0 = the whole last fifth)")
    quant.add_argument("--batch-size", type=int, default=4)
    quant.set_defaults(func=cmd_quantize)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
