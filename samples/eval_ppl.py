"""Perplexity of a float or quantized (DEPLOY-mode) network on a text file.

Any UTF-8 text file, e.g. the last fifth of a book::

    python samples/eval_ppl.py --dataset-path book.txt --start 0.8 --end 1.0

    # quantized network: a folder written by `golden-ptq quantize` / save_quantized
    python samples/eval_ppl.py --dataset-path book.txt --start 0.8 --quant-ckpt runs/a8w8c8

(``golden-ptq eval`` scores the packaged Moby-Dick text without a file.)

The file is tokenized whole, ``[start, end)`` selects a fraction of its tokens
and BOS is put in front. Windows of ``--seq-length`` tokens do not overlap
unless ``--stride`` is given (see ``golden_ptq.eval.perplexity``).
``--n-samples`` caps the number of windows. Under msrun, prefix the command line
with ``msrun --worker_num=N --local_worker_num=N --join=True``: the network is then tensor
parallel over the N workers, ``--quant-ckpt`` may be a full folder or one of per-rank folders
written at size N, and rank 0 writes ``--output``.
"""
import argparse

from golden_ptq.deploy import add_network_arguments, build_network, write_metrics
from golden_ptq.eval.precision_test import PrecisionTest


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dataset-path", required=True, help="a UTF-8 text file")
    parser.add_argument("--start", type=float, default=0.0, help="first token, as a fraction")
    parser.add_argument("--end", type=float, default=1.0, help="end token, as a fraction")
    parser.add_argument("--n-samples", type=int, default=0, help="windows to score (0 = all)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seq-length", type=int, default=512, help="window in tokens")
    parser.add_argument("--stride", type=int, default=None, help="window step (default: seq-length)")
    add_network_arguments(parser)
    args = parser.parse_args(argv)

    network, tokenizer = build_network(args.network_config, args.quant_config, args.quant_ckpt)
    result = PrecisionTest(network, tokenizer, "text", args.batch_size,
                           dataset_path=args.dataset_path, n_samples=args.n_samples or None,
                           seq_length=args.seq_length, stride=args.stride,
                           text_fraction=(args.start, args.end)).test()
    write_metrics(result, args.output)
    return result


if __name__ == "__main__":
    main()
