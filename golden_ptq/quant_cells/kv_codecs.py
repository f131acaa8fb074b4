"""The int8 KV cache's encode / decode math, twice: MindSpore ops (inside compiled graphs) and numpy
(eager calls, where MindSpore's broadcasting CPU kernels cost several times numpy's: on
SmolLM2 they made an eager C8 prefill 1.5x as slow as FP32's).

Both twins give the same bits: only IEEE-exact steps are used (division, multiplication,
round-half-to-even, clipping, casts, comparisons, table look-ups), no ``log2``/``exp2`` whose last
bit may differ between libraries. ``tests/test_kvcache_schemes.py`` checks each pair.

Shapes: ``x`` ``[B, Hkv, S, D]``; per-channel ``scale`` / ``zero_point`` ``[1, Hkv, 1, D]``; the
token scheme's ``base`` ``[1, Hkv, 1, 1]``.
"""
from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops

EXPONENT_STEPS = 16          # token scale exponents per octave
EXPONENT_MIN, EXPONENT_MAX = -128, 127
#: ``2**(e/16)`` for every int8 exponent ``e``, float32 (row ``e + 128``)
TOKEN_STEPS = (2.0 ** (np.arange(EXPONENT_MIN, EXPONENT_MAX + 1) / EXPONENT_STEPS)).astype(np.float32)
_THRESHOLDS = TOKEN_STEPS[:-1]          # e = EXPONENT_MIN + #{thresholds < ratio}: the least step >= ratio
_INV_127 = np.float32(1.0 / 127.0)


# ----- MindSpore ops (graphs) ---------------------------------------------------------------------
def _clip(x: Tensor, lo: float, hi: float) -> Tensor:
    return ops.minimum(ops.maximum(x, lo), hi)


def encode_symmetric(x: Tensor, scale: Tensor) -> Tensor:
    return _clip(ops.round(ops.div(x, scale)), -127.0, 127.0).astype(ms.int8)


def decode_symmetric(q: Tensor, scale: Tensor) -> Tensor:
    return ops.mul(q.astype(ms.float32), scale)


def encode_asymmetric(x: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
    return _clip(ops.add(ops.round(ops.div(x, scale)), zero_point), -128.0, 127.0).astype(ms.int8)


def decode_asymmetric(q: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
    return ops.mul(ops.sub(q.astype(ms.float32), zero_point), scale)


def _token_scale(index: Tensor, base: Tensor) -> Tensor:
    """Scale of each row from its exponent's table row ``index`` (int32 ``[.., 1]``)."""
    steps = ops.gather(Tensor(TOKEN_STEPS), index, 0)
    return ops.mul(steps, ops.mul(base, Tensor(_INV_127)))


def encode_tokens(x: Tensor, base: Tensor) -> Tensor:
    """``[.., D]`` floats -> ``[.., D + 1]`` int8: the codes, then the row's scale exponent."""
    ratio = ops.div(ops.abs(x).max(axis=-1, keepdims=True), base)
    index = ops.greater(ratio, Tensor(_THRESHOLDS)).astype(ms.int32).sum(axis=-1, keepdims=True)
    codes = _clip(ops.round(ops.div(x, _token_scale(index, base))), -127.0, 127.0)
    exponent = ops.add(index, EXPONENT_MIN).astype(ms.float32)
    return ops.concat((codes, exponent), -1).astype(ms.int8)


def token_scales(rows: Tensor, base: Tensor) -> Tensor:
    """Each stored row's scale ``[.., 1]`` from ``rows``, the stored rows already cast to float."""
    width = rows.shape[-1] - 1
    return _token_scale(ops.sub(rows[..., width:], float(EXPONENT_MIN)).astype(ms.int32), base)


def decode_tokens(stored: Tensor, base: Tensor) -> Tensor:
    # cast first, then slice: a slice taken of the static buffer Parameter itself inside a compiled
    # decode step was read before that step's write (wrong logits); the cast keeps the order
    rows = stored.astype(ms.float32)
    return ops.mul(rows[..., :rows.shape[-1] - 1], token_scales(rows, base))


# ----- numpy twins (eager calls) ------------------------------------------------------------------
def np_encode_symmetric(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x / scale), -127.0, 127.0).astype(np.int8)


def np_decode_symmetric(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * scale


def np_encode_asymmetric(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x / scale) + zero_point, -128.0, 127.0).astype(np.int8)


def np_decode_asymmetric(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    return (q.astype(np.float32) - zero_point) * scale


def _np_token_scale(index: np.ndarray, base: np.ndarray) -> np.ndarray:
    return TOKEN_STEPS[index] * (base * _INV_127)


def np_encode_tokens(x: np.ndarray, base: np.ndarray) -> np.ndarray:
    ratio = np.abs(x).max(axis=-1, keepdims=True) / base
    index = np.searchsorted(_THRESHOLDS, ratio, side="left")     # #{thresholds < ratio}
    codes = np.clip(np.round(x / _np_token_scale(index, base)), -127.0, 127.0)
    out = np.empty(x.shape[:-1] + (x.shape[-1] + 1,), np.int8)
    out[..., :-1] = codes
    out[..., -1:] = index + EXPONENT_MIN
    return out


def np_decode_tokens(stored: np.ndarray, base: np.ndarray) -> np.ndarray:
    index = stored[..., -1:].astype(np.int32) - EXPONENT_MIN
    return stored[..., :-1].astype(np.float32) * _np_token_scale(index, base)
