"""Loaders: Hugging Face directories and GGUF files into :class:`LlamaForCausalLM`."""
from golden_ptq.networks.loaders.gguf_loader import load_gguf
from golden_ptq.networks.loaders.hf_loader import load_hf

__all__ = ["load_gguf", "load_hf"]
