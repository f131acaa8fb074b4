"""The native route of the smoothing searches' candidate error (``candidate_score.cc``).

It covers what the searches meet in W8A8: balance layers with int8 weights per output channel
(symmetric, unclipped) and quantized activations (per token, or a static per-tensor range, either
symmetry), no channel shift, no row-parallel shard. Codes and scales are numpy's bit for bit
(``quant_math.functions``); only the final sum of squares is added in another (fixed) order. The
numpy route in :class:`~golden_ptq.algorithm.modules.smooth_search.CandidateScorer` stays the
reference and runs everything else, and whenever the kernels are off or a row is not finite.
"""
from __future__ import annotations

import ctypes
from typing import Dict, Optional, Tuple

import numpy as np

from golden_ptq.kernels.native import CandidateScoring, candidate_scoring
from golden_ptq.quant_cells.linear import QuantLinear
from golden_ptq.quant_math.functions import QMAX, QMIN, SYM_QMAX, asymmetric_params, symmetric_scale

_DOUBLE_P = ctypes.POINTER(ctypes.c_double)
_INT8_P = ctypes.POINTER(ctypes.c_int8)


def native_scorable(cell: QuantLinear) -> bool:
    """Whether ``cell``'s candidate error can take the native route."""
    spec = cell.spec
    return (bool(spec.weight) and not spec.group_size and bool(spec.weight_symmetric) and cell.weight_bits == 8
            and cell.weight_clip is None and bool(spec.act) and cell.shard != "row")


class NonFiniteRows(Exception):
    """A row the kernels refuse (NaN / Inf): the numpy route takes the candidate."""


class NativeScorer:
    """Per candidate: the shared input quantized once per distinct quantizer, each weight once, and
    each layer's squared output error with its exact integer product."""

    def __init__(self, x: np.ndarray, weights: Dict[int, np.ndarray], refs: Dict[int, np.ndarray],
                 scoring: Optional[CandidateScoring] = None):
        self.fns = scoring or candidate_scoring()
        self.x = np.ascontiguousarray(x, np.float64)
        self.weights = {key: np.ascontiguousarray(w, np.float64) for key, w in weights.items()}
        self.refs = {key: np.ascontiguousarray(r, np.float64) for key, r in refs.items()}

    @property
    def available(self) -> bool:
        return self.fns is not None

    def input_codes(self, cell: QuantLinear, scale_e: np.ndarray, static_range: Optional[Tuple[float, float]]
                    ) -> Tuple[np.ndarray, np.ndarray, bool, float]:
        """``(codes int8, scale, per_row, zero point)`` of the rows divided by ``scale_e``: per token
        when ``static_range`` is None, else with that per-tensor range (as ``act_codes``)."""
        rows, k = self.x.shape
        codes = np.empty((rows, k), np.int8)
        if static_range is None:
            scale, per_token, zp, lo, hi = np.empty(rows, np.float64), 1, 0.0, -SYM_QMAX, SYM_QMAX
        else:
            low, high = static_range
            per_token = 0
            if cell.spec.act_symmetric:
                step, zp, lo, hi = float(symmetric_scale(np.array([max(-low, high)]))[0]), 0.0, -SYM_QMAX, SYM_QMAX
            else:
                s, z = asymmetric_params(np.array([low]), np.array([high]))
                step, zp, lo, hi = float(s[0]), float(z[0]), QMIN, QMAX
            scale = np.array([step], np.float64)
        if self.fns.input_codes(_ptr(self.x), _ptr(scale_e), rows, k, per_token, zp, float(lo), float(hi),
                                codes.ctypes.data_as(_INT8_P), _ptr(scale)):
            raise NonFiniteRows()
        return codes, scale, bool(per_token), zp

    def weight_codes(self, cell: QuantLinear, scale_e: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """``(codes int8 [out, in], scale [out])`` of ``cell``'s weight times ``scale_e`` (as ``weight_codes``)."""
        w = self.weights[id(cell)]
        n, k = w.shape
        w_codes, w_scale = np.empty((n, k), np.int8), np.empty(n, np.float64)
        if self.fns.weight_codes(_ptr(w), _ptr(scale_e), n, k, w_codes.ctypes.data_as(_INT8_P), _ptr(w_scale)):
            raise NonFiniteRows()
        return w_codes, w_scale

    def error_sums(self, cell: QuantLinear, scale_e: np.ndarray, inputs: Tuple[np.ndarray, np.ndarray, bool, float]
                   ) -> float:
        """``sum ||Qa(X / s) Qw(W s)^T - X W^T||^2`` of ``cell`` on this rank's output columns."""
        w_codes, w_scale = self.weight_codes(cell, scale_e)
        n, k = w_codes.shape
        codes, scale, per_row, zp = inputs
        out = ctypes.c_double()
        self.fns.error(codes.ctypes.data_as(_INT8_P), _ptr(scale), int(per_row), zp, w_codes.ctypes.data_as(_INT8_P),
                       _ptr(w_scale), _ptr(self.refs[id(cell)]), codes.shape[0], n, k, ctypes.byref(out))
        return out.value


def _ptr(array: np.ndarray):
    if array.dtype != np.float64 or not array.flags["C_CONTIGUOUS"]:
        raise ValueError("native scoring: arrays must be contiguous float64")
    return array.ctypes.data_as(_DOUBLE_P)
