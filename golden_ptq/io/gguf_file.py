"""GGUF files (llama.cpp): metadata, lazily dequantized tensors, and the model config they describe."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from golden_ptq.config.model_config import LlamaConfig, check_supported

SUPPORTED = ("llama", "qwen2")


class GGUFFile:
    """Metadata and lazily dequantized tensors of one GGUF file.

    The header is parsed here (``gguf_header``): the ``gguf`` package's reader builds a numpy view
    per value, which for a tokenizer's 100,000 strings took seconds. Tensor data: Q4_1 and Q8_0
    through this module's whole-tensor dequantizers, every other type through the package's."""

    def __init__(self, path: str):
        self.path = path
        try:
            self._data = np.memmap(path, dtype=np.uint8, mode="r")
            self.metadata, self._tensors = gguf_header(self._data)
        except (ValueError, OSError, IndexError, UnicodeDecodeError, struct.error) as err:
            raise ValueError(f"{path}: not a readable GGUF file ({err})") from None

    def get(self, name: str) -> Optional[np.ndarray]:
        info = self._tensors.get(name)
        if info is None:
            return None
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize
        raw = np.asarray(self._data[info.offset:info.offset + info.nbytes].reshape(info.rows, -1))
        fast = WHOLE_TENSOR_DEQUANTIZERS.get(GGMLQuantizationType(info.kind).name)
        array = fast(raw) if fast is not None else dequantize(raw, info.kind)
        return np.asarray(array, dtype=np.float32).reshape(self.shape(name))

    def has(self, name: str) -> bool:
        return name in self._tensors

    def shape(self, name: str) -> Optional[Tuple[int, ...]]:
        """The shape ``get`` returns (numpy order), from the header alone; None when absent."""
        info = self._tensors.get(name)
        return None if info is None else tuple(reversed(info.dims))


def _half_scales(blocks: np.ndarray, start: int) -> np.ndarray:
    """The float16 at bytes ``start, start + 1`` of each block, as float32 ``[blocks, 1]``."""
    return np.ascontiguousarray(blocks[:, start:start + 2]).view(np.float16).astype(np.float32)


def dequantize_q4_1(raw: np.ndarray) -> np.ndarray:
    """ggml Q4_1 (blocks of 32: float16 d, float16 m, 16 bytes of 4-bit codes, the low nibbles first)
    as float32 ``d * q + m``, the whole tensor at once into one new array: the ``gguf`` package's
    formula and bits (it works 16 rows at a time: SmolLM2 loaded in 3.5 s with it, 1.0 s with these)."""
    blocks = raw.reshape(-1, 20)
    codes = blocks[:, 4:]
    q = np.concatenate([codes & np.uint8(0x0F), codes >> np.uint8(4)], axis=1)
    out = np.multiply(_half_scales(blocks, 0), q, dtype=np.float32)   # one float array: fresh memory is slow
    out += _half_scales(blocks, 2)
    return out


def dequantize_q8_0(raw: np.ndarray) -> np.ndarray:
    """ggml Q8_0 (blocks of 32: float16 d, 32 int8 codes) as float32 ``q * d``, the whole tensor at
    once into one new array (the ``gguf`` package's formula and bits)."""
    blocks = raw.reshape(-1, 34)
    return np.multiply(blocks[:, 2:].view(np.int8), _half_scales(blocks, 0), dtype=np.float32)


WHOLE_TENSOR_DEQUANTIZERS = {"Q4_1": dequantize_q4_1, "Q8_0": dequantize_q8_0}   # by ggml type name


GGUF_MAGIC = b"GGUF"
# value type -> struct format of one scalar (8: string, 9: array)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes lie: ``dims`` in GGUF order (fastest first), ``kind`` the ggml type."""

    dims: Tuple[int, ...]
    kind: int
    offset: int          # from the start of the file
    nbytes: int
    rows: int            # product of all dims but the first


class _Cursor:
    def __init__(self, data: np.ndarray):
        self.buf, self.pos = memoryview(data), 0

    def scalar(self, fmt: str):
        value = struct.unpack_from("<" + fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        size = self.scalar("Q")
        text = bytes(self.buf[self.pos:self.pos + size]).decode("utf-8")
        self.pos += size
        return text

    def value(self, kind: int):
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.scalar("I"), self.scalar("Q")
            if item in _SCALARS:   # a numeric array at once
                fmt = "<" + _SCALARS[item]
                width = struct.calcsize(fmt)
                values = np.frombuffer(self.buf, dtype=np.dtype(fmt), count=count, offset=self.pos).tolist()
                self.pos += width * count
                return values
            return [self.value(item) for _ in range(count)]
        if kind not in _SCALARS:
            raise ValueError(f"unknown metadata value type {kind}")
        return self.scalar(_SCALARS[kind])


def gguf_header(data: np.ndarray) -> Tuple[Dict[str, object], Dict[str, TensorInfo]]:
    """Metadata (python values; arrays as lists) and tensor locations of a GGUF file's bytes."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    cur = _Cursor(data)
    if bytes(cur.buf[:4]) != GGUF_MAGIC:
        raise ValueError("no GGUF magic number")
    cur.pos = 4
    version = cur.scalar("I")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} (supported: 2, 3)")
    tensor_count, kv_count = cur.scalar("Q"), cur.scalar("Q")
    metadata: Dict[str, object] = {}
    for _ in range(kv_count):
        key = cur.string()
        metadata[key] = cur.value(cur.scalar("I"))
    infos: List[Tuple[str, Tuple[int, ...], int, int]] = []
    for _ in range(tensor_count):
        name = cur.string()
        dims = tuple(cur.scalar("Q") for _ in range(cur.scalar("I")))
        infos.append((name, dims, cur.scalar("I"), cur.scalar("Q")))
    alignment = int(metadata.get("general.alignment", 32))
    start = -(-cur.pos // alignment) * alignment
    tensors: Dict[str, TensorInfo] = {}
    for name, dims, kind, offset in infos:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        count = int(np.prod(dims, dtype=np.int64))
        nbytes = count // block * size
        if start + offset + nbytes > data.size:
            raise ValueError(f"tensor {name!r} runs past the end of the file")
        tensors[name] = TensorInfo(dims, kind, start + offset, nbytes, count // max(dims[0], 1) if dims else 1)
    return metadata, tensors


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


