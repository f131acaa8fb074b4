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


class SafetensorsFiles:
    """All tensors of one or more safetensors files, read on demand by name."""

    def __init__(self, files: List[str]):
        self._index: Dict[str, Tuple[str, dict, int]] = {}
        self._maps: Dict[str, mmap.mmap] = {}
        for file in files:
            with open(file, "rb") as handle:
                raw = handle.read(8)
                if len(raw) != 8:
                    raise ValueError(f"{file}: not a safetensors file (shorter than its 8-byte header length)")
                (header_len,) = struct.unpack("<Q", raw)
                try:
                    header = json.loads(handle.read(header_len))
                except ValueError as err:
                    raise ValueError(f"{file}: corrupt safetensors header ({err})") from None
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
