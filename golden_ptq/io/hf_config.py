"""Hugging Face ``config.json`` of Llama / Qwen2 models, read into a :class:`LlamaConfig`.

Any model feature the network does not implement (biases beyond Qwen2's q/k/v, activations other
than SiLU, rope scaling, sliding-window attention, a head_dim other than hidden/heads) is an error
naming the key: accepting it would give a silently wrong model.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict

from golden_ptq.config.model_config import LlamaConfig, check_supported
from golden_ptq.config.validation import ConfigError, check_bool, check_float, check_int

SUPPORTED = ("llama", "qwen2")
REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def read_config_json(path: str) -> Dict[str, Any]:
    """The mapping in ``path/config.json``; a missing, unreadable or non-mapping file is an error naming it."""
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no config.json in {path}; expected a Hugging Face model directory")
    try:
        with open(file, encoding="utf-8") as handle:
            cfg = json.load(handle)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{file}: not a valid JSON config ({err})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{file}: a config.json must hold a JSON object, got a {type(cfg).__name__}")
    return cfg


def check_features(cfg: Dict[str, Any], file: str) -> None:
    """Raise naming the first key that asks for something the network does not implement."""
    arch = cfg.get("model_type")
    if cfg.get("rope_scaling"):
        raise ConfigError(f"{file}: rope_scaling {cfg['rope_scaling']!r} is not supported; only plain rotary "
                          f"embedding (rope_scaling null) is")
    act = cfg.get("hidden_act", cfg.get("hidden_activation", "silu"))
    if act != "silu":
        raise ConfigError(f"{file}: hidden_act {act!r} is not supported; the network's MLP is SwiGLU (hidden_act "
                          f"'silu')")
    if arch == "llama" and check_bool(cfg.get("attention_bias", False), f"{file}: attention_bias"):
        raise ConfigError(f"{file}: attention_bias true is not supported for llama (the network has no bias on "
                          f"its attention projections); only false is")
    if check_bool(cfg.get("mlp_bias", False), f"{file}: mlp_bias"):
        raise ConfigError(f"{file}: mlp_bias true is not supported (the network's MLP has no biases); only false is")
    if check_bool(cfg.get("use_sliding_window", False), f"{file}: use_sliding_window"):
        raise ConfigError(f"{file}: use_sliding_window true is not supported (the network attends to the whole "
                          f"sequence); only false is")
    if arch == "llama" and cfg.get("sliding_window") is not None:
        raise ConfigError(f"{file}: sliding_window {cfg['sliding_window']!r} is not supported (the network attends "
                          f"to the whole sequence); only null is")
    if cfg.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError(f"{file}: partial_rotary_factor {cfg['partial_rotary_factor']!r} is not supported; only "
                          f"1.0 (rotary embedding on the whole head) is")
    head_dim = cfg.get("head_dim")
    if head_dim is not None:
        expected = cfg["hidden_size"] // cfg["num_attention_heads"]
        if check_int(head_dim, f"{file}: head_dim", 1) != expected:
            raise ConfigError(f"{file}: head_dim {head_dim} differs from hidden_size / num_attention_heads "
                              f"({cfg['hidden_size']} / {cfg['num_attention_heads']} = {expected}); the network "
                              f"supports only head_dim = hidden_size / num_attention_heads")


def hf_config(path: str) -> LlamaConfig:
    cfg = read_config_json(path)
    file = os.path.join(path, "config.json")
    arch = cfg.get("model_type")
    check_supported(arch, SUPPORTED, file)
    for key in REQUIRED:
        if key not in cfg:
            raise ConfigError(f"{file}: required key '{key}' is missing (needed: {list(REQUIRED)})")
        check_int(cfg[key], f"{file}: {key}", 1)
    check_features(cfg, file)
    eos = cfg.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) and eos else eos
    try:
        return LlamaConfig(
            vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], num_layers=cfg["num_hidden_layers"],
            num_heads=cfg["num_attention_heads"],
            num_kv_heads=check_int(cfg.get("num_key_value_heads"), f"{file}: num_key_value_heads", 1, optional=True),
            intermediate_size=cfg["intermediate_size"],
            rms_norm_eps=check_float(cfg.get("rms_norm_eps", 1e-6), f"{file}: rms_norm_eps", 0.0, strict_minimum=True),
            rope_theta=check_float(cfg.get("rope_theta", 10000.0), f"{file}: rope_theta", 0.0, strict_minimum=True),
            max_position_embeddings=check_int(cfg.get("max_position_embeddings", 4096),
                                              f"{file}: max_position_embeddings", 1),
            tie_word_embeddings=check_bool(cfg.get("tie_word_embeddings", False), f"{file}: tie_word_embeddings"),
            qkv_bias=(arch == "qwen2"),
            bos_token_id=check_int(cfg.get("bos_token_id"), f"{file}: bos_token_id", 0, optional=True),
            eos_token_id=check_int(eos, f"{file}: eos_token_id", 0, optional=True),
            pad_token_id=check_int(cfg.get("pad_token_id"), f"{file}: pad_token_id", 0, optional=True))
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(f"{file}: {err}") from None
