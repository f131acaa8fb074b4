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
    from golden_ptq.eval.corpus import load_splits
    _, eval_text = load_splits(text_path)
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
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
