"""Hugging Face model directories (``config.json``, ``*.safetensors``, ``tokenizer.json``): Llama and Qwen2."""
from __future__ import annotations

import json
import os
from typing import Optional

from golden_ptq.networks.config import LlamaConfig
from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.networks.loaders.common import check_supported, layer_name_map, load_into_network, tp_transform
from golden_ptq.parallel.context import TPContext
from golden_ptq.networks.loaders.safetensors_io import SafetensorsFiles, find_safetensors

SUPPORTED = ("llama", "qwen2")

_PER_LAYER = {
    "attention_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "attention.wq.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "attention.wk.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "attention.wv.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "attention.wo.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "attention.wq.bias": "model.layers.{i}.self_attn.q_proj.bias",
    "attention.wk.bias": "model.layers.{i}.self_attn.k_proj.bias",
    "attention.wv.bias": "model.layers.{i}.self_attn.v_proj.bias",
    "feed_forward.w1.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "feed_forward.w2.weight": "model.layers.{i}.mlp.down_proj.weight",
    "feed_forward.w3.weight": "model.layers.{i}.mlp.up_proj.weight",
}
_GLOBAL = {
    "model.tok_embeddings.embedding_weight": "model.embed_tokens.weight",
    "model.norm_out.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}


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


def load_hf(path: str, config: Optional[LlamaConfig] = None, tp: Optional[TPContext] = None) -> LlamaForCausalLM:
    """Build the network from a Hugging Face directory and load its float weights (a rank's slice under TP)."""
    config = config or hf_config(path)
    network = LlamaForCausalLM(config, tp=tp)
    tensors = SafetensorsFiles(find_safetensors(path))
    mapping = layer_name_map(config.num_layers, _PER_LAYER, _GLOBAL)
    load_into_network(network, lambda name: tensors.get(mapping.get(name, name)), path, tp_transform(network))
    return network
