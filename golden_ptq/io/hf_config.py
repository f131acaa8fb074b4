"""Hugging Face ``config.json`` of Llama / Qwen2 models, read into a :class:`LlamaConfig`."""
from __future__ import annotations

import json
import os

from golden_ptq.config.model_config import LlamaConfig, check_supported

SUPPORTED = ("llama", "qwen2")


def hf_config(path: str) -> LlamaConfig:
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no config.json in {path}; expected a Hugging Face model directory")
    with open(file, encoding="utf-8") as handle:
        cfg = json.load(handle)
    arch = cfg.get("model_type")
    check_supported(arch, SUPPORTED, file)
    if cfg.get("rope_scaling"):
        raise ValueError(f"{file}: rope_scaling {cfg['rope_scaling']!r} is not supported; only plain rotary "
                         f"embedding (rope_scaling null) is")
    eos = cfg.get("eos_token_id")
    return LlamaConfig(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], num_layers=cfg["num_hidden_layers"],
        num_heads=cfg["num_attention_heads"], num_kv_heads=cfg.get("num_key_value_heads"),
        intermediate_size=cfg["intermediate_size"], rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        max_position_embeddings=cfg.get("max_position_embeddings", 4096),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)), qkv_bias=(arch == "qwen2"),
        bos_token_id=cfg.get("bos_token_id"), eos_token_id=eos[0] if isinstance(eos, list) else eos,
        pad_token_id=cfg.get("pad_token_id"))


