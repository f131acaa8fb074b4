"""Running statistics of activations gathered during calibration."""
from __future__ import annotations

from typing import Optional

import numpy as np


class MinMaxObserver:
    """Per-channel running min / max over every row seen (the last axis is the channel).

    Per-tensor ranges derive from the per-channel ones, and a per-channel rescale (what smoothing
    does to a layer's input) can be applied to the statistics exactly, without running data again.
    """

    def __init__(self) -> None:
        self.minimum: Optional[np.ndarray] = None
        self.maximum: Optional[np.ndarray] = None
        self.rows = 0

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32)
        flat = x.reshape(-1, x.shape[-1])
        lo, hi = flat.min(axis=0), flat.max(axis=0)
        if self.minimum is None:
            self.minimum, self.maximum = lo, hi
        else:
            self.minimum = np.minimum(self.minimum, lo)
            self.maximum = np.maximum(self.maximum, hi)
        self.rows += flat.shape[0]

    @property
    def calibrated(self) -> bool:
        return self.minimum is not None

    def absmax(self) -> np.ndarray:
        """Per-channel ``max |x|``."""
        self._require()
        return np.maximum(np.abs(self.minimum), np.abs(self.maximum))

    def tensor_range(self):
        self._require()
        return float(self.minimum.min()), float(self.maximum.max())

    def scale_channels(self, factor: np.ndarray) -> None:
        """The observed tensor is now ``x * factor`` (``factor > 0`` per channel): update the stats."""
        self._require()
        factor = np.asarray(factor, dtype=np.float32)
        if np.any(factor <= 0):
            raise ValueError("scale_channels needs positive factors")
        self.minimum = self.minimum * factor
        self.maximum = self.maximum * factor

    def _require(self) -> None:
        if self.minimum is None:
            raise RuntimeError("observer has seen no data; was the layer run during calibration?")
