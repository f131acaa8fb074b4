"""Run-time math of the quantized Linear forms, as MindSpore functions.

Integer matmul on CPU: MindSpore's int8 x int8 MatMul returns int8 (it overflows) and int32
MatMul is 3.5-13x slower than float32. Products of int8 codes are integers of magnitude at most
128 * 127 = 16256, so any partial sum over at most 1024 of them stays below 2**24 and is exact
in float32, whatever order the BLAS adds in. We therefore multiply the codes as float32 in
chunks of <= 1024 input channels, cast each chunk's exact result to int32 and add in int32:
the result equals exact int8 x int8 -> int32 accumulation, at float32 GEMM speed.

That MindSpore-op route is the fallback. Where the native kernels of :mod:`golden_ptq.kernels`
run (x86-64 with AVX2 and a C++ compiler), each form is one fused operator instead: the input is
quantized, multiplied in integers (AMX, AVX-512 VNNI or AVX2) and rescaled in one pass, and A16W8 /
A16W4 (per channel, per group with a possibly ragged last group, symmetric or asymmetric)
multiply by the int8 codes directly, dequantizing them in registers or an L2-sized panel. Both
routes give the same int8 codes and int32 sums; the weight-only forms agree up to float summation
order (the dequantized weight values are the same).
"""
from __future__ import annotations

from typing import Union

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops

from golden_ptq.kernels import native_ops
from golden_ptq.networks.layers import compiled_for_large_inputs, on_rows
from golden_ptq.quant_cells.ragged_groups import w8a16_dequant_ragged
from golden_ptq.quant_math.functions import QMAX, QMIN, SYM_QMAX, float32_exact_span, integer_product

EXACT_CHUNK = float32_exact_span(-QMIN * SYM_QMAX)   # int8 activations x weights: 1032 products


def int_matmul(xq: Tensor, wq: Tensor) -> Tensor:
    """``xq [M, K] @ wq [N, K].T`` as int32, for integer-valued float32 ``xq`` and int8 ``wq``."""
    mm = ops.MatMul(transpose_b=True)
    k = xq.shape[1]
    w = wq.astype(ms.float32)
    if k <= EXACT_CHUNK:
        return mm(xq, w).astype(ms.int32)
    acc = None
    for start in range(0, k, EXACT_CHUNK):
        stop = min(start + EXACT_CHUNK, k)
        part = mm(xq[:, start:stop], w[:, start:stop]).astype(ms.int32)
        acc = part if acc is None else ops.add(acc, part)
    return acc


