"""BoolQ accuracy of a float or quantized (DEPLOY-mode) network, as msModelSlim's
precision tool reports it.

Bring your own copy of the official BoolQ ``dev.jsonl``::

    # float network from the default config
    python samples/eval_boolq.py --dataset-path boolq/dev.jsonl --n-samples 500

    # quantized network: the PTQConfig yaml it was quantized with, and its checkpoint
    python samples/eval_boolq.py --dataset-path boolq/dev.jsonl \
        --quant-config a8w8.yaml --quant-ckpt a8w8.ckpt

The answer is "yes" when the log-likelihood of " yes" after the prompt
``"{title} -- {passage}\\nQuestion:{question}?\\nAnswer:"`` beats that of " no";
``--with-generation`` also reports greedy-decoded yes/no accuracy. Under msrun,
prefix the command line with ``msrun --worker_num=N --local_worker_num=N --join=True``.
"""
import argparse

from golden_ptq.deploy import add_network_arguments, build_network, write_metrics
from golden_ptq.eval.precision_test import PrecisionTest


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dataset-path", required=True, help="BoolQ dev.jsonl")
    parser.add_argument("--n-samples", type=int, default=0, help="questions to score (0 = all)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-length", type=int, default=512, help="prompt width in tokens")
    parser.add_argument("--with-generation", action="store_true",
                        help="also score greedy-decoded answers")
    add_network_arguments(parser)
    args = parser.parse_args(argv)

    network, tokenizer = build_network(args.network_config, args.quant_config, args.quant_ckpt)
    result = PrecisionTest(network, tokenizer, "boolq", args.batch_size,
                           dataset_path=args.dataset_path, n_samples=args.n_samples or None,
                           seq_length=args.seq_length, with_generation=args.with_generation,
                           log_every=10).test()
    write_metrics(result, args.output)
    return result


if __name__ == "__main__":
    main()
