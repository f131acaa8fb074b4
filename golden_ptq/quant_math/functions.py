"""Scale, zero point and (de)quantization of int8 tensors."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

QMIN, QMAX = -128, 127
SYM_QMAX = 127          # symmetric ranges drop -128 so that +-x quantize to +-q
_TINY = 1e-8            # floor for scales of all-zero channels (any positive value is exact for zeros)


class NonFiniteError(ValueError):
    """NaN or Inf where a finite value is needed (a range, a weight, a scale)."""


def _finite_range(*arrays: np.ndarray) -> None:
    """Scales are never computed from NaN/Inf ranges: such a scale would be NaN, Inf or 0."""
    for array in arrays:
        if not np.isfinite(array).all():
            raise NonFiniteError(f"cannot compute a quantization scale: the range holds "
                                 f"{int((~np.isfinite(array)).sum())} NaN/Inf value(s)")


def _safe_scale(scale: np.ndarray) -> np.ndarray:
    """float32 scales, floored at ``_TINY`` (an all-zero channel gets ``_TINY``: its codes are all 0, exact),
    and never Inf (a range beyond float32)."""
    scale = np.maximum(scale, _TINY).astype(np.float32)
    if not np.isfinite(scale).all():
        raise NonFiniteError("cannot compute a quantization scale: the range exceeds float32")
    return scale


def symmetric_scale(absmax: np.ndarray) -> np.ndarray:
    """Scale mapping ``[-absmax, absmax]`` onto ``[-127, 127]``."""
    absmax = np.asarray(absmax, dtype=np.float64)
    _finite_range(absmax)
    return _safe_scale(absmax / SYM_QMAX)


def asymmetric_params(minimum: np.ndarray, maximum: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Scale and integer zero point mapping ``[min, max]`` (widened to contain 0) onto ``[-128, 127]``."""
    _finite_range(np.asarray(minimum), np.asarray(maximum))
    lo = np.minimum(np.asarray(minimum, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(maximum, dtype=np.float64), 0.0)
    scale = np.maximum((hi - lo) / (QMAX - QMIN), _TINY)
    _safe_scale(scale)
    zero_point = np.clip(np.round(QMIN - lo / scale), QMIN, QMAX)
    return scale.astype(np.float32), zero_point.astype(np.float32)


STATIC_SCALE_DTYPES = ("float32", "float16")


def representable_scale(scale: np.ndarray, dtype: str = "float32") -> np.ndarray:
    """``scale`` as float32, or (``"float16"``) the smallest float16 value not below it, for
    deployments that store static input scales in half precision (msModelSlim / MindIE): rounding
    up never clips a value the float32 scale kept."""
    scale = np.asarray(scale, dtype=np.float32)
    if dtype == "float32":
        return scale
    if dtype != "float16":
        raise ValueError(f"scale dtype {dtype!r} not allowed; allowed: {list(STATIC_SCALE_DTYPES)}")
    half = scale.astype(np.float16)
    below = half.astype(np.float32) < scale
    half[below] = np.nextafter(half[below], np.float16(np.inf))
    if not np.all(np.isfinite(half)):
        raise ValueError(f"a scale exceeds float16's range ({float(scale.max()):g}); keep float32 scales")
    return half.astype(np.float32)


def static_act_params(lo: float, hi: float, symmetric: bool, scale_dtype: str = "float32"):
    """Scale [1] and zero point [1] of a static per-tensor activation range ``[lo, hi]``."""
    if symmetric:
        scale = representable_scale(symmetric_scale(np.array([max(-lo, hi)])), scale_dtype)
        return scale, np.zeros(1, np.float32)
    scale, zero_point = asymmetric_params(np.array([lo]), np.array([hi]))
    if scale_dtype != "float32":  # the zero point follows the rounded scale
        scale = representable_scale(scale, scale_dtype)
        lo64 = min(float(lo), 0.0)
        zero_point = np.clip(np.round(QMIN - lo64 / scale.astype(np.float64)), QMIN, QMAX).astype(np.float32)
    return scale, zero_point


def quantize(x: np.ndarray, scale: np.ndarray, zero_point: Optional[np.ndarray] = None,
             symmetric: bool = True) -> np.ndarray:
    """Integer codes (as int8) of ``x``; shapes of ``scale``/``zero_point`` broadcast against ``x``."""
    x = np.asarray(x, dtype=np.float32)
    codes = x / scale          # one temporary, rounded and clipped in place (a 7B FFN weight: 0.36 GB, not 1.1)
    np.round(codes, out=codes)
    if symmetric:
        return np.clip(codes, -SYM_QMAX, SYM_QMAX, out=codes).astype(np.int8)
    if np.broadcast(codes, zero_point).shape == codes.shape and np.result_type(codes, zero_point) == codes.dtype:
        codes += zero_point
    else:
        codes = codes + zero_point
    return np.clip(codes, QMIN, QMAX, out=codes).astype(np.int8)


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: Optional[np.ndarray] = None) -> np.ndarray:
    q = np.asarray(q, dtype=np.float32)
    if zero_point is not None:
        q = q - zero_point
    return (q * scale).astype(np.float32)


