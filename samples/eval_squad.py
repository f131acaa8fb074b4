"""SQuAD v1.1 exact match / F1 of a float or quantized (DEPLOY-mode) network.

Bring your own copy of the official dev set (``dev-v1.1.json``)::

    # float network from the default config
    python samples/eval_squad.py --dataset-path squad/dev-v1.1.json --n-samples 200

    # quantized network: the PTQConfig yaml it was quantized with, and its checkpoint
    python samples/eval_squad.py --dataset-path squad/dev-v1.1.json --n-samples 200 \
        --quant-config a8w8.yaml --quant-ckpt a8w8.ckpt

Under msrun (tensor parallelism), prefix the same command line with
``msrun --worker_num=N --local_worker_num=N --master_port=12345 --join=True``.
Prompts are greedy-decoded; the answer is the text up to the first line break.
"""
import argparse

from golden_ptq.deploy import add_network_arguments, build_network, write_metrics
from golden_ptq.eval.precision_test import PrecisionTest


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dataset-path", required=True, help="SQuAD v1.1 dev-v1.1.json")
    parser.add_argument("--n-samples", type=int, default=200, help="questions to score (0 = all)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-length", type=int, default=512, help="prompt width in tokens")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    add_network_arguments(parser)
    args = parser.parse_args(argv)

    network, tokenizer = build_network(args.network_config, args.quant_config, args.quant_ckpt)
    result = PrecisionTest(network, tokenizer, "squad1.1", args.batch_size,
                           dataset_path=args.dataset_path, n_samples=args.n_samples or None,
                           seq_length=args.seq_length, max_new_tokens=args.max_new_tokens,
                           log_every=10).test()
    write_metrics(result, args.output)
    return result


if __name__ == "__main__":
    main()
