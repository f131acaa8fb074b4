"""A MindFormers model (run yaml + checkpoint) as golden_ptq's own network, and the way back."""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

import yaml

from golden_ptq.mindformers.checkpoint_io import load_mf_checkpoint, save_mf_checkpoint
from golden_ptq.mindformers.run_config import MFRunConfig, read_run_config, run_yaml_dict
from golden_ptq.networks.llama import LlamaForCausalLM


def load_mindformers(run_yaml: str, checkpoint: Optional[str] = None) -> LlamaForCausalLM:
    """golden_ptq's float network described by a MindFormers run yaml, with the weights of
    ``checkpoint`` (default: the yaml's ``load_checkpoint``), in inference mode."""
    run = read_run_config(run_yaml)
    path = checkpoint or run.resolve(run.load_checkpoint)
    if not path:
        raise ValueError(f"{run_yaml}: load_checkpoint is empty and no checkpoint was given")
    network = LlamaForCausalLM(run.llama)
    load_mf_checkpoint(path, network, qkv_concat=run.qkv_concat)
    network.set_train(False)
    return network


def export_mindformers(network: LlamaForCausalLM, folder: str, qkv_concat: bool = False,
                       param_dtype: str = "float32", fmt: str = "ckpt", seq_length: Optional[int] = None,
                       tokenizer: Optional[Dict[str, Any]] = None) -> MFRunConfig:
    """Write ``folder/run_llama.yaml`` and ``folder/model.<fmt>`` so MindFormers (or
    :func:`load_mindformers`) builds this network; returns the run config as read back."""
    from golden_ptq.io.atomic import atomic_write_text
    if fmt not in ("ckpt", "safetensors"):
        raise ValueError(f"export_mindformers: fmt {fmt!r} is not one of ['ckpt', 'safetensors']")
    os.makedirs(folder, exist_ok=True)
    checkpoint = f"model.{fmt}"
    save_mf_checkpoint(network, os.path.join(folder, checkpoint), qkv_concat=qkv_concat, param_dtype=param_dtype)
    data = run_yaml_dict(network.config, seq_length=seq_length, qkv_concat=qkv_concat, param_dtype=param_dtype,
                         load_checkpoint=checkpoint, tokenizer=tokenizer)
    path = os.path.join(folder, "run_llama.yaml")
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
    return read_run_config(path)
