"""Lazy reading of ``*.safetensors`` into float32 numpy, bfloat16 included (numpy has no bf16)."""
from __future__ import annotations

import json
import mmap
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
    """All tensors of one or more safetensors files, read on demand by name."""

    def __init__(self, files: List[str]):
        self._index: Dict[str, Tuple[str, dict, int]] = {}
        self._maps: Dict[str, mmap.mmap] = {}
        for file in files:
            header, header_len = read_header(file)
            for name, info in header.items():
                if name != "__metadata__":
                    self._index[name] = (file, info, 8 + header_len)

    def names(self) -> List[str]:
        return sorted(self._index)

    def get(self, name: str) -> Optional[np.ndarray]:
        if name not in self._index:
            return None
        file, info, base = self._index[name]
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{file}: tensor '{name}' has unsupported dtype {info['dtype']}")
        if file not in self._maps:
            with open(file, "rb") as handle:
                self._maps[file] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        start, end = info["data_offsets"]
        dtype = np.dtype(_DTYPES[info["dtype"]])
        raw = np.frombuffer(self._maps[file], dtype=dtype, count=(end - start) // dtype.itemsize,
                            offset=base + start)
        array = raw.reshape(info["shape"])
        if info["dtype"] == "BF16":
            return (array.astype(np.uint32) << 16).view(np.float32)
        return np.array(array)


def find_safetensors(path: str) -> List[str]:
    files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {path}")
    return files
