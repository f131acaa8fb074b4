"""How much a last-bit change moves a statically quantized SmolLM2: the yardstick for TP=2 vs TP=1.

Tensor parallelism adds partial sums in another order, so float activations differ from TP=1 in
the last bits (~1e-7 relative). This script makes a change of that size on one process: it scales
layer 0's ``attention_norm`` weight by ``1 + --eps``, calibrates ``--quant-config`` on both the
original and the perturbed network, and prints how far their float and quantized logits (first
evaluation window) and perplexities (``--windows`` windows) lie apart, next to the quantization
error itself. Static int8 ranges and calibration that feeds quantized outputs forward turn such
differences into flipped roundings that add up over 30 layers.

    python benchmarks/perturbation_sensitivity.py --quant-config configs/ptq/a8w8_smooth_c8.yaml
"""
import argparse
import json

import mindspore as ms
import numpy as np

from golden_ptq import PTQ, PTQConfig
from golden_ptq.eval.corpus import corpus_split, corpus_windows
from golden_ptq.eval.perplexity import perplexity
from golden_ptq.networks.default_model import default_gguf_path
from golden_ptq.networks.loaders import load_gguf


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quant-config", default="configs/ptq/a8w8_smooth_c8.yaml")
    parser.add_argument("--eps", type=float, default=1e-7, help="relative change of one norm weight")
    parser.add_argument("--calib-samples", type=int, default=4)
    parser.add_argument("--seq-length", type=int, default=256)
    parser.add_argument("--windows", type=int, default=4, help="evaluation windows scored")
    args = parser.parse_args(argv)
    eval_text = corpus_split("evaluation")
    seq, runs = args.seq_length, {}
    for eps in (0.0, args.eps):
        network, tokenizer = load_gguf(default_gguf_path(), max_position_embeddings=2048)
        weight = network.model.layers[0].attention_norm.weight
        weight.set_data(ms.Tensor((weight.asnumpy().astype(np.float64) * (1.0 + eps)).astype(np.float32)))
        calib = list(corpus_windows(tokenizer, "calibration", seq, args.calib_samples))
        eval_tokens = np.asarray(tokenizer.encode(eval_text[: seq * 8 * args.windows]))
        float_logits = network(eval_tokens[None, :seq]).asnumpy()
        ptq = PTQ(PTQConfig.load(args.quant_config))
        ptq.apply(network, None, calib)
        ptq.convert(network)
        runs[eps] = {"float": float_logits, "quant": network(eval_tokens[None, :seq]).asnumpy(),
                     "ppl": perplexity(network, eval_tokens, seq, batch_size=1, max_windows=args.windows)}
    base, moved = runs[0.0], runs[args.eps]
    print(json.dumps({
        "quant_config": args.quant_config, "eps": args.eps,
        "float_logits_max_diff": float(np.abs(base["float"] - moved["float"]).max()),
        "quant_logits_max_diff": float(np.abs(base["quant"] - moved["quant"]).max()),
        "quantization_error_max": float(np.abs(base["quant"] - base["float"]).max()),
        "quant_perplexity": round(base["ppl"], 4), "perturbed_quant_perplexity": round(moved["ppl"], 4)}, indent=1))


if __name__ == "__main__":
    main()
