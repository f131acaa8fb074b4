"""Validation of a network yaml (the ``model:`` and ``runtime:`` sections :class:`NetworkHelper` reads).

Known keys only (with a "did you mean"), typed values, and the keys each ``source`` needs:
``random``, ``ckpt`` and ``saved`` must describe the network in ``config:`` (there is no default size: a
missing config once built a 7B network that took the whole machine), and a described network
must fit in this machine's memory.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

from golden_ptq.config.model_config import LlamaConfig
from golden_ptq.config.validation import (ConfigError, check_bool, check_float, check_int, check_known_keys,
                                          check_mapping, check_str, load_yaml_mapping)

#: model.source -> (model keys it accepts besides 'source', keys it needs)
SOURCE_KEYS = {
    "gguf": ({"path", "max_position_embeddings"}, set()),
    "hf": ({"path", "max_position_embeddings"}, {"path"}),
    "ckpt": ({"path", "config", "tokenizer"}, {"path", "config"}),
    "random": ({"config", "seed", "tokenizer"}, {"config"}),
    "saved": ({"config", "tokenizer"}, {"config"}),   # a quantized folder's network.yaml (deploy.py)
}
SOURCES = tuple(SOURCE_KEYS)
SECTIONS = ("model", "runtime")

RUNTIME_DEFAULTS: Dict[str, Any] = {
    "batch_size": 1,
    "seq_length": 512,
    "max_decode_length": 64,
    "ignore_token_id": -100,
    "pad_token_id": None,     # None: the tokenizer's
    "top_k": 0,
    "top_p": 1.0,
    "do_sample": False,
    "seed": 0,
}
_INT_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings")
_MEMORY_SHARE = 0.8   # a described network may take at most this share of the machine's memory (float32)


def read_network_config(config, path: Optional[str] = None) -> Dict[str, Dict[str, Any]]:
    """``{"model": {...}, "runtime": {...}}`` of a yaml file (``config`` a path) or a dict, checked;
    runtime values have their defaults filled in. Errors are :class:`ConfigError` naming the file
    (or "network config"), the key, the bad value and what is allowed."""
    if isinstance(config, str):
        path = config
        data = load_yaml_mapping(config, "a network config")
    else:
        data = check_mapping(config, "network config", optional=False)
    where = f"{path}: network config" if path else "network config"
    check_known_keys(data, SECTIONS, where, "section")
    return {"model": check_model(data.get("model"), where),
            "runtime": check_runtime(data.get("runtime"), where)}


def check_model(model: Any, where: str) -> Dict[str, Any]:
    """The ``model:`` section, checked against its ``source``."""
    model = check_mapping(model, f"{where}: model")
    source = check_str(model.get("source", "gguf"), f"{where}: model.source", SOURCES)
    allowed, needed = SOURCE_KEYS[source]
    for key in model:
        if key != "source" and key not in allowed:
            check_known_keys([key], allowed, f"{where}: model (source {source})")
    for key in sorted(needed):
        if key not in model:
            hint = (" describing the network (vocab_size, hidden_size, num_layers, num_heads, intermediate_size, ...)"
                    if key == "config" else "")
            raise ConfigError(f"{where}: model.source {source!r} needs model.{key}{hint}")
    out = dict(model, source=source)
    if "path" in model:
        out["path"] = check_str(model["path"], f"{where}: model.path")
    if "tokenizer" in model:
        out["tokenizer"] = check_str(model["tokenizer"], f"{where}: model.tokenizer", optional=True)
    if "seed" in model:
        out["seed"] = check_int(model["seed"], f"{where}: model.seed", 0)
    if model.get("max_position_embeddings") is not None:
        out["max_position_embeddings"] = check_int(model["max_position_embeddings"],
                                                   f"{where}: model.max_position_embeddings", 1)
    if "config" in model:
        # a saved (quantized) network is built from placeholders and holds its int8 checkpoint, not
        # float32 weights: the float32 size bound is for the sources that materialise them
        out["config"] = check_llama_config(model["config"], f"{where}: model.config", float_weights=source != "saved")
    return out


def check_llama_config(values: Any, where: str, float_weights: bool = True) -> Dict[str, Any]:
    """A ``LlamaConfig`` mapping: known fields, typed, and (``float_weights``: built in float32) small
    enough for this machine."""
    values = check_mapping(values, where, optional=False)
    known = [name for name in LlamaConfig.__dataclass_fields__]
    check_known_keys(values, known, where, "field")
    for key in _INT_FIELDS:
        if key in values:
            check_int(values[key], f"{where}.{key}", 1)
    if values.get("num_kv_heads") is not None:
        check_int(values["num_kv_heads"], f"{where}.num_kv_heads", 1)
    for key in ("rms_norm_eps", "rope_theta"):
        if key in values:
            check_float(values[key], f"{where}.{key}", 0.0, strict_minimum=True)
    for key in ("tie_word_embeddings", "qkv_bias"):
        if key in values:
            check_bool(values[key], f"{where}.{key}")
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if key in values:
            check_int(values[key], f"{where}.{key}", 0, optional=True)
    if "extra" in values:
        check_mapping(values["extra"], f"{where}.extra")
    try:
        config = LlamaConfig.from_dict(dict(values))
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None
    if float_weights:
        _check_fits_memory(config, where)
    return dict(values)


def check_runtime(runtime: Any, where: str) -> Dict[str, Any]:
    runtime = check_mapping(runtime, f"{where}: runtime")
    check_known_keys(runtime, RUNTIME_DEFAULTS, f"{where}: runtime")
    out = {**RUNTIME_DEFAULTS, **runtime}
    at = f"{where}: runtime."
    check_int(out["batch_size"], at + "batch_size", 1)
    check_int(out["seq_length"], at + "seq_length", 1)
    check_int(out["max_decode_length"], at + "max_decode_length", 0)
    check_int(out["ignore_token_id"], at + "ignore_token_id")
    check_int(out["pad_token_id"], at + "pad_token_id", 0, optional=True)
    check_int(out["top_k"], at + "top_k", 0)
    check_float(out["top_p"], at + "top_p", 0.0, 1.0, strict_minimum=True)
    check_bool(out["do_sample"], at + "do_sample")
    check_int(out["seed"], at + "seed", 0)
    return out


def parameter_count(config: LlamaConfig) -> int:
    """Parameters of the whole (TP size 1) network ``config`` describes."""
    hidden, inter = config.hidden_size, config.intermediate_size
    kv = config.num_kv_heads * config.head_dim
    attention = 2 * hidden * hidden + 2 * hidden * kv + (3 * (hidden + kv) if config.qkv_bias else 0)
    layer = attention + 3 * hidden * inter + 2 * hidden
    head = 0 if config.tie_word_embeddings else config.vocab_size * hidden
    return config.vocab_size * hidden + config.num_layers * layer + hidden + head


def _machine_bytes() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_fits_memory(config: LlamaConfig, where: str) -> None:
    need = 4 * parameter_count(config)
    have = _machine_bytes()
    if have is not None and need > _MEMORY_SHARE * have:
        raise ConfigError(f"{where}: the network it describes has {parameter_count(config):,} parameters "
                          f"({need / 2**30:.1f} GiB in float32), more than {_MEMORY_SHARE:.0%} of this machine's "
                          f"{have / 2**30:.1f} GiB; check hidden_size, num_layers, intermediate_size and vocab_size")
