"""GPTQ (Golden Stick's ``precision_recovery``): rounding with Hessian-based error compensation.

Per quantized Linear, with ``H = 2 X^T X / n`` over every calibration row of its input ``X``
(accumulated in one extra pass over the layer's calibration batches, after any outlier
suppression has been folded, so ``X`` is the input the quantized weight will see; in the
calibration pass itself when no module before GPTQ changes the weights), the weight
is rounded one input column at a time and each column's rounding error is spread over the
columns not yet rounded so as to minimise ``|| X (W - Q)^T ||^2``:

    U = upper Cholesky factor of (H + damp I)^-1,    damp = damp_percent * mean(diag H)
    for column j:  q_j = Q(w_j);  e = (w_j - q_j) / U_jj;  w_k -= e U_jk  for k > j

with the updates of a block of ``block_size`` columns applied to the later columns at once
(lazy batch updates). ``act_order`` visits the columns by decreasing ``H_jj``. The Hessian is summed
in float64; the factor and the column loop run in float32 (:class:`HessianFactor`).

The grid: per output channel the scale (and zero point) come from the whole original row, as
round-to-nearest would choose them. Per group they come from the group's columns as they are
when GPTQ reaches the group (already corrected for the earlier groups), except with
``act_order``, where columns of a group are not visited together and the groups' ranges are
fixed from the original weight first. Either way the formulas are QuantLinear's own
(``quantize_weight`` of the group, with AWQ's clip ratios when m3 ran first), and the cell deploys exactly GPTQ's codes, scales and zero
points (``QuantLinear.weight_preset``). Groups of any size work, the last one ragged.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
from scipy.linalg import lapack

from golden_ptq.algorithm.modules.base import (INPUT_GRAM, AlgoModule, InputRecorder, LayerContext, MethodDeclaration,
                                               config_arg)
from golden_ptq.config.method_names import PRECISION_RECOVERY, W8A8, WEIGHT_ONLY
from golden_ptq.kernels.native import (gptq_columns, gptq_gather_transposed, gptq_permute_square, gptq_subtract_transposed,
                                      real_pointer)
from golden_ptq.quant_cells.linear import QuantLinear
from golden_ptq.quant_math.functions import group_count, quantize_weight, weight_qrange

Params = Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]   # codes, scale, zero point (as QuantLinear deploys)


def _column_params(w: np.ndarray, symmetric: bool, bits: int,
                   clip: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Per-row ``(scale, zero point)`` float64 of the columns ``w`` (one group), by QuantLinear's
    formulas (zero point 0 when symmetric), the range shrunk by ``clip`` per row if given."""
    _, scale, zp = quantize_weight(np.asarray(w, np.float32), 0, symmetric, bits, clip)
    scale = scale.astype(np.float32).astype(np.float64)
    return scale, (np.zeros_like(scale) if zp is None else zp.astype(np.float64))


def gptq_quantize(weight: np.ndarray, hessian: np.ndarray, group_size: int = 0, symmetric: bool = True,
                  bits: int = 8, block_size: int = 128, damp_percent: float = 0.01,
                  act_order: bool = False, clip_ratio: Optional[np.ndarray] = None) -> Params:
    """GPTQ of ``weight [out, in]`` against ``hessian [in, in]`` (``2 X^T X / n``).

    Returns ``(codes int8 [out, in], scale, zero point or None)`` shaped as
    :func:`golden_ptq.quant_math.quantize_weight` returns them (``[out]`` per channel,
    ``[out, ceil(in / group_size)]`` per group). ``clip_ratio`` (that shape) shrinks each
    channel's / group's range as ``quantize_weight`` does (AWQ's clip search, m3, sets it).
    """
    in_features = np.shape(weight)[1]
    if np.shape(hessian) != (in_features, in_features):
        raise ValueError(f"GPTQ: hessian shape {np.shape(hessian)} does not match the weight's {in_features} "
                         f"input columns")
    return gptq_round(weight, HessianFactor(hessian, damp_percent, act_order), group_size, symmetric, bits,
                      block_size, clip_ratio)


