"""Scale, zero point and (de)quantization of int8 tensors."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

QMIN, QMAX = -128, 127
SYM_QMAX = 127          # symmetric ranges drop -128 so that +-x quantize to +-q
_TINY = 1e-8            # floor for scales of all-zero channels (any positive value is exact for zeros)


def symmetric_scale(absmax: np.ndarray) -> np.ndarray:
    """Scale mapping ``[-absmax, absmax]`` onto ``[-127, 127]``."""
    return np.maximum(np.asarray(absmax, dtype=np.float64) / SYM_QMAX, _TINY).astype(np.float32)


def asymmetric_params(minimum: np.ndarray, maximum: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Scale and integer zero point mapping ``[min, max]`` (widened to contain 0) onto ``[-128, 127]``."""
    lo = np.minimum(np.asarray(minimum, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(maximum, dtype=np.float64), 0.0)
    scale = np.maximum((hi - lo) / (QMAX - QMIN), _TINY)
    zero_point = np.clip(np.round(QMIN - lo / scale), QMIN, QMAX)
    return scale.astype(np.float32), zero_point.astype(np.float32)


def quantize(x: np.ndarray, scale: np.ndarray, zero_point: Optional[np.ndarray] = None,
             symmetric: bool = True) -> np.ndarray:
    """Integer codes (as int8) of ``x``; shapes of ``scale``/``zero_point`` broadcast against ``x``."""
    x = np.asarray(x, dtype=np.float32)
    if symmetric:
        return np.clip(np.round(x / scale), -SYM_QMAX, SYM_QMAX).astype(np.int8)
    return np.clip(np.round(x / scale) + zero_point, QMIN, QMAX).astype(np.int8)


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: Optional[np.ndarray] = None) -> np.ndarray:
    q = np.asarray(q, dtype=np.float32)
    if zero_point is not None:
        q = q - zero_point
    return (q * scale).astype(np.float32)


def quantize_weight(weight: np.ndarray, group_size: int = 0,
                    symmetric: bool = True) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Round-to-nearest int8 of a ``[out, in]`` weight, per output channel or per group of inputs.

    Returns ``(q [out, in] int8, scale, zero_point)``; ``scale`` is ``[out]`` per channel or
    ``[out, in // group_size]`` per group; ``zero_point`` (same shape, float holding integers) is
    None when symmetric.
    """
    weight = np.asarray(weight, dtype=np.float32)
    out_features, in_features = weight.shape
    if group_size:
        if in_features % group_size:
            raise ValueError(f"group_size {group_size} does not divide in_features {in_features}")
        view = weight.reshape(out_features, in_features // group_size, group_size)
    else:
        view = weight.reshape(out_features, 1, in_features)
    if symmetric:
        scale = symmetric_scale(np.abs(view).max(axis=-1))
        q = quantize(view, scale[..., None])
        zero_point = None
    else:
        scale, zero_point = asymmetric_params(view.min(axis=-1), view.max(axis=-1))
        q = quantize(view, scale[..., None], zero_point[..., None], symmetric=False)
    q = q.reshape(out_features, in_features)
    if not group_size:
        scale = scale[:, 0]
        zero_point = None if zero_point is None else zero_point[:, 0]
    return q, scale, zero_point
