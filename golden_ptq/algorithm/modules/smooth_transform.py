"""Smoothing through a run-time transform: a mapping whose balance layers read ``(smooth output) T``.

After ``rotation: hadamard`` with the online Hadamard, ``w2`` reads ``z = u T`` (``u`` the SwiGLU
output, ``T`` symmetric and orthogonal, so ``T⁻¹ = T``) and holds ``Wc = W T``. A scale ``s``
per channel of ``u`` still folds exactly, on the channels *before* ``T``:

    w3 rows / s                        (u becomes u / s)
    Wc  ->  (Wc T) diag(s) T            ((u / s) T) (Wc T diag(s) T)ᵀ = u (Wc T)ᵀ = z Wcᵀ

so a few huge channels of ``u`` are first shrunk by smoothing and what is left is spread by ``T``.
The statistics are those of ``u``: per-channel min/max over every calibration row (one extra
pass of the layer, undoing ``T`` on the balance layer's input) and the ``EXTREME_ROWS`` rows of
largest ``max |u|`` (a static per-tensor range of ``(u / s) T`` is set by such rows, and the
search scores each candidate's range on them together with the row sample). The balance
layers' observers cannot follow the fold (``T`` mixes channels): they are invalidated and PTQ
observes the layer again after the module.

Not under tensor parallelism (the rotation that makes such mappings refuses it already).
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
from mindspore import Tensor

from golden_ptq.networks.structure import SmoothMapping
from golden_ptq.quant_cells.linear import QuantLinear
from golden_ptq.quant_math.functions import fake_quantize_act, fake_quantize_per_token

EXTREME_ROWS = 64   # rows of largest max |u| kept for the static range of each candidate
ROW_CHUNK = 1024    # rows of a calibration batch transformed at a time


class PreTransformStats:
    """A QuantLinear recorder: min/max per channel of its input with ``transform`` undone, over
    every row fed, and the ``keep`` rows of largest ``max |u|`` (ties: the earlier row)."""

    def __init__(self, transform, keep: int = EXTREME_ROWS):
        self.transform, self.keep = transform, int(keep)
        self.minimum: Optional[np.ndarray] = None
        self.maximum: Optional[np.ndarray] = None
        self.extreme = np.zeros((0, 0))
        self.peaks = np.zeros(0)

    def __call__(self, x2: np.ndarray) -> None:
        for start in range(0, x2.shape[0], ROW_CHUNK):   # a bounded float64 working set
            self._update(self.transform.apply_numpy(x2[start:start + ROW_CHUNK]))

    def _update(self, u: np.ndarray) -> None:
        lo, hi = u.min(axis=0), u.max(axis=0)
        self.minimum = lo if self.minimum is None else np.minimum(self.minimum, lo)
        self.maximum = hi if self.maximum is None else np.maximum(self.maximum, hi)
        rows = np.concatenate([self.extreme, u]) if self.extreme.size else u
        peaks = np.concatenate([self.peaks, np.abs(u).max(axis=1)])
        order = np.argsort(-peaks, kind="stable")[: self.keep]
        self.extreme, self.peaks = rows[order], peaks[order]


def refuse_transform(mapping: SmoothMapping, label: str) -> None:
    """Methods that cannot fold through a transform name themselves and the mapping."""
    if mapping.transform is not None:
        raise NotImplementedError(f"anti_method {label} cannot smooth {mapping.smooth} -> {list(mapping.balance)} "
                                  f"through the online transform '{mapping.transform}'; use m1, m2 or m6, or set "
                                  f"algo_args.rotation_online_smooth: false")


def check_unsharded(ctx, balance: list, mapping: SmoothMapping) -> None:
    if any(getattr(cell, "shard", None) for cell in balance):
        raise NotImplementedError(f"{ctx.name}: smoothing {mapping.smooth} -> {list(mapping.balance)} through the "
                                  f"online transform '{mapping.transform}' is not supported under tensor parallelism")


def pre_transform_stats(ctx, cell: QuantLinear, transform) -> PreTransformStats:
    """One (feeding) pass of the layer with ``cell``'s input recorded before ``transform``."""
    recorder = PreTransformStats(transform)
    previous, cell.recorder = cell.recorder, recorder
    try:
        ctx.feed_layer()
    finally:
        cell.recorder = previous
    return recorder


def pre_transform_weight(cell, transform) -> np.ndarray:
    """The weight acting on the channels before ``transform``: ``Wc T`` (float64)."""
    return transform.apply_numpy(cell.weight.asnumpy())


def fold_balance_through(stats, scale_e: np.ndarray) -> None:
    """Balance weights ``Wc -> (Wc T) diag(s) T``; their observers must observe again."""
    for cell in stats.balance:
        w = transform_weight(stats.transform, pre_transform_weight(cell, stats.transform), scale_e)
        cell.weight.set_data(Tensor.from_numpy(np.ascontiguousarray(w, np.float32)))
        if isinstance(cell, QuantLinear) and cell.input_observer.calibrated:
            cell.input_observer.invalidate()


def transform_weight(transform, w_pre: np.ndarray, scale_e: np.ndarray) -> np.ndarray:
    """``(W diag(s)) T``: the balance weight reading ``(u / s) T`` (float64)."""
    return transform.apply_numpy(w_pre * scale_e[None, :])


def pre_transform_weights(stats) -> Dict[int, np.ndarray]:
    """``Wc T`` of each quantized balance layer (by ``id``): what no candidate scale changes."""
    return {id(c): pre_transform_weight(c, stats.transform) for c in stats.balance if isinstance(c, QuantLinear)}


def transformed_reference(stats, x: np.ndarray,
                          w_pres: Optional[Dict[int, np.ndarray]] = None) -> Dict[int, np.ndarray]:
    """Float outputs ``u Wpreᵀ`` of the quantized balance layers on pre-transform rows ``x``."""
    w_pres = pre_transform_weights(stats) if w_pres is None else w_pres
    return {key: x @ w_pre.T for key, w_pre in w_pres.items()}


def transformed_output_error(stats, x: np.ndarray, scale_e: np.ndarray,
                             refs: Optional[Dict[int, np.ndarray]] = None,
                             w_pres: Optional[Dict[int, np.ndarray]] = None) -> float:
    """Relative output error of the quantized balance layers reading ``(x / s) T`` with weights
    ``(Wpre diag(s)) T``; a static range spans the candidate's transformed rows and extreme rows.
    ``refs`` / ``w_pres``: the float outputs and ``Wpre`` when already computed for this mapping."""
    transform = stats.transform
    z = transform.apply_numpy(x / scale_e[None, :])
    num = den = 0.0
    for cell in stats.balance:
        if not isinstance(cell, QuantLinear):
            continue
        w_pre = w_pres[id(cell)] if w_pres is not None else pre_transform_weight(cell, transform)
        ref = refs[id(cell)] if refs is not None and id(cell) in refs else x @ w_pre.T
        wq = cell.fake_quantized_weight(transform_weight(transform, w_pre, scale_e))
        spec = cell.spec
        if not spec.act:
            zq = z
        elif spec.act_dynamic:
            zq = fake_quantize_per_token(z)
        else:
            ze = transform.apply_numpy(stats.extreme / scale_e[None, :]) if stats.extreme.size else z
            lo, hi = float(min(z.min(), ze.min())), float(max(z.max(), ze.max()))
            zq = fake_quantize_act(z, lo, hi, spec.act_symmetric)
        num += float(((zq @ wq.T - ref) ** 2).sum())
        den += float((ref ** 2).sum())
    return num / max(den, 1e-30)
