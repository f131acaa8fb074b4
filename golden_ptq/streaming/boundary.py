"""One layer boundary's activations (every calibration batch), in memory or spilled to a memory map.

The driver holds two boundaries at once: the inputs of the layer it calibrates and, while it
computes them, that layer's outputs. Above ``spill_bytes`` a boundary lives in a float32 file
under the output's temporary folder instead, and each batch is read back as it is needed (one
batch resident at a time); the values are the same either way.
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from mindspore import Tensor


class SpilledBoundary:
    """Batches ``[B, T, D]`` float32 stored one after another in a memory-mapped file."""

    def __init__(self, path: str, shapes: Sequence[Tuple[int, ...]]):
        self.path, self.shapes = path, [tuple(s) for s in shapes]
        sizes = [int(np.prod(s)) for s in self.shapes]
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._map: Optional[np.memmap] = np.memmap(path, dtype=np.float32, mode="w+",
                                                   shape=(max(int(self._offsets[-1]), 1),))

    def put(self, index: int, tensor: Tensor) -> None:
        array = tensor.asnumpy()
        if tuple(array.shape) != self.shapes[index] or array.dtype != np.float32:
            raise ValueError(f"SpilledBoundary: batch {index} is {array.dtype} {array.shape}, expected float32 "
                             f"{self.shapes[index]}")
        self._map[self._offsets[index]:self._offsets[index + 1]] = array.reshape(-1)

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> Tensor:
        flat = self._map[self._offsets[index]:self._offsets[index + 1]]
        return Tensor(np.array(flat).reshape(self.shapes[index]))

    def __iter__(self) -> Iterator[Tensor]:
        return (self[i] for i in range(len(self)))

    def close(self) -> None:
        if self._map is not None:
            self._map._mmap.close()  # pylint: disable=protected-access
            self._map = None
            os.remove(self.path)


class BoundaryStore:
    """Makes boundaries for the driver (``LayerSource.boundary``): in memory while the first one is at
    most ``spill_bytes``, else every one spilled into ``folder``."""

    def __init__(self, folder: str, spill_bytes: int):
        self.folder, self.spill_bytes = folder, int(spill_bytes)
        self.spilled = False
        self.peak_bytes = 0      # largest boundary seen
        self._count = 0

    def boundary(self, outputs: Iterable[Tensor], previous: Sequence[Tensor]) -> Sequence[Tensor]:
        if isinstance(previous, SpilledBoundary):
            shapes = previous.shapes
        elif not self.spilled and len(previous) == 0:   # the first boundary: decide whether to spill
            held: List[Tensor] = list(outputs)
            total = sum(int(np.prod(t.shape)) * 4 for t in held)
            self.peak_bytes = max(self.peak_bytes, total)
            if total <= self.spill_bytes or not held:
                return held
            self.spilled = True
            return self._spill(held, [tuple(t.shape) for t in held])
        else:
            return list(outputs)
        out = self._spill(outputs, shapes) if len(shapes) and _has_any(outputs) else []
        previous.close()
        return out

    def _spill(self, outputs: Iterable[Tensor], shapes) -> SpilledBoundary:
        os.makedirs(self.folder, exist_ok=True)
        self._count += 1
        store = SpilledBoundary(os.path.join(self.folder, f"boundary-{self._count}.f32"), shapes)
        for index, tensor in enumerate(outputs):
            store.put(index, tensor)
        return store


def _has_any(outputs) -> bool:
    """False for the empty tuple the driver passes to release the last boundary."""
    return not (isinstance(outputs, (tuple, list)) and not outputs)
