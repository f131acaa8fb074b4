"""GGUF files (llama.cpp): weights dequantized to float32, llama's q/k row permutation undone."""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np

from golden_ptq.config.model_config import LlamaConfig
from golden_ptq.io.gguf_file import GGUFFile, gguf_config
from golden_ptq.io.tensor_names import GGUF_GLOBAL, GGUF_PER_LAYER, name_map
from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.networks.loaders.common import load_into_network, tp_transform, unpermute_rope_rows
from golden_ptq.parallel.context import TPContext
from golden_ptq.networks.tokenizer import Tokenizer


def load_gguf(path: str, max_position_embeddings: Optional[int] = None,
              tp: Optional[TPContext] = None) -> Tuple[LlamaForCausalLM, Tokenizer]:
    """Network with float32 weights and the tokenizer rebuilt from the file's metadata.

    Under tensor parallelism (``tp``, default the communication group) each rank keeps its slice.
    """
    file = GGUFFile(path)
    config = gguf_config(file)
    if max_position_embeddings:
        config.max_position_embeddings = max_position_embeddings
    network = LlamaForCausalLM(config, tp=tp)
    fetch = gguf_fetcher(file, config)
    load_into_network(network, fetch, path, tp_transform(network))
    return network, Tokenizer.from_gguf_metadata(file.metadata)


def gguf_shapes(file: GGUFFile, config: LlamaConfig) -> Callable[[str], Optional[Tuple[int, ...]]]:
    """``shape(our parameter name)``: the shape ``gguf_fetcher`` returns for it, from the header alone."""
    mapping = name_map(config.num_layers, GGUF_PER_LAYER, GGUF_GLOBAL)
    return lambda name: file.shape(mapping.get(name, name))


def gguf_fetcher(file: GGUFFile, config: LlamaConfig) -> Callable[[str], Optional[np.ndarray]]:
    """``fetch(our parameter name)``: the float32 tensor of ``file`` (None when absent), llama's q/k row
    permutation undone; one tensor dequantized per call."""
    mapping = name_map(config.num_layers, GGUF_PER_LAYER, GGUF_GLOBAL)
    permute = file.metadata.get("general.architecture") == "llama"

    def fetch(name: str) -> Optional[np.ndarray]:
        array = file.get(mapping.get(name, name))
        if array is not None and permute and name.endswith(("attention.wq.weight", "attention.wq.bias")):
            array = unpermute_rope_rows(array, config.num_heads)
        elif array is not None and permute and name.endswith(("attention.wk.weight", "attention.wk.bias")):
            array = unpermute_rope_rows(array, config.num_kv_heads)
        return array

    return fetch
