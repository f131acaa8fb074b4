"""Our (MindFormers-style) parameter names and the names Hugging Face and GGUF files give the same tensors.

One place for the mapping: the loaders read with it, the exporters write with it. Patterns carry
``{i}`` for the layer index; :func:`name_map` expands them for a network of ``num_layers`` layers.
"""
from __future__ import annotations

from typing import Dict

HF_PER_LAYER = {
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
HF_GLOBAL = {
    "model.tok_embeddings.embedding_weight": "model.embed_tokens.weight",
    "model.norm_out.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}

GGUF_PER_LAYER = {
    "attention_norm.weight": "blk.{i}.attn_norm.weight",
    "ffn_norm.weight": "blk.{i}.ffn_norm.weight",
    "attention.wq.weight": "blk.{i}.attn_q.weight",
    "attention.wk.weight": "blk.{i}.attn_k.weight",
    "attention.wv.weight": "blk.{i}.attn_v.weight",
    "attention.wo.weight": "blk.{i}.attn_output.weight",
    "attention.wq.bias": "blk.{i}.attn_q.bias",
    "attention.wk.bias": "blk.{i}.attn_k.bias",
    "attention.wv.bias": "blk.{i}.attn_v.bias",
    "feed_forward.w1.weight": "blk.{i}.ffn_gate.weight",
    "feed_forward.w2.weight": "blk.{i}.ffn_down.weight",
    "feed_forward.w3.weight": "blk.{i}.ffn_up.weight",
}
GGUF_GLOBAL = {
    "model.tok_embeddings.embedding_weight": "token_embd.weight",
    "model.norm_out.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def name_map(num_layers: int, per_layer: Dict[str, str], globals_: Dict[str, str]) -> Dict[str, str]:
    """Expand ``{i}`` patterns into an our-name -> source-name dictionary."""
    mapping = dict(globals_)
    for i in range(num_layers):
        for ours, theirs in per_layer.items():
            mapping[f"model.layers.{i}.{ours}"] = theirs.format(i=i)
    return mapping


def hf_module_name(ours: str, num_layers: int) -> str:
    """Hugging Face module name of one of our Linear layers (``model.layers.0.attention.wq`` ->
    ``model.layers.0.self_attn.q_proj``)."""
    mapping = name_map(num_layers, HF_PER_LAYER, HF_GLOBAL)
    key = f"{ours}.weight"
    if key not in mapping:
        raise KeyError(f"no Hugging Face name for layer '{ours}'")
    return mapping[key][: -len(".weight")]
