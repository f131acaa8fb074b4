"""Searched smoothing: m2 (alpha search), m6 (alpha and weight-exponent search), m4 (shift + scale).

All three fold exactly like SmoothQuant (``smooth.py``): per smooth channel scales ``s`` divide the
``smooth`` cell (RMSNorm weight, or rows and bias of wv / w3) and multiply the balance layers'
input columns. They differ in how ``s`` is chosen: every candidate is scored by the balance
layers' relative output error on a row sample of the layer's calibration inputs,

    err(s) = sum_b || X W_b^T - Qa(X / s) Qw(W_b s)^T ||^2 / sum_b || X W_b^T ||^2

with the layer's own weight quantizer ``Qw`` and activation quantizer ``Qa`` (static per-tensor
range from the observer's per-channel min/max after the rescale, or per-token). The identity
``s = 1`` is always a candidate, so the choice is never worse than not smoothing on this measure.
Float balance layers (blacklisted or rolled back) compute exactly whatever ``s`` is and are not
scored. A mapping through a run-time transform (``smooth_transform.py``) is scored on the rows
before the transform, with the quantized input ``Qa((X / s) T)`` (m2 and m6; m4 refuses it).

m4 (Outlier Suppression+) also shifts: ``z_j = (max_j + min_j) / 2`` per channel makes each
channel's range symmetric before scaling (``s`` uses the half-ranges). Where the shift goes: the
smooth cells have no bias (RMSNorm, bias-free wv/w3), so the shift is held by each balance layer
with quantized activations: its ``input_shift`` (``z / s``, subtracted from the input before it
is quantized) and ``shift_bias`` (``= dequantized weight @ input_shift``, added to its output).
In float the two cancel exactly; only the quantized input changes. Those two parameters are part
of the deployed checkpoint, and DEPLOY mode with ``anti_method='m4'`` creates them.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from golden_ptq.algorithm.modules.base import (ACTIVATION_RANGES, INPUT_ROWS, AlgoModule, LayerContext, MethodDeclaration,
                                               config_arg)
from golden_ptq.algorithm.modules.native_scoring import NativeScorer, NonFiniteRows, native_scorable
from golden_ptq.algorithm.modules.smooth import (TP_SMOOTHING, MappingStats, drop_input_grams, fold_smoothing,
                                                mapping_statistics, smoothing_scale)
from golden_ptq.algorithm.modules.smooth_transform import (pre_transform_weights, refuse_transform,
                                                           transformed_output_error, transformed_reference)
from golden_ptq.config.method_names import ANTI_OUTLIER, W8A8
from golden_ptq.networks.structure import SmoothMapping
from golden_ptq.parallel.context import all_reduce_max, all_reduce_min, all_reduce_sum_numpy
from golden_ptq.quant_cells.linear import QuantLinear
from golden_ptq.quant_cells.linear_kernels import codes_product
from golden_ptq.quant_math.functions import act_codes, per_token_codes

Candidate = Tuple[str, np.ndarray, Optional[np.ndarray]]   # (label, scale per smooth channel, shift or None)


def mapping_input(ctx: LayerContext, mapping: SmoothMapping, stats: MappingStats) -> np.ndarray:
    """The recorded calibration rows of the balance layers' (shared) input, float64 (with a run-time
    transform: the rows before it)."""
    for rel in mapping.balance:
        if rel in ctx.inputs:
            rows = ctx.inputs[rel].astype(np.float64)
            return rows if stats.transform is None else stats.transform.apply_numpy(rows)
    raise RuntimeError(f"{ctx.name}: no recorded inputs for {list(mapping.balance)}; the module needs "
                       f"needs_layer_inputs=True and a PTQ that records them")


def quantized_output_error(stats: MappingStats, x: np.ndarray, scale_e: np.ndarray,
                           shift_e: Optional[np.ndarray] = None, refs: Optional[Dict[int, np.ndarray]] = None) -> float:
    """Relative output error of the mapping's quantized balance layers after dividing their input by
    ``scale_e`` (and subtracting ``shift_e``, compensated at the output), on rows ``x``.

    Tensor parallel: a column-parallel layer's error sums are added over the ranks (each holds some
    output columns); a row-parallel layer's partial outputs are summed over the ranks first (each
    holds some input columns). Every rank gets the TP=1 value and so chooses the same candidate.
    A search scoring many candidates of one mapping uses a :class:`CandidateScorer` (same values).
    """
    return CandidateScorer(stats, x, refs).error(scale_e, shift_e)


class CandidateScorer:
    """:func:`quantized_output_error` of one mapping's candidates on rows ``x``: what no candidate
    changes (the balance layers' float64 weights, float outputs and their squared sums) is computed
    once, and balance layers that quantize their shared input alike (wq/wk/wv, w1/w3) quantize it
    once per candidate. The values are those of computing every candidate on its own. A mapping
    through a run-time transform is scored by :func:`transformed_output_error` (its references once)."""

    def __init__(self, stats: MappingStats, x: np.ndarray, refs: Optional[Dict[int, np.ndarray]] = None):
        self.stats, self.x = stats, x
        if stats.transform is not None:
            self.w_pres = pre_transform_weights(stats)
            self.refs = refs if refs is not None else transformed_reference(stats, x, self.w_pres)
            return
        self.cells = [c for c in stats.balance if isinstance(c, QuantLinear)]
        self.weights = {id(c): c.weight.asnumpy().astype(np.float64) for c in self.cells}
        self.refs = {id(c): refs[id(c)] if refs is not None and id(c) in refs
                     else _whole_output(c, x @ self.weights[id(c)].T) for c in self.cells}
        self.ref_squares = {key: (ref ** 2).sum() for key, ref in self.refs.items()}
        self.native = None
        if self.cells and all(native_scorable(c) for c in self.cells):
            native = NativeScorer(x, self.weights, self.refs)
            self.native = native if native.available else None

    def error(self, scale_e: np.ndarray, shift_e: Optional[np.ndarray] = None) -> float:
        if self.stats.transform is not None:
            if shift_e is not None:
                raise NotImplementedError("a channel shift cannot be folded through a run-time transform")
            return transformed_output_error(self.stats, self.x, scale_e, self.refs, self.w_pres)
        if shift_e is None and self.native is not None:
            try:
                return self._native_error(np.ascontiguousarray(scale_e, np.float64))
            except NonFiniteRows:
                pass   # the numpy route below meets the same rows and decides
        return self._numpy_error(scale_e, shift_e)

    def _native_error(self, scale_e: np.ndarray) -> float:
        """:meth:`error` through ``candidate_score.cc`` (same codes; the sum in another order)."""
        num = den = 0.0
        inputs: Dict[tuple, tuple] = {}
        for cell in self.cells:
            key = _input_quantizer(cell, scale_e, None)   # ("per_token",) or ("static", lo, hi, symmetric)
            if key not in inputs:
                inputs[key] = self.native.input_codes(cell, scale_e, key[1:3] if key[0] == "static" else None)
            sums = np.array([self.native.error_sums(cell, scale_e, inputs[key]), self.ref_squares[id(cell)]])
            if _sharded(cell) == "column":
                sums = all_reduce_sum_numpy(sums, cell.tp)
            num += float(sums[0])
            den += float(sums[1])
        return num / max(den, 1e-30)

    def _numpy_error(self, scale_e: np.ndarray, shift_e: Optional[np.ndarray]) -> float:
        """:meth:`error` in numpy: the reference, and the route of every case the kernels do not cover."""
        num = den = 0.0
        xs = self.x / scale_e[None, :]
        if shift_e is not None:
            xs = xs - shift_e[None, :]
        quantized_inputs: Dict[tuple, Tuple[np.ndarray, object]] = {}
        for cell in self.cells:
            ref = self.refs[id(cell)]
            ws = self.weights[id(cell)] * scale_e[None, :]
            key = _input_quantizer(cell, scale_e, shift_e)
            if key is None:   # row-parallel: its collectives run for every layer, as on every rank
                x_codes, x_scale = _quantize_input(cell, xs, scale_e, shift_e)
            else:
                if key not in quantized_inputs:
                    quantized_inputs[key] = _quantize_input(cell, xs, scale_e, shift_e)
                x_codes, x_scale = quantized_inputs[key]
            factored = cell.factored_weight(ws) if x_scale is not None else None
            if factored is not None:   # both sides integer codes: their product exactly, then the scales
                w_codes, w_scale = factored
                y = codes_product(x_codes, w_codes) * x_scale * w_scale[None, :]
                wq = w_codes * w_scale[:, None] if shift_e is not None else None
            else:
                wq = cell.fake_quantized_weight(ws)
                y = (x_codes if x_scale is None else x_codes * x_scale) @ wq.T
            if shift_e is not None:
                y = y + wq @ shift_e
            sums = np.array([((_whole_output(cell, y) - ref) ** 2).sum(), self.ref_squares[id(cell)]])
            if _sharded(cell) == "column":
                sums = all_reduce_sum_numpy(sums, cell.tp)
            num += float(sums[0])
            den += float(sums[1])
        return num / max(den, 1e-30)


def _input_quantizer(cell: QuantLinear, scale_e: np.ndarray, shift_e: Optional[np.ndarray]) -> Optional[tuple]:
    """What :func:`_quantize_input` of ``cell`` depends on besides the rows (equal keys: equal
    quantized rows), or None for a row-parallel layer (not shared)."""
    spec = cell.spec
    if not spec.act:
        return ("float",)
    if _sharded(cell) == "row":
        return None
    if spec.act_dynamic:
        return ("per_token",)
    lo, hi = _static_range(cell, scale_e, shift_e)
    return ("static", lo, hi, bool(spec.act_symmetric))


def _static_range(cell: QuantLinear, scale_e: np.ndarray, shift_e: Optional[np.ndarray]) -> Tuple[float, float]:
    """The per-tensor range of ``cell``'s observed input after the rescale (and shift), this rank's."""
    obs = cell.input_observer
    lo_c, hi_c = obs.minimum / scale_e, obs.maximum / scale_e
    if shift_e is not None:
        lo_c, hi_c = lo_c - shift_e, hi_c - shift_e
    return float(lo_c.min()), float(hi_c.max())


def _sharded(cell) -> Optional[str]:
    """``"column"`` / ``"row"`` for a tensor-parallel layer on more than one rank, else None."""
    return getattr(cell, "shard", None)


def _whole_output(cell, y: np.ndarray) -> np.ndarray:
    """A row-parallel layer's output from its partial (per-rank) output; others unchanged."""
    return all_reduce_sum_numpy(y, cell.tp) if _sharded(cell) == "row" else y


def _quantize_input(cell: QuantLinear, xs: np.ndarray, scale_e: np.ndarray,
                    shift_e: Optional[np.ndarray]) -> Tuple[np.ndarray, object]:
    """``cell``'s quantized input as ``(codes, scale)`` (``codes * scale`` the dequantized rows; the
    scale per row or one number), or ``(xs, None)`` when its activations stay float."""
    spec = cell.spec
    if not spec.act:
        return xs, None
    row = _sharded(cell) == "row"
    if spec.act_dynamic:
        return per_token_codes(xs, all_reduce_max(np.abs(xs).max(axis=1), cell.tp) if row else None)
    lo, hi = _static_range(cell, scale_e, shift_e)
    if row:
        lo, hi = float(all_reduce_min(np.array([lo]), cell.tp)[0]), float(all_reduce_max(np.array([hi]), cell.tp)[0])
    return act_codes(xs, lo, hi, spec.act_symmetric)


class ScaleSearchModule(AlgoModule):
    """Base of the searched smoothing methods: subclasses list the candidates."""

    name = "scale_search"
    needs_layer_inputs = True   # the declared subclasses derive it from their ``method``
    rescales_input_grams = True   # fold_smoothing (m4's shift drops them)

    def __init__(self, mappings: Optional[Sequence[SmoothMapping]] = None):
        self.mappings = mappings
        self.chosen: Dict[str, str] = {}          # "<layer>.<smooth>" -> label of the chosen candidate
        self.errors: Dict[str, Tuple[float, float]] = {}   # -> (identity error, chosen error)

    def candidates(self, ctx: LayerContext, mapping: SmoothMapping, stats: MappingStats) -> List[Candidate]:
        raise NotImplementedError

    def process(self, ctx: LayerContext) -> None:
        if ctx.layer is None:
            return
        for mapping in (self.mappings if self.mappings is not None else ctx.structure.smooth_mappings):
            stats = mapping_statistics(ctx, mapping)
            if stats is None:
                continue
            scorer = CandidateScorer(stats, mapping_input(ctx, mapping, stats))
            scored = []
            for label, scale, shift in self.candidates(ctx, mapping, stats):
                shift_e = None if shift is None else (shift / scale)[stats.expand]
                scored.append((scorer.error(scale[stats.expand], shift_e), label, scale, shift))
            best = min(scored, key=lambda item: item[0])  # first of equals: candidates are ordered
            identity = next(err for err, label, _, _ in scored if label.startswith("identity"))
            key = f"{ctx.name}.{mapping.smooth}"
            self.chosen[key], self.errors[key] = best[1], (identity, best[0])
            self.apply(ctx, mapping, stats, best[2], best[3])

    def apply(self, ctx: LayerContext, mapping: SmoothMapping, stats: MappingStats, scale: np.ndarray,
              shift: Optional[np.ndarray]) -> None:
        fold_smoothing(ctx, mapping, stats, scale)


class SmoothSearchModule(ScaleSearchModule):
    """m2: SmoothQuant with ``alpha`` searched per mapping (``alpha_grid`` values evenly in [0, 1])."""

    method = MethodDeclaration(
        name="smooth_search", alias="m2", role=ANTI_OUTLIER, schemes=(W8A8,), needs=(ACTIVATION_RANGES, INPUT_ROWS),
        algo_args=("alpha_grid", "search_rows"), tp=True, tp_note=TP_SMOOTHING)

    @classmethod
    def from_config(cls, config=None) -> "SmoothSearchModule":
        return cls(alpha_grid=int(config_arg(config, "alpha_grid")))

    def __init__(self, alpha_grid: int = 11, mappings: Optional[Sequence[SmoothMapping]] = None):
        super().__init__(mappings)
        self.alphas = np.linspace(0.0, 1.0, alpha_grid)

    def __repr__(self) -> str:
        return f"SmoothSearchModule(alphas={len(self.alphas)})"

    def candidates(self, ctx, mapping, stats):
        out = [("identity", np.ones_like(stats.act), None)]
        out += [(f"alpha={a:.2f}", smoothing_scale(stats.act, stats.weight_max, float(a)), None) for a in self.alphas]
        return out


class FlexSmoothModule(ScaleSearchModule):
    """m6: ``s = act^alpha / weight^beta`` with alpha and beta searched independently.

    SmoothQuant ties ``beta = 1 - alpha``; freeing beta sets the balance between activation and
    weight ranges separately from the migration strength (``alpha_grid`` x ``beta_grid`` values).
    """

    method = MethodDeclaration(
        name="flex_smooth", alias="m6", role=ANTI_OUTLIER, schemes=(W8A8,), needs=(ACTIVATION_RANGES, INPUT_ROWS),
        algo_args=("alpha_grid", "beta_grid", "search_rows"), tp=True, tp_note=TP_SMOOTHING)

    @classmethod
    def from_config(cls, config=None) -> "FlexSmoothModule":
        return cls(alpha_grid=int(config_arg(config, "alpha_grid")), beta_grid=int(config_arg(config, "beta_grid")))

    def __init__(self, alpha_grid: int = 11, beta_grid: int = 6, mappings: Optional[Sequence[SmoothMapping]] = None):
        super().__init__(mappings)
        self.alphas = np.linspace(0.0, 1.0, alpha_grid)
        self.betas = np.linspace(0.0, 1.0, beta_grid)

    def __repr__(self) -> str:
        return f"FlexSmoothModule(alphas={len(self.alphas)}, betas={len(self.betas)})"

    def candidates(self, ctx, mapping, stats):
        out = [("identity", np.ones_like(stats.act), None)]
        out += [(f"alpha={a:.2f},beta={b:.2f}", smoothing_scale(stats.act, stats.weight_max, float(a), float(b)), None)
                for a in self.alphas for b in self.betas]
        return out


class OutlierSuppressionPlusModule(ScaleSearchModule):
    """m4: channel shift to symmetric ranges, then a SmoothQuant scale on the half-ranges (alpha searched)."""

    method = MethodDeclaration(
        name="os_plus", alias="m4", role=ANTI_OUTLIER, schemes=(W8A8,), needs=(ACTIVATION_RANGES, INPUT_ROWS),
        algo_args=("alpha_grid", "search_rows"), tp=False,
        tp_note="its shift is computed from one shard's channel ranges")

    @classmethod
    def from_config(cls, config=None) -> "OutlierSuppressionPlusModule":
        return cls(alpha_grid=int(config_arg(config, "alpha_grid")))

    def __init__(self, alpha_grid: int = 11, mappings: Optional[Sequence[SmoothMapping]] = None):
        super().__init__(mappings)
        self.alphas = np.linspace(0.0, 1.0, alpha_grid)

    def __repr__(self) -> str:
        return f"OutlierSuppressionPlusModule(alphas={len(self.alphas)})"

    @staticmethod
    def channel_shift(ctx: LayerContext, mapping: SmoothMapping, stats: MappingStats) -> Tuple[np.ndarray, np.ndarray]:
        """``(shift, half_range)`` per smooth channel from the balance input's per-channel min/max."""
        obs = next(c for c in stats.balance if isinstance(c, QuantLinear) and c.spec.act).input_observer
        lo, hi = obs.minimum.astype(np.float64), obs.maximum.astype(np.float64)
        if mapping.kv_grouped:
            heads, kv_heads, head_dim = ctx.structure.num_heads(ctx.network)
            group = heads // kv_heads
            lo = lo.reshape(kv_heads, group, head_dim).min(axis=1).reshape(-1)
            hi = hi.reshape(kv_heads, group, head_dim).max(axis=1).reshape(-1)
        return (hi + lo) / 2.0, (hi - lo) / 2.0

    def candidates(self, ctx, mapping, stats):
        refuse_transform(mapping, self.method.label)
        shift, half = self.channel_shift(ctx, mapping, stats)
        out = [("identity+shift", np.ones_like(stats.act), shift)]
        out += [(f"alpha={a:.2f}+shift", smoothing_scale(half, stats.weight_max, float(a)), shift) for a in self.alphas]
        return out

    def apply(self, ctx, mapping, stats, scale, shift):
        fold_smoothing(ctx, mapping, stats, scale)
        drop_input_grams(ctx, mapping.balance)   # the quantized input is shifted: not a rescale
        shift_e = ((shift / scale)[stats.expand]).astype(np.float32)
        for cell in stats.balance:
            if isinstance(cell, QuantLinear) and cell.spec.act:
                cell.input_shift_value = shift_e
                cell.input_observer.shift_channels(shift_e)

    def prepare_deploy(self, ctx: LayerContext) -> None:
        """Every balance layer with quantized activations carries ``input_shift``/``shift_bias``."""
        if ctx.layer is None:
            return
        for mapping in (self.mappings if self.mappings is not None else ctx.structure.smooth_mappings):
            for rel in mapping.balance:
                cell = ctx.quant_cells.get(rel)
                if isinstance(cell, QuantLinear) and cell.spec.act:
                    cell.has_input_shift = True
