"""A MindFormers run yaml (``model.model_config`` of a ``LlamaForCausalLM``) read without mindformers.

The fields that shape the network map onto :class:`~golden_ptq.config.model_config.LlamaConfig`; the
FFN width follows MindFormers' rule (:func:`ffn_width`). Fields that only steer MindFormers'
kernels, precision or serving are accepted and kept in :attr:`MFRunConfig.model_config` (golden_ptq
computes in float32 on CPU); fields that would change the function the network computes and that
golden_ptq does not implement raise, naming the field.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import yaml

from golden_ptq.config.model_config import LlamaConfig

#: MindFormers dtype names for parameters and compute (``param_init_type``, ``compute_dtype``, ...).
DTYPES = ("float16", "bfloat16", "float32")

#: Fields accepted without effect on golden_ptq's network: kernels, precision, serving, training.
IGNORED_FIELDS = frozenset({
    "type", "batch_size", "compute_dtype", "layernorm_compute_type", "softmax_compute_type", "rotary_dtype",
    "param_init_type", "embedding_init_type", "residual_dtype", "use_past", "use_flash_attention",
    "use_ring_attention", "use_attn_mask_compression", "use_eod_attn_mask_compression", "use_rope_slice",
    "fused_rms_norm", "is_dynamic", "block_size", "num_blocks", "top_k", "top_p", "do_sample",
    "repetition_penalty", "max_decode_length", "checkpoint_name_or_path", "offset", "fine_grain_interleave",
    "pp_interleave_num", "parallel_optimizer", "init_method_std", "ignore_token_id", "input_sliced_sig",
    "rmsnorm_compute_2d", "chunk_prefill", "calculate_per_token_loss", "return_hidden_states", "llm_backend",
    "parallel_config", "pipeline_stage", "use_fused_swiglu", "use_fused_rope", "qkv_concat", "quant_config",
})

#: Fields that golden_ptq supports only at one value (the plain Llama function).
FIXED_FIELDS = {
    "extend_method": ("None", None),            # rotary scaling (linear, NTK, YaRN, llama3) is not implemented
    "scaling_factor": (1.0, 1, None),           # only read with extend_method
    "attn_proj_has_bias": (False, None),        # wo has no bias in golden_ptq's network
    "seq_pipe": (False, None),
}

_ARCHITECTURES = ("LlamaForCausalLM",)


def ffn_width(hidden_size: int, intermediate_size: Optional[int] = None, multiple_of: Optional[int] = 256,
              ffn_dim_multiplier: Optional[float] = None) -> int:
    """MindFormers' SwiGLU width: ``intermediate_size`` when given, else ``4 * hidden`` scaled by
    ``ffn_dim_multiplier`` (+0.01, truncated), two thirds of it (truncated), rounded up to
    ``multiple_of`` (256 when unset)."""
    if intermediate_size is not None:
        return int(intermediate_size)
    multiple_of = multiple_of or 256
    width = 4 * hidden_size
    if ffn_dim_multiplier is not None:
        width = int((ffn_dim_multiplier + 0.01) * width)
    width = int(2 * width / 3)
    return multiple_of * ((width + multiple_of - 1) // multiple_of)


@dataclass
class MFRunConfig:
    """What a run yaml says about the network: golden_ptq's config plus MindFormers' own fields."""

    llama: LlamaConfig
    model_config: Dict[str, Any]          # the yaml's model_config as read (for building MindFormers' network)
    seq_length: int
    qkv_concat: bool = False
    param_dtype: str = "float16"          # MindFormers' param_init_type: the dtype its checkpoints hold
    load_checkpoint: Optional[str] = None
    tokenizer: Dict[str, Any] = field(default_factory=dict)
    path: Optional[str] = None

    def resolve(self, value: Optional[str]) -> Optional[str]:
        """A path from the yaml, taken relative to the yaml's folder when it does not exist as given."""
        if not value or self.path is None or os.path.isabs(value) or os.path.exists(value):
            return value or None
        candidate = os.path.join(os.path.dirname(os.path.abspath(self.path)), value)
        return candidate if os.path.exists(candidate) else value


def _dtype_name(value: Any, where: str) -> str:
    name = str(value).lower().replace("mindspore.", "").replace("mstype.", "")
    name = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}.get(name, name)
    if name not in DTYPES:
        raise ValueError(f"{where}: dtype {value!r} is not one of {list(DTYPES)}")
    return name