class HessianFactor:
    """What GPTQ needs of a Hessian, whatever weight it rounds: the column order (``act_order``:
    decreasing ``H_jj``) and the upper Cholesky factor ``u`` of ``(H + damp I)^-1`` in that order.
    Layers reading one input (wq/wk/wv) share it.

    ``dtype``: what the factor and the rounding work in. float32 by default, as GPTQ is usually run:
    LAPACK's factorisations and the block updates take about half the time of float64's (a quarter
    at 576 columns), the factor differs from float64's by ~1e-7 relative, and the damped Hessian is
    formed in float64 first."""

    def __init__(self, hessian: np.ndarray, damp_percent: float = 0.01, act_order: bool = False,
                 dtype=np.float32):
        h = np.asarray(hessian, dtype=np.float64)
        in_features = h.shape[0]
        diag = np.diag(h).copy()
        diag[diag == 0] = 1.0             # inputs never seen: nothing to compensate against
        self.act_order = act_order
        self.perm = np.argsort(-diag, kind="stable") if act_order else np.arange(in_features)
        damp = damp_percent * float(np.mean(diag[self.perm]))
        # the damped Hessian in reversed visiting order (see upper_factor_of_inverse)
        order = self.perm[::-1]
        self.u = _upper_factor_of_reversed(damped_in_order(h, order, diag[order] + damp, dtype))


def numpy_damped_in_order(h: np.ndarray, order: np.ndarray, diag: np.ndarray, dtype) -> np.ndarray:
    """``h[order][:, order]`` with ``diag`` on its diagonal, as ``dtype`` (``h`` float64): rows, then
    columns, each a contiguous copy."""
    out = np.take(np.take(h, order, axis=0), order, axis=1)
    out[np.diag_indices(len(order))] = diag
    return out.astype(dtype, copy=False)


def native_damped_in_order(h: np.ndarray, order: np.ndarray, diag: np.ndarray, dtype) -> np.ndarray:
    """:func:`numpy_damped_in_order` in C++: one pass over ``h`` and one new array (the same values)."""
    h = np.ascontiguousarray(h, np.float64)
    n = h.shape[0]
    order = np.ascontiguousarray(order, np.int64)
    diag = np.ascontiguousarray(diag, np.float64)
    if h.shape != (n, n) or order.shape != (n,) or diag.shape != (n,):
        raise ValueError(f"native_damped_in_order: h must be square [n, n] with order and diag [n], got "
                         f"{h.shape}, {order.shape}, {diag.shape}")
    out = np.empty((n, n), dtype)
    pointer = real_pointer(np.float64)
    if gptq_permute_square(dtype)(h.ctypes.data_as(pointer), n, order.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)),
                                  diag.ctypes.data_as(pointer), out.ctypes.data_as(real_pointer(dtype))):
        raise ValueError(f"native_damped_in_order: an index of order is outside 0..{n - 1}")
    return out


def damped_in_order(h: np.ndarray, order: np.ndarray, diag: np.ndarray, dtype) -> np.ndarray:
    """The native route when the kernels run, else numpy's (the same values)."""
    native = gptq_columns(dtype) is not None
    return (native_damped_in_order if native else numpy_damped_in_order)(h, order, diag, dtype)


def upper_factor_of_inverse(h: np.ndarray) -> np.ndarray:
    """Upper-triangular ``U`` with ``U^T U = h^-1`` (``h`` symmetric positive definite), without forming
    the inverse: with ``P`` the order reversal and ``P h P = M M^T`` (Cholesky), ``U = P M^-1 P``.
    One factorisation and one triangular inverse: about half the work of ``cholesky(inv(h)).T``."""
    return _upper_factor_of_reversed(h[::-1, ::-1])