def codes_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b.T`` of integer-valued numpy codes, exact, float64 (calibration's candidate scoring):
    the native int8 kernel when both fit in int8, else float32 products over exact spans
    (:func:`golden_ptq.quant_math.functions.integer_product`)."""
    native = native_ops()
    if native is not None and min(a.min(initial=0), b.min(initial=0)) >= QMIN and max(a.max(initial=0), b.max(initial=0)) <= QMAX:
        out = native["i8_gemm"](Tensor(np.ascontiguousarray(a, np.int8)), Tensor(np.ascontiguousarray(b, np.int8)))
        return out.asnumpy().astype(np.float64)
    return integer_product(a, b)


def _a8w8_static(x: Tensor, wq: Tensor, input_scale: Tensor, input_zp: Tensor, quant_bias: Tensor,
                 deq_scale: Tensor) -> Tensor:
    xq = ops.clip_by_value(ops.add(ops.round(ops.div(x, input_scale)), input_zp), -128.0, 127.0)
    acc = ops.add(int_matmul(xq, wq), quant_bias)
    return ops.mul(acc.astype(ms.float32), deq_scale)


def token_absmax(x: Tensor) -> Tensor:
    """``max |x|`` of every row, ``[M, 1]``."""
    return ops.max(ops.abs(x), axis=-1, keepdims=True)[0]


def _a8w8_dynamic_absmax(x: Tensor, wq: Tensor, weight_scale: Tensor, absmax: Tensor) -> Tensor:
    """Per-token symmetric int8 input with the given row ranges (a row-parallel shard passes the whole
    row's), int8 weight per output channel."""
    scale = ops.maximum(ops.div(absmax, 127.0), 1e-8)
    xq = ops.clip_by_value(ops.round(ops.div(x, scale)), -127.0, 127.0)
    return ops.mul(ops.mul(int_matmul(xq, wq).astype(ms.float32), scale), weight_scale)


def _a8w8_dynamic(x: Tensor, wq: Tensor, weight_scale: Tensor) -> Tensor:
    return _a8w8_dynamic_absmax(x, wq, weight_scale, token_absmax(x))


def _w8a16_channel(x: Tensor, wq: Tensor, weight_scale: Tensor) -> Tensor:
    return ops.mul(ops.MatMul(transpose_b=True)(x, wq.astype(ms.float32)), weight_scale)


def _w8a16_dequant(x: Tensor, wq: Tensor, weight_scale: Tensor, weight_zp: Tensor) -> Tensor:
    """Group-wise or asymmetric weights (``[out, groups]`` dividing the input width): dequantize the
    weight, then a float matmul."""
    out_features, in_features = wq.shape
    groups = weight_scale.shape[1]
    w = wq.astype(ms.float32).reshape(out_features, groups, in_features // groups)
    w = ops.mul(ops.sub(w, weight_zp.reshape(out_features, groups, 1)), weight_scale.reshape(out_features, groups, 1))
    return ops.MatMul(transpose_b=True)(x, w.reshape(out_features, in_features))


# The W8A8 kernels are compiled whatever set_compile_elementwise says: eagerly, their nine elementwise
# passes dwarf the matmul (w2 shape, 4096 rows: 424 ms eager vs 180 ms compiled, float matmul
# 70 ms), for about 0.25 GB of graph memory per input shape.
_a8w8_static_ops = compiled_for_large_inputs(_a8w8_static, always=True)
_a8w8_dynamic_ops = compiled_for_large_inputs(_a8w8_dynamic, always=True)
_a8w8_dynamic_absmax_ops = compiled_for_large_inputs(_a8w8_dynamic_absmax, always=True)
_w8a16_channel_ops = compiled_for_large_inputs(_w8a16_channel)
w8a16_dequant = compiled_for_large_inputs(_w8a16_dequant)


def a8w8_static(x: Tensor, wq: Tensor, input_scale: Tensor, input_zp: Tensor, quant_bias: Tensor,
                deq_scale: Tensor) -> Tensor:
    """Per-tensor int8 input (scale, zero point), int8 weight: ``float(acc + quant_bias) * deq_scale``;
    ``x [..., K]`` -> ``[..., N]``."""
    native = native_ops()
    if native is not None:
        return native["a8w8_static"](x, wq, input_scale, input_zp, quant_bias, deq_scale)
    return on_rows(_a8w8_static_ops, x, wq, input_scale, input_zp, quant_bias, deq_scale)


def a8w8_dynamic(x: Tensor, wq: Tensor, weight_scale: Tensor) -> Tensor:
    """Per-token symmetric int8 input, int8 weight per output channel; ``x [..., K]`` -> ``[..., N]``."""
    native = native_ops()
    if native is not None:
        return native["a8w8_dynamic"](x, wq, weight_scale)
    return on_rows(_a8w8_dynamic_ops, x, wq, weight_scale)


def a8w8_dynamic_absmax(x: Tensor, wq: Tensor, weight_scale: Tensor, absmax: Tensor) -> Tensor:
    """:func:`a8w8_dynamic` of ``x [M, K]`` with the token ranges ``absmax`` ``[M, 1]`` given."""
    native = native_ops()
    if native is not None:
        return native["a8w8_dynamic_absmax"](x, wq, weight_scale, absmax)
    return _a8w8_dynamic_absmax_ops(x, wq, weight_scale, absmax)


def _w8a16_group(x: Tensor, wq: Tensor, weight_scale: Tensor, weight_zp: Tensor, group_size: int) -> Tensor:
    """The MindSpore-op route of :func:`w8a16_group` (a float copy of the weight per call)."""
    out_features, in_features = wq.shape
    if group_size and in_features % group_size:
        return w8a16_dequant_ragged(x, wq, weight_scale, weight_zp, group_size)
    return w8a16_dequant(x, wq, weight_scale.reshape(out_features, -1), weight_zp.reshape(out_features, -1))


def w8a16_channel(x: Tensor, wq: Tensor, weight_scale: Tensor) -> Tensor:
    """Float input, int8 weight with one scale per output channel: ``(x @ wq.T) * weight_scale``;
    ``x [..., K]`` -> ``[..., N]``."""
    native = native_ops()
    if native is not None:
        return native["w8_gemm"](x, wq, weight_scale)
    return on_rows(_w8a16_channel_ops, x, wq, weight_scale)


_GROUP_SIZE_TENSORS = {}


def _group_size_tensor(group_size: int, in_features: int) -> Tensor:
    """The native operator's ``group_size`` operand, int32 ``[1]`` (one tensor per size, reused);
    per output channel (``group_size`` 0) it is one group of the whole row."""
    group_size = group_size or in_features
    if group_size not in _GROUP_SIZE_TENSORS:
        _GROUP_SIZE_TENSORS[group_size] = Tensor(np.array([group_size], np.int32))
    return _GROUP_SIZE_TENSORS[group_size]


def w8a16_group(x: Tensor, wq: Tensor, weight_scale: Tensor, weight_zp: Tensor, group_size: int) -> Tensor:
    """Float input, int8 weight (8- or 4-bit codes) with a scale and zero point per group of
    ``group_size`` input channels (the last group is shorter when it does not divide the input
    width) or, ``group_size`` 0, per output channel: ``x @ ((wq - zp) * scale).T``.
    ``weight_scale`` / ``weight_zp`` are ``[out, groups]`` or ``[out]``; ``x [..., K]`` -> ``[..., N]``."""
    native = native_ops()
    if native is not None:
        return native["wg_gemm"](x, wq, weight_scale, weight_zp, _group_size_tensor(group_size, wq.shape[1]))
    return on_rows(_w8a16_group, x, wq, weight_scale, weight_zp, group_size)


_GRAPH_ROUTES = {"a8w8_static": _a8w8_static, "a8w8_dynamic": _a8w8_dynamic,
                 "a8w8_dynamic_absmax": _a8w8_dynamic_absmax, "w8a16_channel": _w8a16_channel,
                 "w8a16_group": _w8a16_group}
_NATIVE_NAMES = {"a8w8_static": "a8w8_static", "a8w8_dynamic": "a8w8_dynamic",
                 "a8w8_dynamic_absmax": "a8w8_dynamic_absmax", "w8a16_channel": "w8_gemm",
                 "w8a16_group": "wg_gemm"}


def resolve(form: str, in_features: int = 0, group_size: int = 0):
    """``(product, extra)`` for ``form`` (a key of ``_GRAPH_ROUTES``): ``product`` is one callable a
    graph can hold, the native operator where available, else the plain MindSpore-op function (the
    graph compiles it); ``extra`` is its trailing operand after the layer's parameters, for
    ``"w8a16_group"`` the group size (an int32 tensor for the native operator, a Python int for the
    graph route, which needs it as a constant), else None."""
    native = native_ops()
    product = native[_NATIVE_NAMES[form]] if native is not None else _GRAPH_ROUTES[form]
    extra: Union[Tensor, int, None] = None
    if form == "w8a16_group":
        extra = _group_size_tensor(group_size, in_features) if native is not None else group_size
    return product, extra