def parse_run_config(data: Dict[str, Any], source: str = "run yaml") -> MFRunConfig:
    """``data``: the loaded yaml (a dict with ``model.model_config``); ``source`` names it in errors."""
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("model_config"), dict):
        raise ValueError(f"{source}: no 'model.model_config' section; expected a MindFormers run yaml")
    arch = (model.get("arch") or {}).get("type", "LlamaForCausalLM")
    if arch not in _ARCHITECTURES:
        raise ValueError(f"{source}: model.arch.type {arch!r} is not supported; supported: {list(_ARCHITECTURES)}")
    cfg = dict(model["model_config"])
    where = f"{source}: model.model_config"
    known = IGNORED_FIELDS | set(FIXED_FIELDS) | {
        "seq_length", "hidden_size", "num_layers", "num_heads", "n_kv_heads", "max_position_embedding",
        "intermediate_size", "vocab_size", "multiple_of", "ffn_dim_multiplier", "rms_norm_eps", "bos_token_id",
        "eos_token_id", "pad_token_id", "theta", "qkv_has_bias", "tie_word_embeddings", "moe_config"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"{where}.{unknown[0]} is not a field golden_ptq knows ({len(unknown)} unknown: "
                         f"{unknown}); supported fields: {sorted(known)}")
    for name, allowed in FIXED_FIELDS.items():
        if name in cfg and cfg[name] not in allowed:
            raise ValueError(f"{where}.{name} = {cfg[name]!r} is not supported; allowed: {list(allowed)}")
    moe = cfg.get("moe_config") or {}
    if int(moe.get("expert_num", 1) or 1) > 1:
        raise ValueError(f"{where}.moe_config.expert_num = {moe['expert_num']!r} is not supported; allowed: [1]")
    for name in ("hidden_size", "num_layers", "num_heads", "vocab_size"):
        if name not in cfg:
            raise ValueError(f"{where}.{name} is missing")
    for name in ("compute_dtype", "param_init_type", "layernorm_compute_type", "softmax_compute_type",
                 "rotary_dtype", "embedding_init_type", "residual_dtype"):
        if cfg.get(name) is not None:
            _dtype_name(cfg[name], f"{where}.{name}")
    seq_length = int(cfg.get("seq_length", 2048))
    hidden = int(cfg["hidden_size"])
    llama = LlamaConfig(
        vocab_size=int(cfg["vocab_size"]), hidden_size=hidden, num_layers=int(cfg["num_layers"]),
        num_heads=int(cfg["num_heads"]), num_kv_heads=int(cfg["n_kv_heads"]) if cfg.get("n_kv_heads") else None,
        intermediate_size=ffn_width(hidden, cfg.get("intermediate_size"), cfg.get("multiple_of", 256),
                                    cfg.get("ffn_dim_multiplier")),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)), rope_theta=float(cfg.get("theta", 10000.0)),
        max_position_embeddings=int(cfg.get("max_position_embedding") or seq_length),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)), qkv_bias=bool(cfg.get("qkv_has_bias", False)),
        bos_token_id=cfg.get("bos_token_id", 1), eos_token_id=_first(cfg.get("eos_token_id", 2)),
        pad_token_id=cfg.get("pad_token_id", 0))
    processor = data.get("processor") or {}
    return MFRunConfig(llama=llama, model_config=cfg, seq_length=seq_length, qkv_concat=bool(cfg.get("qkv_concat")),
                       param_dtype=_dtype_name(cfg.get("param_init_type", "float16"), f"{where}.param_init_type"),
                       load_checkpoint=data.get("load_checkpoint") or None,
                       tokenizer=dict(processor.get("tokenizer") or {}), path=None)


def _first(value):
    return value[0] if isinstance(value, (list, tuple)) else value


def read_run_config(path: str) -> MFRunConfig:
    """Read a MindFormers run yaml file (see :func:`parse_run_config`)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MindFormers run yaml {path!r} does not exist")
    with open(path, encoding="utf-8") as handle:
        try:
            data = yaml.safe_load(handle) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid yaml ({err})") from None
    run = parse_run_config(data, path)
    run.path = path
    return run


def run_yaml_dict(llama: LlamaConfig, seq_length: Optional[int] = None, qkv_concat: bool = False,
                  param_dtype: str = "float32", load_checkpoint: Optional[str] = None,
                  tokenizer: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """A MindFormers run yaml (as a dict) describing ``llama``: the inverse of :func:`parse_run_config`."""
    _dtype_name(param_dtype, "run_yaml_dict: param_dtype")
    cfg: Dict[str, Any] = {
        "type": "LlamaConfig", "batch_size": 1, "seq_length": int(seq_length or llama.max_position_embeddings),
        "hidden_size": llama.hidden_size, "num_layers": llama.num_layers, "num_heads": llama.num_heads,
        "n_kv_heads": llama.num_kv_heads, "max_position_embedding": llama.max_position_embeddings,
        "intermediate_size": llama.intermediate_size, "vocab_size": llama.vocab_size,
        "rms_norm_eps": float(llama.rms_norm_eps), "theta": float(llama.rope_theta),
        "bos_token_id": llama.bos_token_id, "eos_token_id": llama.eos_token_id, "pad_token_id": llama.pad_token_id,
        "qkv_has_bias": bool(llama.qkv_bias), "tie_word_embeddings": bool(llama.tie_word_embeddings),
        "qkv_concat": bool(qkv_concat), "compute_dtype": "float32", "layernorm_compute_type": "float32",
        "softmax_compute_type": "float32", "rotary_dtype": "float32", "param_init_type": param_dtype,
        "use_past": False, "use_flash_attention": False, "extend_method": "None",
    }
    data: Dict[str, Any] = {"model": {"model_config": cfg, "arch": {"type": "LlamaForCausalLM"}}}
    if load_checkpoint:
        data["load_checkpoint"] = load_checkpoint
    if tokenizer:
        data["processor"] = {"tokenizer": dict(tokenizer)}
    return data
