"""``golden-ptq eval`` (alias ``perplexity``) and ``golden-ptq generate``: a float or saved quantized model."""
from __future__ import annotations

from typing import List

from golden_ptq.commands.common import Stopwatch, network_helper, split_windows


def load_model(args):
    """(network, tokenizer, what) for ``--model FOLDER`` (quantized) or ``--network-config`` (float)."""
    if args.model:
        from golden_ptq.deploy import build_network
        network, tokenizer = build_network(args.network_config, quant_ckpt=args.model)
        return network, tokenizer, f"quantized model {args.model}"
    helper = network_helper(args.network_config)
    return helper.create_network(), helper.create_tokenizer(), f"float network {helper.config_path}"


def run_eval(args, stages) -> List[str]:
    from golden_ptq.eval.perplexity import perplexity
    clock = Stopwatch()
    stages.set_description("load model")
    network, tokenizer, what = load_model(args)
    stages.update()
    windows = split_windows(tokenizer, args.split, args.seq_length, args.eval_windows, args.text)
    stages.set_description("evaluate")
    ppl = perplexity(network, windows.reshape(-1), args.seq_length, batch_size=args.batch_size,
                     progress=not args.quiet, desc="eval")
    stages.update()
    return [f"{what}", f"perplexity {ppl:.4f} on {windows.size} tokens ({len(windows)} x {args.seq_length}, "
            f"{args.split} split of {args.text or 'the packaged Moby-Dick text'})", f"time: {clock.seconds():.0f} s"]


def run_generate(args, stages) -> List[str]:
    import numpy as np
    stages.set_description("load model")
    network, tokenizer, _ = load_model(args)
    stages.update()
    stages.set_description("generate")
    lines = []
    for prompt in args.prompt:
        ids = tokenizer.encode(prompt)
        if tokenizer.add_bos_token:
            ids = [tokenizer.bos_token_id] + ids
        out = network.generate(np.asarray([ids], dtype=np.int64), max_new_tokens=args.max_new_tokens,
                               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        lines.append(prompt + tokenizer.decode(list(out[0][len(ids):])))
    stages.update()
    return lines
