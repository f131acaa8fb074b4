"""Lazy reading of a MindSpore ``.ckpt`` (MindFormers checkpoints), one tensor at a time.

A ``.ckpt`` is a sequence of protobuf ``Checkpoint`` messages, each holding one ``Value``
(``tag`` = parameter name, ``tensor`` = ``dims``, ``tensor_type``, ``tensor_content``); a tensor
above MindSpore's slice size is written as several values of the same tag whose contents are
consecutive row blocks. Opening a file scans only the message headers (seeking over contents) and
remembers where each tensor's bytes are; ``get`` reads one tensor with pread. An optional CRC
trailer is ignored; encrypted checkpoints are refused.
"""
from __future__ import annotations

import os
from typing import BinaryIO, Dict, List, Optional, Tuple

import numpy as np

from golden_ptq.io.safetensors_files import CorruptFileError

_DTYPES = {"Float32": np.float32, "Float16": np.float16, "Float64": np.float64, "BFloat16": np.uint16,
           "Int8": np.int8, "UInt8": np.uint8, "Int16": np.int16, "UInt16": np.uint16, "Int32": np.int32,
           "Int64": np.int64, "Bool": np.bool_}
_CRC_TRAILER = b"crc_num"


def _varint(handle: BinaryIO, path: str) -> int:
    shift, value = 0, 0
    while True:
        byte = handle.read(1)
        if not byte:
            raise CorruptFileError(f"{path}: truncated checkpoint (ends inside a field header)")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise CorruptFileError(f"{path}: not a MindSpore checkpoint (malformed field header)")


def _varints(data: bytes) -> List[int]:
    """The varints packed in ``data`` (a packed ``repeated int64``)."""
    out, value, shift = [], 0, 0
    for byte in data:
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            out.append(value)
            value, shift = 0, 0
    return out


class CkptFiles:
    """The tensors of one MindSpore ``.ckpt``: ``names()``, ``shape``, ``dtype``, ``get``, ``in``."""

    def __init__(self, path: str):
        self.path = path
        self._index: Dict[str, Tuple[str, List[int], List[Tuple[int, int]]]] = {}
        size = os.path.getsize(path)
        if size == 0:
            raise CorruptFileError(f"{path}: the checkpoint file is empty (0 bytes)")
        with open(path, "rb") as handle:
            while handle.tell() < size:
                start = handle.tell()
                if size - start == len(_CRC_TRAILER) + 10 and handle.read(len(_CRC_TRAILER)) == _CRC_TRAILER:
                    break
                handle.seek(start)
                key = _varint(handle, path)
                if key != (1 << 3 | 2):   # Checkpoint.value, length-delimited
                    raise CorruptFileError(f"{path}: not a readable MindSpore checkpoint at byte {start} (encrypted, "
                                           f"or not a .ckpt)")
                length = _varint(handle, path)
                end = handle.tell() + length
                if end > size:
                    raise CorruptFileError(f"{path}: truncated: a value needs {end} bytes, the file holds {size}")
                self._value(handle, end)
                handle.seek(end)
        if not self._index:
            raise CorruptFileError(f"{path}: the checkpoint holds no tensors")

    def _value(self, handle: BinaryIO, end: int) -> None:
        tag, tensor = None, None
        while handle.tell() < end:
            key = _varint(handle, self.path)
            field, wire = key >> 3, key & 7
            if wire != 2:
                raise CorruptFileError(f"{self.path}: unexpected field {field} (wire type {wire}) in a value")
            length = _varint(handle, self.path)
            if field == 1:
                tag = handle.read(length).decode("utf-8")
            elif field == 2:
                tensor = self._tensor(handle, handle.tell() + length)
            else:   # a map tensor or something newer: not a float weight
                handle.seek(length, os.SEEK_CUR)
        if tag is None or tensor is None:
            return
        dims, kind, content = tensor
        if tag in self._index:
            previous = self._index[tag]
            if previous[0] != kind or previous[1] != dims:
                raise CorruptFileError(f"{self.path}: tensor '{tag}' appears twice with different shapes or types")
            previous[2].append(content)
        else:
            self._index[tag] = (kind, dims, [content])

    def _tensor(self, handle: BinaryIO, end: int):
        dims: List[int] = []
        kind, content = "", (handle.tell(), 0)
        while handle.tell() < end:
            key = _varint(handle, self.path)
            field, wire = key >> 3, key & 7
            if field == 1 and wire == 0:
                dims.append(_varint(handle, self.path))
                continue
            length = _varint(handle, self.path)
            if field == 1:
                dims.extend(_varints(handle.read(length)))
            elif field == 2:
                kind = handle.read(length).decode("utf-8")
            elif field == 3:
                content = (handle.tell(), length)
                handle.seek(length, os.SEEK_CUR)
            else:
                handle.seek(length, os.SEEK_CUR)
        return dims, kind, content

    def names(self) -> List[str]:
        return sorted(self._index)

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def shape(self, name: str) -> Tuple[int, ...]:
        return tuple(self._index[name][1])

    def dtype(self, name: str) -> str:
        return self._index[name][0]

    def get(self, name: str) -> Optional[np.ndarray]:
        """The tensor (bf16 widened to float32), or None when the file does not hold it."""
        if name not in self._index:
            return None
        kind, dims, parts = self._index[name]
        if kind not in _DTYPES:
            raise ValueError(f"{self.path}: tensor '{name}' has unsupported type {kind!r}; allowed: {sorted(_DTYPES)}")
        array = np.empty(int(np.prod(dims, dtype=np.int64)), dtype=_DTYPES[kind])
        view = memoryview(array).cast("B")
        if sum(length for _, length in parts) != array.nbytes:
            raise CorruptFileError(f"{self.path}: tensor '{name}' holds {sum(n for _, n in parts)} bytes, its shape "
                                   f"{dims} and type {kind} need {array.nbytes}")
        filled = 0
        with open(self.path, "rb") as handle:
            for offset, length in parts:
                handle.seek(offset)
                if handle.readinto(view[filled:filled + length]) != length:
                    raise CorruptFileError(f"{self.path}: truncated inside tensor '{name}'")
                filled += length
        array = array.reshape(dims)
        if kind == "BFloat16":
            return (array.astype(np.uint32) << 16).view(np.float32)
        return array
