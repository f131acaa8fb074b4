"""Lazy reading of ``*.safetensors`` into float32 numpy, bfloat16 included (numpy has no bf16)."""
from __future__ import annotations

import json
import os
import struct
from typing import Dict, List, Optional, Tuple

import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I8": np.int8, "U8": np.uint8,
           "I32": np.int32, "I64": np.int64, "BF16": np.uint16, "BOOL": np.bool_}


class CorruptFileError(ValueError):
    """A weight file that is empty, truncated or not in the format its name says."""


def read_header(file: str) -> Tuple[dict, int]:
    """The json header of a safetensors file and its length, after checking that the file is complete
    (every tensor's bytes lie inside it); errors name the file and what is wrong."""
    size = os.path.getsize(file)
    if size == 0:
        raise CorruptFileError(f"{file}: the file is empty (0 bytes); it was never written completely")
    with open(file, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise CorruptFileError(f"{file}: not a safetensors file ({size} bytes, shorter than its 8-byte header "
                                   f"length)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > size - 8:
            raise CorruptFileError(f"{file}: truncated or not a safetensors file: its header claims {header_len} "
                                   f"bytes but the file holds only {size} bytes")
        try:
            header = json.loads(handle.read(header_len))
        except ValueError as err:
            raise CorruptFileError(f"{file}: corrupt safetensors header ({err})") from None
    if not isinstance(header, dict):
        raise CorruptFileError(f"{file}: corrupt safetensors header (not a JSON object)")
    try:
        end = max((int(info["data_offsets"][1]) for name, info in header.items() if name != "__metadata__"),
                  default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        raise CorruptFileError(f"{file}: corrupt safetensors header (a tensor without data_offsets)") from None
    if 8 + header_len + end > size:
        raise CorruptFileError(f"{file}: truncated: its tensors need {8 + header_len + end} bytes but the file "
                               f"holds only {size}")
    return header, header_len


class SafetensorsFiles:
    """All tensors of one or more safetensors files, read on demand by name.

    Each ``get`` reads that tensor's bytes with ``pread`` into a fresh array: nothing stays mapped,
    so a process streaming a large model holds only the tensors it keeps (an ``mmap`` would leave
    every page it touched in the process's resident set).
    """

    def __init__(self, files: List[str]):
        self._index: Dict[str, Tuple[str, dict, int]] = {}
        for file in files:
            header, header_len = read_header(file)
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                if name in self._index:
                    raise CorruptFileError(f"{file}: tensor '{name}' is also in {self._index[name][0]}; which "
                                           f"one is meant is ambiguous")
                self._index[name] = (file, info, 8 + header_len)

    def names(self) -> List[str]:
        return sorted(self._index)

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def shape(self, name: str) -> Tuple[int, ...]:
        return tuple(self._index[name][1]["shape"])

    def dtype(self, name: str) -> str:
        """The stored dtype tag (``F32``, ``BF16``, ``I8``, ...)."""
        return self._index[name][1]["dtype"]

    def file_of(self, name: str) -> str:
        return self._index[name][0]

    def get(self, name: str) -> Optional[np.ndarray]:
        """The tensor (bf16 widened to float32), or None when no file holds it."""
        if name not in self._index:
            return None
        shape = self.shape(name)
        return self._read(name, 0, shape[0] if shape else 1).reshape(shape)

    def get_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of a tensor of at least one dimension (bf16 widened to float32); only
        their bytes are read."""
        shape = self.shape(name)
        if not shape or not 0 <= start <= stop <= shape[0]:
            raise ValueError(f"{self.file_of(name)}: rows [{start}, {stop}) of tensor '{name}' with shape "
                             f"{list(shape)}")
        return self._read(name, start, stop).reshape((stop - start,) + shape[1:])

    def _read(self, name: str, row_start: int, row_stop: int) -> np.ndarray:
        """Rows ``[row_start, row_stop)`` as a flat array, read with one ``pread``."""
        file, info, base = self._index[name]
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{file}: tensor '{name}' has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        dtype = np.dtype(_DTYPES[info["dtype"]])
        shape = info["shape"]
        total = int(np.prod(shape, dtype=np.int64))
        if total * dtype.itemsize != end - start:
            raise CorruptFileError(f"{file}: tensor '{name}' holds {end - start} bytes, its shape "
                                   f"{shape} and dtype {info['dtype']} need {total * dtype.itemsize}")
        row = int(np.prod(shape[1:], dtype=np.int64)) if shape else 1
        array = np.empty((row_stop - row_start) * row, dtype=dtype)
        with open(file, "rb") as handle:
            handle.seek(base + start + row_start * row * dtype.itemsize)
            if handle.readinto(memoryview(array).cast("B")) != array.nbytes:
                raise CorruptFileError(f"{file}: truncated inside tensor '{name}'")
        if info["dtype"] == "BF16":  # widened in place: one float32 copy beside the bf16 bytes, not two
            wide = array.astype(np.uint32)
            del array
            wide <<= 16
            return wide.view(np.float32)
        return array


INDEX_SUFFIX = ".safetensors.index.json"


def read_index(path: str) -> List[str]:
    """The shard files named by a HF-style ``*.safetensors.index.json`` (``weight_map``: name -> file)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, encoding="utf-8") as handle:
            weight_map = json.load(handle)["weight_map"]
    except (ValueError, KeyError, TypeError) as err:
        raise CorruptFileError(f"{path}: not a safetensors index (needs a 'weight_map' object): {err}") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CorruptFileError(f"{path}: 'weight_map' must be a non-empty object of tensor name -> file")
    files = sorted(set(weight_map.values()))
    missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise FileNotFoundError(f"{path}: shard {missing[0]!r} named in weight_map does not exist "
                                f"({len(missing)} missing)")
    return [os.path.join(folder, f) for f in files]


def open_safetensors(path: str) -> SafetensorsFiles:
    """A lazy reader for a ``.safetensors`` file, a ``*.safetensors.index.json`` with its shards, or a
    folder holding one index or only unsharded safetensors files."""
    if path.endswith(INDEX_SUFFIX):
        return SafetensorsFiles(read_index(path))
    if os.path.isdir(path):
        indexes = sorted(f for f in os.listdir(path) if f.endswith(INDEX_SUFFIX))
        if len(indexes) > 1:
            raise CorruptFileError(f"{path}: holds {len(indexes)} safetensors indexes {indexes}; which one is "
                                   f"meant is ambiguous")
        if indexes:
            return SafetensorsFiles(read_index(os.path.join(path, indexes[0])))
        return SafetensorsFiles(find_safetensors(path))
    return SafetensorsFiles([path])


def find_safetensors(path: str) -> List[str]:
    files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {path}")
    return files
