"""Hugging Face model directories (``config.json``, ``*.safetensors``, ``tokenizer.json``): Llama and Qwen2."""
from __future__ import annotations

from typing import Optional

import numpy as np

from golden_ptq.config.model_config import LlamaConfig
from golden_ptq.io.hf_config import hf_config
from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.networks.loaders.common import layer_name_map, load_into_network, tp_transform
from golden_ptq.parallel.context import TPContext
from golden_ptq.io.safetensors_files import SafetensorsFiles, find_safetensors

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


def load_hf(path: str, config: Optional[LlamaConfig] = None, tp: Optional[TPContext] = None) -> LlamaForCausalLM:
    """Build the network from a Hugging Face directory and load its float weights (a rank's slice under TP)."""
    config = config or hf_config(path)
    network = LlamaForCausalLM(config, tp=tp)
    tensors = SafetensorsFiles(find_safetensors(path))
    check_tied_head(tensors, config, path)
    mapping = layer_name_map(config.num_layers, _PER_LAYER, _GLOBAL)
    load_into_network(network, lambda name: tensors.get(mapping.get(name, name)), path, tp_transform(network))
    return network


def check_tied_head(tensors: SafetensorsFiles, config: LlamaConfig, path: str) -> None:
    """``tie_word_embeddings`` must agree with the weights: an untied model needs ``lm_head.weight``;
    a tied one may repeat the embedding there, but a different head would be silently dropped."""
    head = tensors.get("lm_head.weight")
    if not config.tie_word_embeddings:
        if head is None:
            raise ValueError(f"{path}: config.json says tie_word_embeddings false but the weights have no "
                             f"lm_head.weight; set tie_word_embeddings true if the head is the embedding table")
        return
    if head is not None:
        embed = tensors.get("model.embed_tokens.weight")
        if embed is None or head.shape != embed.shape or not np.array_equal(head, embed):
            raise ValueError(f"{path}: config.json says tie_word_embeddings true but lm_head.weight differs from "
                             f"model.embed_tokens.weight; set tie_word_embeddings false to use the separate head")