def weight_qrange(bits: int, symmetric: bool) -> Tuple[int, int]:
    """Integer code range of ``bits``-bit weights: symmetric ``[-(2^(b-1)-1), 2^(b-1)-1]``, else ``[-2^(b-1), 2^(b-1)-1]``."""
    if bits not in (4, 8):
        raise ValueError(f"weight bits {bits!r} not supported; allowed: [4, 8]")
    top = 2 ** (bits - 1) - 1
    return (-top if symmetric else -top - 1), top


def quantize_weight(weight: np.ndarray, group_size: int = 0, symmetric: bool = True, bits: int = 8,
                    clip_ratio: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Round-to-nearest int8 of a ``[out, in]`` weight, per output channel or per group of inputs.

    Returns ``(q [out, in] int8, scale, zero_point)``; ``scale`` is ``[out]`` per channel or
    ``[out, ceil(in / group_size)]`` per group (the last group is ragged when ``group_size`` does
    not divide ``in``); ``zero_point`` (same shape, float holding integers) is
    None when symmetric. ``bits=4`` stores 4-bit codes (``[-7, 7]`` symmetric, ``[-8, 7]``
    asymmetric) in the int8 container. ``clip_ratio`` (shape of ``scale``, in ``(0, 1]``) shrinks
    each channel's / group's range before rounding (values beyond it saturate): AWQ's clip.
    """
    if bits != 8 or clip_ratio is not None:
        return _quantize_weight_general(weight, group_size, symmetric, bits, clip_ratio)
    weight = np.asarray(weight, dtype=np.float32)
    out_features, in_features = weight.shape
    view = _weight_view(weight, group_size)
    if symmetric:
        scale = symmetric_scale(np.abs(view).max(axis=-1))
        q = quantize(view, scale[..., None])
        zero_point = None
    else:
        scale, zero_point = asymmetric_params(view.min(axis=-1), view.max(axis=-1))
        q = quantize(view, scale[..., None], zero_point[..., None], symmetric=False)
    q = _unview(q, in_features)
    if not group_size:
        scale = scale[:, 0]
        zero_point = None if zero_point is None else zero_point[:, 0]
    return q, scale, zero_point


def group_count(in_features: int, group_size: int) -> int:
    """Groups of ``group_size`` input channels in a row; the last one is ragged (shorter) when
    ``group_size`` does not divide ``in_features``; 1 for per-channel (``group_size=0``)."""
    return -(-in_features // group_size) if group_size else 1


def _weight_view(weight: np.ndarray, group_size: int) -> np.ndarray:
    """``[out, groups, group_size]`` (per channel: ``[out, 1, in]``); a ragged last group is padded
    with zeros, which change no range (symmetric absmax, and asymmetric ranges always contain 0)."""
    out_features, in_features = weight.shape
    if not group_size:
        return weight.reshape(out_features, 1, in_features)
    groups = group_count(in_features, group_size)
    pad = groups * group_size - in_features
    if pad:
        weight = np.concatenate([weight, np.zeros((out_features, pad), weight.dtype)], axis=1)
    return weight.reshape(out_features, groups, group_size)


def _unview(view: np.ndarray, in_features: int) -> np.ndarray:
    """The ``[out, in]`` matrix of a :func:`_weight_view`, padding dropped."""
    return view.reshape(view.shape[0], -1)[:, :in_features]


def _quantize_weight_general(weight: np.ndarray, group_size: int, symmetric: bool, bits: int,
                             clip_ratio: Optional[np.ndarray]) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """``quantize_weight`` for 4-bit codes and/or clipped ranges (float64 range math)."""
    weight = np.asarray(weight, dtype=np.float32)
    out_features, in_features = weight.shape
    qmin, qmax = weight_qrange(bits, symmetric)
    view = _weight_view(weight, group_size).astype(np.float64)
    ratio = np.ones(view.shape[:2]) if clip_ratio is None else np.asarray(clip_ratio, np.float64).reshape(view.shape[:2])
    if np.any(ratio <= 0) or np.any(ratio > 1):
        raise ValueError("clip_ratio must lie in (0, 1]")
    if symmetric:
        absmax = np.abs(view).max(axis=-1)
        _finite_range(absmax)
        scale = _safe_scale(absmax * ratio / qmax)
        q = np.clip(np.round(view / scale[..., None]), qmin, qmax)
        zero_point = None
    else:
        lo = np.minimum(view.min(axis=-1), 0.0) * ratio
        hi = np.maximum(view.max(axis=-1), 0.0) * ratio
        _finite_range(lo, hi)
        scale = _safe_scale((hi - lo) / (qmax - qmin))
        zero_point = np.clip(np.round(qmin - lo / scale), qmin, qmax).astype(np.float32)
        q = np.clip(np.round(view / scale[..., None]) + zero_point[..., None], qmin, qmax)
    q = _unview(q.astype(np.int8), in_features)
    if not group_size:
        scale = scale[:, 0]
        zero_point = None if zero_point is None else zero_point[:, 0]
    return q, scale, zero_point


def fake_quantize_weight(weight: np.ndarray, group_size: int = 0, symmetric: bool = True, bits: int = 8,
                         clip_ratio: Optional[np.ndarray] = None) -> np.ndarray:
    """``dequantize(quantize_weight(...))`` as float64 ``[out, in]``: what the quantized layer multiplies by."""
    weight = np.asarray(weight)
    q, scale, zp = quantize_weight(weight, group_size, symmetric, bits, clip_ratio)
    return dequantize_weight(q, scale, zp, group_size)


def dequantize_weight(q: np.ndarray, scale: np.ndarray, zero_point: Optional[np.ndarray] = None,
                      group_size: int = 0) -> np.ndarray:
    """float64 ``[out, in]`` of int codes ``q`` with per channel (``[out]``) or per group
    (``[out, groups]``, the last group possibly ragged) scales and zero points."""
    in_features = q.shape[1]
    view = _weight_view(np.asarray(q, np.float64), group_size)
    scale3 = np.asarray(scale, np.float64).reshape(view.shape[0], view.shape[1], 1)
    if zero_point is not None:
        view = view - np.asarray(zero_point, np.float64).reshape(scale3.shape)
    return _unview(view * scale3, in_features)


def act_codes(x: np.ndarray, lo: float, hi: float, symmetric: bool) -> Tuple[np.ndarray, float]:
    """Per-tensor int8 quantization of ``x`` with the static range ``[lo, hi]`` as ``(codes, scale)``:
    integer-valued float64 codes, zero point already subtracted, so ``codes * scale`` is the
    dequantized value."""
    x = np.asarray(x, np.float64)
    if symmetric:
        scale = float(symmetric_scale(np.array([max(-lo, hi)]))[0])
        return np.clip(np.round(x / scale), -SYM_QMAX, SYM_QMAX), scale
    scale, zp = asymmetric_params(np.array([lo]), np.array([hi]))
    s, z = float(scale[0]), float(zp[0])
    return np.clip(np.round(x / s) + z, QMIN, QMAX) - z, s


def fake_quantize_act(x: np.ndarray, lo: float, hi: float, symmetric: bool) -> np.ndarray:
    """Per-tensor int8 fake quantization of ``x`` with the static range ``[lo, hi]`` (float64)."""
    codes, scale = act_codes(x, lo, hi, symmetric)
    return codes * scale


def per_token_codes(x: np.ndarray, row_absmax: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Dynamic symmetric per-row int8 quantization as ``(codes, scale [rows, 1])`` (float64, codes
    integer-valued); ``row_absmax`` overrides each row's ``max |x|`` (a column shard's rows use the
    whole row's)."""
    x = np.asarray(x, np.float64)
    absmax = np.abs(x).max(axis=-1, keepdims=True) if row_absmax is None else np.reshape(row_absmax, (-1, 1))
    scale = np.maximum(absmax / SYM_QMAX, _TINY)
    return np.clip(np.round(x / scale), -SYM_QMAX, SYM_QMAX), scale


def fake_quantize_per_token(x: np.ndarray, row_absmax: Optional[np.ndarray] = None) -> np.ndarray:
    """Dynamic symmetric per-row int8 fake quantization (what W8A8-dynamic does at run time)."""
    codes, scale = per_token_codes(x, row_absmax)
    return codes * scale


def weight_codes(weight: np.ndarray, symmetric: bool = True, bits: int = 8,
                 clip_ratio: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Per-output-channel :func:`quantize_weight` as ``(codes [out, in], scale [out])``, float64, codes
    integer-valued with the zero point subtracted: ``codes * scale[:, None]`` is
    :func:`fake_quantize_weight`'s value, bit for bit."""
    q, scale, zero_point = quantize_weight(weight, 0, symmetric, bits, clip_ratio)
    codes = q.astype(np.float64)
    if zero_point is not None:
        codes = codes - np.asarray(zero_point, np.float64)[:, None]
    return codes, np.asarray(scale, np.float64)


FLOAT32_EXACT = 2 ** 24   # every integer up to this magnitude is a float32


def float32_exact_span(bound: float) -> int:
    """How many products of magnitude at most ``bound`` a float32 sum can add exactly, in any order:
    no partial sum can pass :data:`FLOAT32_EXACT`."""
    return max(1, int(FLOAT32_EXACT // max(bound, 1.0)))


def integer_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b.T`` of integer-valued matrices (quantization codes), exact, as float64.

    float32 GEMMs over slices of the inner dimension short enough that no partial sum can pass
    2**24, where float32 stops holding every integer; every addition is then exact whatever order
    the BLAS uses, and the slices' results are added in float64 (exact below 2**53). Twice as fast
    as the float64 product and more accurate than multiplying dequantized values."""
    a32, b32 = np.asarray(a, np.float32), np.asarray(b, np.float32)
    step = float32_exact_span(float(np.abs(a32).max(initial=0.0)) * float(np.abs(b32).max(initial=0.0)))
    inner = a32.shape[1]
    if step >= inner:
        return (a32 @ b32.T).astype(np.float64)
    out = np.zeros((a32.shape[0], b32.shape[0]))
    for k in range(0, inner, step):
        out += a32[:, k:k + step] @ b32[:, k:k + step].T
    return out
