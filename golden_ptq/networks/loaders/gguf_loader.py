"""GGUF files (llama.cpp): weights dequantized to float32, llama's q/k row permutation undone."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

from golden_ptq.networks.config import LlamaConfig
from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.networks.loaders.common import (check_supported, layer_name_map, load_into_network, tp_transform,
                                                unpermute_rope_rows)
from golden_ptq.parallel.context import TPContext
from golden_ptq.networks.tokenizer import Tokenizer

SUPPORTED = ("llama", "qwen2")

_PER_LAYER = {
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
_GLOBAL = {
    "model.tok_embeddings.embedding_weight": "token_embd.weight",
    "model.norm_out.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


class GGUFFile:
    """Metadata and lazily dequantized tensors of one GGUF file."""

    def __init__(self, path: str):
        import gguf
        self.path = path
        try:
            self._reader = gguf.GGUFReader(path)
        except (ValueError, OSError) as err:
            raise ValueError(f"{path}: not a readable GGUF file ({err})") from None
        self.metadata: Dict[str, object] = {}
        for key, field in self._reader.fields.items():
            try:
                self.metadata[key] = field.contents()
            except Exception:  # some exotic field types have no python form; we never need them
                continue
        self._tensors = {t.name: t for t in self._reader.tensors}

    def get(self, name: str) -> Optional[np.ndarray]:
        from gguf.quants import dequantize
        tensor = self._tensors.get(name)
        if tensor is None:
            return None
        array = dequantize(tensor.data, tensor.tensor_type)
        return np.asarray(array, dtype=np.float32).reshape(tuple(int(d) for d in reversed(tensor.shape)))

    def has(self, name: str) -> bool:
        return name in self._tensors


def gguf_config(file: GGUFFile) -> LlamaConfig:
    meta = file.metadata
    arch = meta.get("general.architecture")
    check_supported(arch, SUPPORTED, file.path)

    def need(key: str):
        full = f"{arch}.{key}"
        if full not in meta:
            raise ValueError(f"{file.path}: metadata key '{full}' is missing")
        return meta[full]

    vocab = meta.get(f"{arch}.vocab_size") or len(meta.get("tokenizer.ggml.tokens", []))
    return LlamaConfig(
        vocab_size=int(vocab), hidden_size=int(need("embedding_length")), num_layers=int(need("block_count")),
        num_heads=int(need("attention.head_count")),
        num_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", need("attention.head_count"))),
        intermediate_size=int(need("feed_forward_length")),
        rms_norm_eps=float(need("attention.layer_norm_rms_epsilon")),
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        max_position_embeddings=int(meta.get(f"{arch}.context_length", 4096)),
        tie_word_embeddings=not file.has("output.weight"), qkv_bias=file.has("blk.0.attn_q.bias"),
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"), eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"))


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
    mapping = layer_name_map(config.num_layers, _PER_LAYER, _GLOBAL)
    permute = file.metadata.get("general.architecture") == "llama"

    def fetch(name: str) -> Optional[np.ndarray]:
        array = file.get(mapping.get(name, name))
        if array is not None and permute and name.endswith(("attention.wq.weight", "attention.wq.bias")):
            array = unpermute_rope_rows(array, config.num_heads)
        elif array is not None and permute and name.endswith(("attention.wk.weight", "attention.wk.bias")):
            array = unpermute_rope_rows(array, config.num_kv_heads)
        return array

    load_into_network(network, fetch, path, tp_transform(network))
    return network, Tokenizer.from_gguf_metadata(file.metadata)
