"""Calibrate a network and save its quantized checkpoint (the seed guide's quant_ckpt.py).

    # A8W8 SmoothQuant + int8 KV cache on the default model, calibrated on Moby-Dick's first half
    python samples/quant_ckpt.py --quant-config configs/ptq/a8w8_smooth_c8.yaml --output runs/a8w8c8

    # calibrate on your own SQuAD v1.1 train file instead (200 samples, as in the guide)
    python samples/quant_ckpt.py --quant-config configs/ptq/a8w8_smooth_c8.yaml --output runs/a8w8c8 \
        --dataset squad1.1 --dataset-path squad/train-v1.1.json --n-samples 200

The output folder holds ``model.ckpt`` (or ``--format safetensors``), ``quant_desc.json`` and
``ptq_config.yaml``; evaluate it with ``samples/eval_ppl.py --quant-ckpt runs/a8w8c8``.

Tensor parallel (heads and MLP columns split over the workers; each writes ``OUTPUT/rank_<i>/``)::

    msrun --worker_num=2 --local_worker_num=2 --master_port=8118 --log_dir=msrun_log --join=True \
        samples/quant_ckpt.py --quant-config configs/ptq/a8w8_smooth_c8.yaml --output runs/a8w8c8_tp2
    python -m golden_ptq.tools.tp_checkpoint merge runs/a8w8c8_tp2 runs/a8w8c8_merged   # optional
"""
import argparse
import sys


def calibration_data(args, helper, tokenizer):
    from golden_ptq.datasets import get_datasets
    from golden_ptq.eval.corpus import corpus_windows

    seq = helper.get_spec("seq_length") if args.seq_length is None else args.seq_length
    if args.dataset == "text" and args.dataset_path is None:  # the project corpus: its first half
        return list(corpus_windows(tokenizer, "calibration", seq, args.n_samples))
    return get_datasets(args.dataset, args.dataset_path, "train", helper.get_spec("batch_size"), seq,
                        helper.get_spec("max_decode_length"), tokenizer, helper.get_spec("ignore_token_id"), 1,
                        False, n_samples=args.n_samples)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--network-config", default="configs/smollm2_135m.yaml")
    parser.add_argument("--quant-config", required=True, help="PTQConfig yaml (see configs/ptq/)")
    parser.add_argument("--output", required=True, help="folder for model.ckpt, quant_desc.json, ptq_config.yaml")
    parser.add_argument("--dataset", default="text", help="text | squad1.1 | boolq | jsonl")
    parser.add_argument("--dataset-path", default=None, help="default: the Moby-Dick corpus (first half)")
    parser.add_argument("--n-samples", type=int, default=16)
    parser.add_argument("--seq-length", type=int, default=None)
    parser.add_argument("--format", default="ckpt", choices=["ckpt", "safetensors"])
    args = parser.parse_args(argv)

    from golden_ptq import PTQ, PTQConfig, PTQMode
    from golden_ptq.deploy import save_quantized
    from golden_ptq.networks.helper import NetworkHelper
    from golden_ptq.parallel import init_from_launcher

    tp = init_from_launcher()  # under msrun: the communication group, tensor parallel
    config = PTQConfig.load(args.quant_config)
    if config.mode is not PTQMode.QUANTIZE:
        raise SystemExit(f"{args.quant_config}: mode must be QUANTIZE to calibrate")
    helper = NetworkHelper(args.network_config)
    network = helper.create_network()
    tokenizer = helper.create_tokenizer()
    ptq = PTQ(config)
    ptq.apply(network, helper, calibration_data(args, helper, tokenizer))
    ptq.convert(network)
    path = save_quantized(network, ptq, args.output, args.format)
    print(ptq.summary())
    print(f"quantized checkpoint saved at {path} (TP rank {tp.rank} of {tp.size})", flush=True)
    return path


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
