"""Writing tensors as HF-style sharded safetensors, one shard at a time (for streamed models).

``write_shard`` puts its tensors on disk at once, so a caller quantizing layer by layer never holds
more than one shard; ``finish`` gives the shards their final ``{prefix}-00001-of-000NN.safetensors``
names and writes ``{prefix}.safetensors.index.json``. Write into a folder set's temporary folder
(:func:`golden_ptq.io.folder_set.write_folder_set`) so the whole set appears at once.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np

from golden_ptq.io.safetensors_files import INDEX_SUFFIX

_TAGS = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.float64): "F64",
         np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8", np.dtype(np.int32): "I32", np.dtype(np.int64): "I64",
         np.dtype(np.bool_): "BOOL"}


class ChunkedTensor:
    """A tensor written block of rows by block of rows, never whole in memory (a float vocabulary
    table copied from the source). ``blocks()`` yields consecutive row blocks of ``dtype``."""

    def __init__(self, shape: Tuple[int, ...], dtype, blocks: Callable[[], Iterator[np.ndarray]]):
        self.shape, self.dtype, self.blocks = tuple(int(d) for d in shape), np.dtype(dtype), blocks

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


Writable = Union[np.ndarray, ChunkedTensor]


def safetensors_tag(array: np.ndarray, override: Optional[str] = None) -> str:
    """The dtype tag of ``array``; ``override="BF16"`` marks a uint16 array holding bfloat16 bits."""
    if override is not None:
        if override == "BF16" and array.dtype == np.uint16:
            return override
        raise ValueError(f"safetensors dtype override {override!r} needs a uint16 array of bfloat16 bits, got "
                         f"{array.dtype}")
    if array.dtype not in _TAGS:
        raise ValueError(f"safetensors: dtype {array.dtype} is not supported; allowed: "
                         f"{sorted(str(d) for d in _TAGS)} (bf16 as uint16 with override 'BF16')")
    return _TAGS[array.dtype]


def bfloat16_bits(array: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), rounded to nearest even."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> 16) & 1))
    return (rounded >> 16).astype(np.uint16)


def write_safetensors(path: str, arrays: Mapping[str, Writable], dtypes: Optional[Mapping[str, str]] = None,
                      metadata: Optional[Mapping[str, str]] = None) -> int:
    """Write one safetensors file (tensors in the given order); returns the bytes of tensor data."""
    dtypes = dtypes or {}
    header: Dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, array in arrays.items():
        nbytes = int(array.nbytes)
        header[name] = {"dtype": safetensors_tag(array, dtypes.get(name)), "shape": list(array.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # tensor data starts 8-byte aligned
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)))
        handle.write(raw)
        for name, array in arrays.items():
            if isinstance(array, ChunkedTensor):
                _write_blocks(handle, name, array)
            else:
                handle.write(memoryview(np.ascontiguousarray(array)).cast("B"))
    return offset


def _write_blocks(handle, name: str, tensor: ChunkedTensor) -> None:
    written = 0
    for block in tensor.blocks():
        block = np.ascontiguousarray(block)
        if block.dtype != tensor.dtype or tuple(block.shape[1:]) != tensor.shape[1:]:
            raise ValueError(f"safetensors: a block of tensor '{name}' is {block.dtype} {list(block.shape)}, the tensor "
                             f"is {tensor.dtype} {list(tensor.shape)}")
        handle.write(memoryview(block).cast("B"))
        written += block.nbytes
    if written != tensor.nbytes:
        raise ValueError(f"safetensors: the blocks of tensor '{name}' hold {written} bytes, its shape "
                         f"{list(tensor.shape)} needs {tensor.nbytes}")


class ShardedSafetensorsWriter:
    """Shards written one by one into ``folder``; ``finish()`` names them and writes the index."""

    def __init__(self, folder: str, prefix: str = "model"):
        self.folder, self.prefix = folder, prefix
        self._shards: List[str] = []
        self._names: Dict[str, int] = {}
        self._total = 0
        self._finished = False
        os.makedirs(folder, exist_ok=True)

    def write_shard(self, arrays: Mapping[str, Writable], dtypes: Optional[Mapping[str, str]] = None) -> str:
        """Write ``arrays`` as the next shard now; a name already written is an error."""
        if self._finished:
            raise RuntimeError("ShardedSafetensorsWriter: finish() has run")
        if not arrays:
            raise ValueError("ShardedSafetensorsWriter.write_shard: no tensors given")
        again = [name for name in arrays if name in self._names]
        if again:
            raise ValueError(f"ShardedSafetensorsWriter: tensor '{again[0]}' was already written in shard "
                             f"{self._names[again[0]] + 1}")
        path = os.path.join(self.folder, f".{self.prefix}-shard-{len(self._shards) + 1:05d}.safetensors")
        self._total += write_safetensors(path, arrays, dtypes)
        for name in arrays:
            self._names[name] = len(self._shards)
        self._shards.append(path)
        return path

    def finish(self, metadata: Optional[Mapping[str, object]] = None) -> str:
        """Rename the shards to ``{prefix}-0000i-of-0000N.safetensors``; write and return the index path."""
        if self._finished:
            raise RuntimeError("ShardedSafetensorsWriter: finish() has run")
        if not self._shards:
            raise ValueError("ShardedSafetensorsWriter.finish: no shard was written")
        count = len(self._shards)
        finals = [f"{self.prefix}-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        for tmp, final in zip(self._shards, finals):
            os.replace(tmp, os.path.join(self.folder, final))
        index = {"metadata": {"total_size": self._total, **dict(metadata or {})},
                 "weight_map": {name: finals[shard] for name, shard in self._names.items()}}
        path = os.path.join(self.folder, self.prefix + INDEX_SUFFIX)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(index, handle, indent=1)
        self._finished = True
        return path