def _upper_factor_of_reversed(reversed_h: np.ndarray) -> np.ndarray:
    """:func:`upper_factor_of_inverse` of ``h`` given ``P h P``, in ``h``'s precision (float32 or
    float64). LAPACK's ``potrf`` through scipy: 2-4x faster than ``numpy.linalg.cholesky`` at
    576-1536 (measured 2026-12-02); like numpy's, its last bits depend on the BLAS thread count only."""
    potrf, trtri = lapack.get_lapack_funcs(("potrf", "trtri"), (reversed_h,))
    # LAPACK wants Fortran order: a C-ordered symmetric matrix is its own transpose, which is one
    # (no copy; potrf then reads the upper triangle as the lower one, the same numbers)
    operand = reversed_h.T if reversed_h.flags.c_contiguous else reversed_h
    lower, info = potrf(operand, lower=1, clean=1, overwrite_a=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"GPTQ: the damped Hessian is not positive definite ({potrf.typecode}potrf "
                                    f"info {info})")
    inverse, info = trtri(lower, lower=1, overwrite_c=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"GPTQ: the damped Hessian's Cholesky factor is singular "
                                    f"({trtri.typecode}trtri info {info})")
    return np.ascontiguousarray(inverse[::-1, ::-1])


def gptq_round(weight: np.ndarray, factor: HessianFactor, group_size: int = 0, symmetric: bool = True,
               bits: int = 8, block_size: int = 128, clip_ratio: Optional[np.ndarray] = None) -> Params:
    """:func:`gptq_quantize` with the Hessian already factored.

    The weight is worked on transposed and in visiting order (``w_t [in, out]``: one contiguous row
    per input column), so a block is a slice rounded in place; the lazy update of the later columns
    is still computed as ``[out, in]`` and subtracted transposed. The arithmetic is element by
    element as the formulas in the module docstring say; the column loop and the transposed
    subtraction in C++ when the native kernels are available (same bits), else in numpy.
    """
    weight = np.asarray(weight)
    out_features, in_features = weight.shape
    act_order, perm, u = factor.act_order, factor.perm, factor.u
    real = u.dtype   # the factor's precision is the loop's
    if u.shape != (in_features, in_features):
        raise ValueError(f"GPTQ: hessian shape {u.shape} does not match the weight's {in_features} input columns")
    qmin, qmax = weight_qrange(bits, symmetric)
    groups = group_count(in_features, group_size)
    scale = np.zeros((groups, out_features), real)   # per group (or the one per-channel range), by output row
    zero = np.zeros((groups, out_features), real)
    clip = None if clip_ratio is None else np.asarray(clip_ratio, np.float64).reshape(out_features, groups)
    if not group_size or act_order:   # ranges fixed from the original weight
        width = group_size or in_features
        for g in range(groups):
            scale[g], zero[g] = _column_params(weight[:, g * width:(g + 1) * width], symmetric, bits,
                                               None if clip is None else clip[:, g])
    native = gptq_columns(real) is not None
    gather = native_gather_transposed if native else numpy_gather_transposed
    w_t = gather(weight.astype(real, copy=False), perm)   # [in (visiting order), out]
    # without act_order a group's range is taken from its columns when GPTQ reaches it: blocks hold
    # whole groups, and each group is rounded as a run of its own
    ranges_per_group = bool(group_size) and not act_order
    if ranges_per_group:
        block_size = group_size * max(1, block_size // group_size)
    run = group_size if ranges_per_group else block_size
    codes_t = np.empty((in_features, out_features), np.int8)   # codes on an 8-bit (or narrower) grid
    errors_t = np.empty((min(block_size, in_features), out_features), real)
    product = np.empty(out_features * max(in_features - block_size, 0), real)
    round_columns = native_round_columns if native else numpy_round_columns
    subtract_transposed = native_subtract_transposed if native else numpy_subtract_transposed
    for start in range(0, in_features, block_size):
        stop = min(start + block_size, in_features)
        block_t = w_t[start:stop]   # [columns, rows], a view: rounded in place
        group_of = (perm[start:stop] // group_size if group_size else np.zeros(stop - start, np.int64)).astype(np.int64)
        block = ColumnBlock(block_t, errors_t[:stop - start], start, group_of, scale, zero, float(qmin), float(qmax))
        for begin in range(0, stop - start, run):
            if ranges_per_group:
                g = group_of[begin]
                scale[g], zero[g] = _column_params(block_t[begin:begin + group_size].T, symmetric, bits,
                                                   None if clip is None else clip[:, g])
            round_columns(block, begin, min(begin + run, stop - start), u, codes_t)
        if stop < in_features:
            # the product as [out, in] from contiguous operands: BLAS rounds another operand order or
            # layout differently at some shapes, and this is the call GPTQ has always made
            later = product[:out_features * (in_features - stop)].reshape(out_features, in_features - stop)
            np.matmul(np.ascontiguousarray(block.errors_t.T), u[start:stop, stop:], out=later)
            subtract_transposed(w_t[stop:], later)
    codes = codes_t[np.argsort(perm)].T
    scale, zero = scale.T, zero.T
    if not group_size:
        scale, zero = scale[:, 0], zero[:, 0]
    return (codes, np.ascontiguousarray(scale, np.float32),
            None if symmetric else np.ascontiguousarray(zero, np.float32))


@dataclass
class ColumnBlock:
    """One block of GPTQ's column loop: its columns transposed (``block_t [columns, rows]``, updated
    in place), their errors, the block's first input column, each column's group and the grid."""

    block_t: np.ndarray
    errors_t: np.ndarray
    start: int
    group_of: np.ndarray
    scale: np.ndarray      # [groups, rows]
    zero: np.ndarray       # [groups, rows]
    qmin: float
    qmax: float


def numpy_round_columns(b: ColumnBlock, begin: int, end: int, u: np.ndarray, codes_t: np.ndarray) -> None:
    """Round columns ``begin .. end`` of the block, each column's error spread over the block's later
    columns, element by element as the module docstring's formulas say."""
    width = b.block_t.shape[0]
    for i in range(begin, end):
        col = b.start + i
        column, s, z = b.block_t[i], b.scale[b.group_of[i]], b.zero[b.group_of[i]]
        q = np.round(column / s)
        q += z
        np.clip(q, b.qmin, b.qmax, out=q)
        codes_t[col] = q
        err = (column - (q - z) * s) / u[col, col]
        b.errors_t[i] = err
        if i + 1 < width:   # the later columns of the block take this column's error
            b.block_t[i + 1:] -= np.multiply.outer(u[col, b.start + i + 1:b.start + width], err)


def native_round_columns(b: ColumnBlock, begin: int, end: int, u: np.ndarray, codes_t: np.ndarray) -> None:
    """:func:`numpy_round_columns` in C++ (``kernels/gptq_columns.cc``): the same bits, without a
    Python step per column. Floats all of ``u``'s dtype (float32 or float64), groups int64, codes int8."""
    real = u.dtype

    def ptr(array: np.ndarray, integer=None):
        if not (array.flags.c_contiguous and array.dtype == (integer or real)):
            raise ValueError(f"native_round_columns: arrays must be C-contiguous {real} (int64 groups, int8 codes)")
        return array.ctypes.data_as(ctypes.POINTER(np.ctypeslib.as_ctypes_type(integer)) if integer
                                    else real_pointer(real))

    rows = b.block_t.shape[1]
    status = gptq_columns(real)(ptr(b.block_t), b.block_t.shape[0], rows, begin, end, ptr(u), u.shape[1], b.start,
                                ptr(b.group_of, integer=np.int64), ptr(b.scale), ptr(b.zero), b.qmin, b.qmax,
                                ptr(codes_t, integer=np.int8), ptr(b.errors_t))
    if status != 0:
        raise RuntimeError(f"gp_gptq_columns failed (status {status})")


def numpy_gather_transposed(w: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """``w.T[perm]`` as a new C-contiguous array."""
    return np.ascontiguousarray(w.T[perm])


def native_gather_transposed(w: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """:func:`numpy_gather_transposed` in C++, in tiles (numpy's strided gather reads a cache line per
    element)."""
    w = np.ascontiguousarray(w)
    if w.dtype not in (np.float32, np.float64) or w.ndim != 2:
        raise ValueError("native_gather_transposed: w must be a 2-D float32 or float64 array")
    perm = np.ascontiguousarray(perm, np.int64)
    out = np.empty((perm.shape[0], w.shape[0]), w.dtype)
    pointer = real_pointer(w.dtype)
    if gptq_gather_transposed(w.dtype)(w.ctypes.data_as(pointer), w.shape[0], w.shape[1],
                                       perm.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)), perm.shape[0],
                                       out.ctypes.data_as(pointer)):
        raise ValueError(f"native_gather_transposed: a column index is outside 0..{w.shape[1] - 1}")
    return out


def numpy_subtract_transposed(a: np.ndarray, b: np.ndarray) -> None:
    """``a -= b.T`` in place."""
    np.subtract(a, b.T, out=a)


def native_subtract_transposed(a: np.ndarray, b: np.ndarray) -> None:
    """:func:`numpy_subtract_transposed` in C++, reading ``b`` in tiles rather than down its columns."""
    if not (a.flags.c_contiguous and b.flags.c_contiguous and a.dtype == b.dtype
            and a.dtype in (np.float32, np.float64) and a.shape == b.shape[::-1]):
        raise ValueError("native_subtract_transposed: a [m, n] and b [n, m] must be C-contiguous, both float32 "
                         "or both float64")
    pointer = real_pointer(a.dtype)
    gptq_subtract_transposed(a.dtype)(a.ctypes.data_as(pointer), a.shape[0], a.shape[1], b.ctypes.data_as(pointer))


class GPTQModule(AlgoModule):
    """Runs GPTQ on every quantized Linear of a unit (decoder layer, or the head) before Quantize."""

    method = MethodDeclaration(
        name="gptq", alias=None, role=PRECISION_RECOVERY, schemes=(WEIGHT_ONLY, W8A8), needs=(INPUT_GRAM,),
        algo_args=("gptq_damp_percent", "gptq_block_size", "gptq_act_order"), tp=False,
        tp_note="a row-parallel layer's Hessian and error compensation span every rank's input columns")

    keeps_layer_weights = True   # it chooses codes (weight_preset); the float weights stay

    def __init__(self, damp_percent: float = 0.01, block_size: int = 128, act_order: bool = False):
        if not 0.0 < damp_percent <= 1.0:
            raise ValueError(f"GPTQModule: damp_percent must be in (0, 1], got {damp_percent}")
        self.damp_percent, self.block_size, self.act_order = float(damp_percent), int(block_size), bool(act_order)

    @classmethod
    def from_config(cls, config=None) -> "GPTQModule":
        return cls(damp_percent=float(config_arg(config, "gptq_damp_percent")),
                   block_size=int(config_arg(config, "gptq_block_size")),
                   act_order=bool(config_arg(config, "gptq_act_order")))

    def __repr__(self) -> str:
        return (f"GPTQModule(damp_percent={self.damp_percent}, block_size={self.block_size}, "
                f"act_order={self.act_order})")

    def process(self, ctx: LayerContext) -> None:
        cells = {rel: c for rel, c in ctx.quant_cells.items()
                 if isinstance(c, QuantLinear) and c.spec.weight and not c.quantized}
        if not cells or ctx.runner is None:
            return
        grams = self._input_grams(ctx, cells)
        factors: List[Tuple[np.ndarray, HessianFactor]] = []   # one per distinct Hessian of the unit
        for rel, cell in cells.items():
            gram, rows = grams[rel]
            hessian = gram * (2.0 / max(rows, 1))
            factor = next((f for h, f in factors if h.shape == hessian.shape and np.array_equal(h, hessian)), None)
            if factor is None:
                factor = HessianFactor(hessian, self.damp_percent, self.act_order)
                factors.append((hessian, factor))
            spec = cell.spec
            cell.weight_preset = gptq_round(cell.weight.asnumpy(), factor, spec.group_size, spec.weight_symmetric,
                                            cell.weight_bits, self.block_size, cell.weight_clip)

    @staticmethod
    def _input_grams(ctx: LayerContext, cells: Dict[str, QuantLinear]) -> Dict[str, Tuple[np.ndarray, int]]:
        """``(sum x^T x, rows)`` of each cell's input over the unit's calibration batches: those the
        calibration pass recorded (``ctx.grams``), else from one more (feeding) pass."""
        if all(rel in ctx.grams for rel in cells):
            return {rel: ctx.grams[rel] for rel in cells}
        recorders = {}
        for rel, cell in cells.items():
            recorders[rel] = cell.recorder = InputRecorder(max_rows=0, gram=True)
        try:
            ctx.feed_layer()
        finally:
            for cell in cells.values():
                cell.recorder = None
        return {rel: (r.gram, r.gram_rows) for rel, r in recorders.items()}
