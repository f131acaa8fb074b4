"""GGUF files (llama.cpp): metadata, lazily dequantized tensors, and the model config they describe."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from golden_ptq.config.model_config import LlamaConfig, check_supported

SUPPORTED = ("llama", "qwen2")


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


