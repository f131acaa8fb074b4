"""Hugging Face model directories (``config.json``, ``*.safetensors``, ``tokenizer.json``): Llama and Qwen2."""
from __future__ import annotations

from typing import Optional

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
    mapping = name_map(config.num_layers, HF_PER_LAYER, HF_GLOBAL)
    load_into_network(network, lambda name: tensors.get(mapping.get(name, name)), path, tp_transform(network))
    return network
