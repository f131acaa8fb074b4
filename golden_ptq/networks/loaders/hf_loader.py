"""Hugging Face model directories (``config.json``, ``*.safetensors``, ``tokenizer.json``): Llama and Qwen2."""
from __future__ import annotations

from typing import Optional

import numpy as np

from golden_ptq.config.model_config import LlamaConfig
from golden_ptq.io.hf_config import hf_config
from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.networks.loaders.common import load_into_network, tp_transform
from golden_ptq.parallel.context import TPContext
from golden_ptq.io.safetensors_files import SafetensorsFiles, find_safetensors
from golden_ptq.io.tensor_names import HF_GLOBAL, HF_PER_LAYER, name_map


def load_hf(path: str, config: Optional[LlamaConfig] = None, tp: Optional[TPContext] = None) -> LlamaForCausalLM:
    """Build the network from a Hugging Face directory and load its float weights (a rank's slice under TP)."""
    config = config or hf_config(path)
    network = LlamaForCausalLM(config, tp=tp)
    tensors = SafetensorsFiles(find_safetensors(path))
    check_tied_head(tensors, config, path)
    mapping = name_map(config.num_layers, HF_PER_LAYER, HF_GLOBAL)
    load_into_network(network, lambda name: tensors.get(mapping.get(name, name)), path, tp_transform(network))
    return network


def check_tied_head(tensors: SafetensorsFiles, config: LlamaConfig, path: str) -> None:
    """``tie_word_embeddings`` must agree with the weights: an untied model needs ``lm_head.weight``;
    a tied one may repeat the embedding there, but a different head would be silently dropped."""
    head, embed = "lm_head.weight", "model.embed_tokens.weight"
    if not config.tie_word_embeddings:
        if head not in tensors:
            raise ValueError(f"{path}: config.json says tie_word_embeddings false but the weights have no "
                             f"lm_head.weight; set tie_word_embeddings true if the head is the embedding table")
        return
    if head in tensors and not (embed in tensors and _same_tensor(tensors, head, embed)):
        raise ValueError(f"{path}: config.json says tie_word_embeddings true but lm_head.weight differs from "
                         f"model.embed_tokens.weight; set tie_word_embeddings false to use the separate head")


def _same_tensor(tensors: SafetensorsFiles, a: str, b: str, block_rows: int = 4096) -> bool:
    """Equal shapes and values, compared a block of rows at a time (neither table is read whole)."""
    shape = tensors.shape(a)
    if shape != tensors.shape(b):
        return False
    if len(shape) < 1:
        return bool(np.array_equal(tensors.get(a), tensors.get(b)))
    return all(np.array_equal(tensors.get_rows(a, start, min(shape[0], start + block_rows)),
                              tensors.get_rows(b, start, min(shape[0], start + block_rows)))
               for start in range(0, shape[0], block_rows))
