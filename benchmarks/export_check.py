"""Acceptance figures of `golden-ptq export` on SmolLM2-135M: the exported model run by the consumer
library (transformers with compressed-tensors; transformers' GGUF loader) against golden_ptq's own
DEPLOY model, on the same held-out windows: perplexity of each, their ratio, top-1 agreement; and
the msModelSlim W8A8 layout's MindIE flow (numpy) against our layers on real inputs.

Needs the export-check extra (.ci/install_export_check.sh). Calibration: the first half of the
packaged Moby-Dick; evaluation: windows of its last fifth.

    python benchmarks/export_check.py                       # all schemes
    python benchmarks/export_check.py --schemes a16w8_g32 --eval-windows 4
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import tempfile
import time

import numpy as np

from golden_ptq import PTQ, PTQConfig
from golden_ptq.deploy import default_network_config, load_quantized, packaged_quant_config, save_quantized
from golden_ptq.eval.corpus import corpus_windows
from golden_ptq.eval.perplexity import log_softmax_nll
from golden_ptq.export import SavedModel, export_model
from golden_ptq.networks.helper import NetworkHelper

G32 = dict(weight_quant_granularity="PER_GROUP", group_size=32)
SCHEMES = {
    "a8w8_dynamic": (dict(act_quant_dtype="int8", act_quant_granularity="PER_TOKEN", opname_blacklist=["lm_head"]),
                     ["compressed-tensors", "compressed-tensors@absmax/127", "self@1e-6", "self@1e-4"]),
    "a8w8_static": (dict(act_quant_dtype="int8", outliers_suppression="SMOOTH", opname_blacklist=["w2", "lm_head"]),
                    ["compressed-tensors", "msmodelslim", "self@1e-6", "self@1e-4"]),
    # shipped configs with the rotation kept offline (the online Hadamard before w2 has no export form)
    "a8w8_dynamic_rotated": (dict(base="a8w8_dynamic", algo_args={"rotation_online": False}),
                             ["compressed-tensors", "self@1e-6"]),
    "a8w8_static_rotated": (dict(base="a8w8_static", algo_args={"rotation_online": False,
                                                                "rotation_online_smooth": False}),
                            ["compressed-tensors", "msmodelslim", "self@1e-6"]),
    # float16 static scales (the msModelSlim layout's input_scale dtype) for MindIE
    "a8w8_static_rotated_fp16": (dict(base="a8w8_static", algo_args={"rotation_online": False,
                                                                     "rotation_online_smooth": False,
                                                                     "static_scale_dtype": "float16"}),
                                 ["msmodelslim"]),
    "a16w8": (dict(), ["compressed-tensors"]),
    "a16w8_g32": (dict(**G32), ["compressed-tensors", "gguf"]),
}


def make_config(kwargs: dict) -> PTQConfig:
    """``PTQConfig(**kwargs)``, or with ``base``: that shipped config with the other fields replaced
    (``algo_args`` updated, not replaced)."""
    kwargs = dict(kwargs)
    base = kwargs.pop("base", None)
    if base is None:
        return PTQConfig(**kwargs)
    config = PTQConfig.load(packaged_quant_config(base))
    kwargs["algo_args"] = {**config.algo_args, **kwargs.get("algo_args", {})}
    return dataclasses.replace(config, **kwargs)


def nll_and_top1(logits: np.ndarray, windows: np.ndarray):
    """(per-token NLL, argmax) of every scored position (each window predicts its tokens 2..T)."""
    nll = [log_softmax_nll(logits[row, :-1], windows[row, 1:]) for row in range(len(windows))]
    return np.concatenate(nll), logits[:, :-1].argmax(-1).reshape(-1)


def score(forward, windows: np.ndarray, batch: int = 2):
    """(per-token NLL, argmax) of ``forward(batch_windows) -> logits``, a batch at a time (logits of a
    49152-token vocabulary are large)."""
    parts = [nll_and_top1(forward(windows[i:i + batch]), windows[i:i + batch]) for i in range(0, len(windows), batch)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def run_ours(network, windows: np.ndarray):
    return score(lambda w: network(w).asnumpy(), windows)


def run_hf(model, windows: np.ndarray):
    import torch

    def forward(w):
        with torch.no_grad():
            return model(torch.tensor(w)).logits.float().numpy()
    return score(forward, windows)


@contextlib.contextmanager
def per_token_rule_127():
    """compressed-tensors' reference path quantizes dynamic per-token int8 with scale absmax/127.5 in
    [-128, 127]; vLLM's int8 kernel and golden_ptq use absmax/127. This runs transformers with the
    latter (range [-127, 127]) to show what the exported tensors give under that rule."""
    from compressed_tensors.quantization.lifecycle import forward
    from compressed_tensors.quantization.utils import helpers
    original = helpers.calculate_range

    def rule(args, device):
        low, high = original(args, device)
        if args.dynamic is True and args.symmetric and args.num_bits == 8 and str(getattr(args.strategy, "value", args.strategy)) == "token":
            return low + 1, high
        return low, high

    helpers.calculate_range, forward.calculate_range = rule, rule
    try:
        yield
    finally:
        helpers.calculate_range, forward.calculate_range = original, original


def load_hf(fmt: str, folder: str):
    import torch
    import transformers
    if fmt == "gguf":
        return transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file="model.gguf", dtype=torch.float32)
    return transformers.AutoModelForCausalLM.from_pretrained(folder)


def mindie_flow_errors(saved_folder: str, exported: str, network, windows: np.ndarray):
    """Relative L2 error of the MindIE W8A8 flow on the exported tensors vs our layer, per static layer."""
    from mindspore import Tensor
    from safetensors.numpy import load_file
    from golden_ptq.export.msmodelslim import int64_bits_as_float32
    from golden_ptq.io.tensor_names import hf_module_name
    tensors = load_file(os.path.join(exported, "quant_model_weight_w8a8.safetensors"))
    saved = SavedModel(saved_folder, verify=False)
    errors = {}
    for layer in (0, saved.config.num_layers // 2, saved.config.num_layers - 1):
        for local in ("attention.wq", "attention.wo", "feed_forward.w1"):
            name = f"model.layers.{layer}.{local}"
            cell = network.model.layers[layer]
            for part in local.split("."):
                cell = getattr(cell, part)
            seen = []
            cell.recorder = seen.append
            network(windows[:1])
            cell.recorder = None
            x = seen[0]
            ours = cell(Tensor(x)).asnumpy()
            m = hf_module_name(name, saved.config.num_layers)
            scale, offset = np.float32(tensors[m + ".input_scale"][0]), np.float32(tensors[m + ".input_offset"][0])
            xq = np.clip(np.round(x / scale) + offset, -128, 127)
            y = (xq.astype(np.int64) @ tensors[m + ".weight"].astype(np.int64).T + tensors[m + ".quant_bias"])
            y = y * int64_bits_as_float32(tensors[m + ".deq_scale"])
            errors[name] = float(np.linalg.norm(y - ours) / np.linalg.norm(ours))
    return errors


def perturbed_copy(folder: str, out: str, relative: float) -> str:
    """A copy of a saved folder whose layer-0 attention_norm weight is scaled by (1 + relative * noise):
    how far golden_ptq's own output moves under a tiny float change (static W8A8 is discontinuous)."""
    import shutil
    from safetensors.numpy import load_file, save_file
    shutil.copytree(folder, out)
    tensors = load_file(os.path.join(out, "model.safetensors"))
    name = "model.layers.0.attention_norm.weight"
    noise = np.random.RandomState(0).randn(*tensors[name].shape)
    tensors[name] = (tensors[name] * (1 + relative * noise)).astype(np.float32)
    save_file(tensors, os.path.join(out, "model.safetensors"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schemes", nargs="+", choices=sorted(SCHEMES), default=list(SCHEMES))
    parser.add_argument("--calib-samples", type=int, default=8)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--seq-length", type=int, default=512)
    args = parser.parse_args()
    import torch
    print(f"# export_check  date {time.strftime('%Y-%m-%d')}  cpu {platform.processor() or platform.machine()} "
          f"({os.cpu_count()} cores)  torch {torch.__version__}")
    helper = NetworkHelper(default_network_config())
    tokenizer = helper.create_tokenizer()
    calib = list(corpus_windows(tokenizer, "calibration", args.seq_length, args.calib_samples, None))
    windows = np.asarray(corpus_windows(tokenizer, "evaluation", args.seq_length, args.eval_windows, None))
    print(f"calibration {len(calib)} x {args.seq_length} tokens; evaluation {windows.shape[0]} x {args.seq_length} "
          f"tokens ({windows.shape[0] * (args.seq_length - 1)} scored positions)")
    print("| scheme | format | golden_ptq ppl | exported ppl | ratio - 1 | top-1 agreement |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for scheme in args.schemes:
            kwargs, formats = SCHEMES[scheme]
            network = helper.create_network()
            ptq = PTQ(make_config(kwargs))
            ptq.apply(network, helper, calib)
            ptq.convert(network)
            folder = os.path.join(tmp, scheme)
            save_quantized(network, ptq, folder, tokenizer=tokenizer)
            del network
            deployed, _ = load_quantized(folder)
            our_nll, our_top = run_ours(deployed, windows)
            for fmt in formats:
                if fmt.startswith("self@"):
                    relative = float(fmt.partition("@")[2])
                    copy = perturbed_copy(folder, os.path.join(tmp, f"{scheme}-{fmt}"), relative)
                    nll, top = run_ours(load_quantized(copy, verify=False)[0], windows)
                    print(f"| {scheme} | golden_ptq itself, layer-0 norm weight x (1 + {relative:g} noise) | "
                          f"{np.exp(our_nll.mean()):.4f} | {np.exp(nll.mean()):.4f} | "
                          f"{np.exp(nll.mean() - our_nll.mean()) - 1:+.4%} | {np.mean(top == our_top):.4%} |", flush=True)
                    continue
                fmt, _, rule = fmt.partition("@")
                out = os.path.join(tmp, f"{scheme}-{fmt}")
                if not os.path.isdir(out):
                    export_model(folder, fmt, out)
                if fmt == "msmodelslim":
                    errors = mindie_flow_errors(folder, out, deployed, windows)
                    print(f"| {scheme} | msmodelslim (MindIE W8A8 flow, numpy, one layer input) | relative L2 error "
                          f"per layer: " + ", ".join(f"{k.replace('model.layers.', 'L')} {v:.1e}" for k, v in errors.items())
                          + " | | | |")
                    continue
                model = load_hf(fmt, out)
                with per_token_rule_127() if rule else contextlib.nullcontext():
                    nll, top = run_hf(model, windows)
                del model
                ppl_ours, ppl_theirs = float(np.exp(our_nll.mean())), float(np.exp(nll.mean()))
                label = f"{fmt} (per-token scale {rule} as vLLM's kernel)" if rule else fmt
                print(f"| {scheme} | {label} | {ppl_ours:.4f} | {ppl_theirs:.4f} | {ppl_theirs / ppl_ours - 1:+.4%} | "
                      f"{np.mean(top == our_top):.4%} |", flush=True)
            del deployed


if __name__ == "__main__":
    main()
