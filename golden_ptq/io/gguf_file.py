"""GGUF files (llama.cpp): metadata, lazily dequantized tensors, and the model config they describe."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

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
        return np.asarray(array, dtype=np.float32).reshape(self.shape(name))

    def has(self, name: str) -> bool:
        return name in self._tensors

    def shape(self, name: str) -> Optional[Tuple[int, ...]]:
        """The shape ``get`` returns (numpy order), from the header alone; None when absent."""
        tensor = self._tensors.get(name)
        return None if tensor is None else tuple(int(d) for d in reversed(tensor.shape))


# Tensors of the first block the network has no place for (its biases are q/k/v only).
_UNSUPPORTED_TENSORS = ("blk.0.attn_output.bias", "blk.0.ffn_gate.bias", "blk.0.ffn_up.bias", "blk.0.ffn_down.bias",
                        "blk.0.ffn_gate_inp.weight")


def check_gguf_features(file: GGUFFile, arch: str) -> None:
    """Raise naming the first metadata key or tensor that asks for something the network does not implement."""
    meta = file.metadata
    scaling = meta.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise ValueError(f"{file.path}: metadata '{arch}.rope.scaling.type' = {scaling!r} is not supported; only "
                         f"plain rotary embedding (no rope scaling) is")
    factor = meta.get(f"{arch}.rope.scaling.factor")
    if factor not in (None, 0, 0.0, 1, 1.0) and scaling != "none":
        raise ValueError(f"{file.path}: metadata '{arch}.rope.scaling.factor' = {factor!r} is not supported; only "
                         f"plain rotary embedding (no rope scaling) is")
    for key in ("attention.sliding_window", "expert_count"):
        value = meta.get(f"{arch}.{key}")
        if value not in (None, 0):
            raise ValueError(f"{file.path}: metadata '{arch}.{key}' = {value!r} is not supported (the network has "
                             f"full attention and one dense MLP per layer)")
    for name in _UNSUPPORTED_TENSORS:
        if file.has(name):
            raise ValueError(f"{file.path}: tensor '{name}' is not supported (the network has no place for it: "
                             f"biases only on the q/k/v projections, one dense MLP)")


def gguf_config(file: GGUFFile) -> LlamaConfig:
    meta = file.metadata
    arch = meta.get("general.architecture")
    check_supported(arch, SUPPORTED, file.path)

    def need(key: str):
        full = f"{arch}.{key}"
        if full not in meta:
            raise ValueError(f"{file.path}: metadata key '{full}' is missing")
        return meta[full]

    check_gguf_features(file, arch)
    vocab = meta.get(f"{arch}.vocab_size") or len(meta.get("tokenizer.ggml.tokens", []))
    if not vocab:
        raise ValueError(f"{file.path}: metadata has neither '{arch}.vocab_size' nor 'tokenizer.ggml.tokens'; "
                         f"the vocabulary size is unknown")
    heads, hidden = int(need("attention.head_count")), int(need("embedding_length"))
    for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        value = meta.get(f"{arch}.{key}")
        if value is not None and heads and int(value) != hidden // heads:
            raise ValueError(f"{file.path}: metadata '{arch}.{key}' = {value} differs from embedding_length / "
                             f"head_count ({hidden} / {heads} = {hidden // heads}); the network supports only "
                             f"full rotary embedding over head_dim = hidden / heads")
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


