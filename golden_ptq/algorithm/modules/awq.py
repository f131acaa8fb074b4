"""m3: AWQ (activation-aware weight quantization) for weight-only W8A16 / W4A16.

Scale search, per declared mapping: with ``m_j = mean |x_j|`` over the recorded calibration rows
of the balance layers' input, candidates ``s = m^r`` (normalised by ``sqrt(max s * min s)``) for
``r`` in ``awq_grid`` values evenly in ``[0, 1)`` (``r = 0`` is no scaling) are scored by

    err(s) = sum_b || X W_b^T - (X / s) Qw(W_b s)^T ||^2 / sum_b || X W_b^T ||^2

and the best is folded exactly as SmoothQuant folds (``smooth.py``): RMSNorm weight / s for
attention_norm -> wq/wk/wv and ffn_norm -> w1/w3, rows of wv / s for wv -> wo (one scale per KV
channel under GQA), rows of w3 / s for w3 -> w2; balance columns * s.

Clip search, per weight-quantized balance layer after the fold: for each output channel (or each
(channel, group) with per-group weights) the ratio ``c`` in ``awq_clip_grid`` values in
``[0.5, 1]`` of least ``|| X_g (w_g - Qw_c(w_g))^T ||^2`` is kept as the cell's ``weight_clip``;
``QuantLinear.quantize`` shrinks that channel's/group's range by ``c`` before rounding. Nothing
float changes for the clip (a rolled-back layer keeps its unclipped weight); the deployed form is
the ordinary W8A16/W4A16 one.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from golden_ptq.algorithm.modules.base import INPUT_ROWS, AlgoModule, LayerContext, MethodDeclaration, config_arg
from golden_ptq.algorithm.modules.smooth import MappingStats, fold_smoothing, mapping_statistics
from golden_ptq.algorithm.modules.smooth_search import CandidateScorer, mapping_input
from golden_ptq.algorithm.modules.smooth_transform import refuse_transform
from golden_ptq.config.method_names import ANTI_OUTLIER, WEIGHT_ONLY
from golden_ptq.networks.structure import SmoothMapping
from golden_ptq.quant_cells.linear import QuantLinear
from golden_ptq.quant_math.functions import fake_quantize_weight, group_count


class AWQModule(AlgoModule):
    method = MethodDeclaration(
        name="awq", alias="m3", role=ANTI_OUTLIER, schemes=(WEIGHT_ONLY,), needs=(INPUT_ROWS,),
        algo_args=("awq_grid", "awq_clip_grid", "search_rows"), tp=False,
        tp_note="its scale normalisation and clip search see one shard")

    rescales_input_grams = True   # fold_smoothing; the clip ratios change no float weight

    @classmethod
    def from_config(cls, config=None) -> "AWQModule":
        return cls(scale_grid=int(config_arg(config, "awq_grid")), clip_grid=int(config_arg(config, "awq_clip_grid")))

    def __init__(self, scale_grid: int = 20, clip_grid: int = 10, clip: bool = True,
                 mappings: Optional[Sequence[SmoothMapping]] = None):
        self.ratios = np.arange(scale_grid) / scale_grid
        self.clip_ratios = np.linspace(1.0, 0.5, clip_grid)
        self.clip = clip
        self.mappings = mappings
        self.chosen: Dict[str, float] = {}                    # "<layer>.<smooth>" -> r
        self.errors: Dict[str, tuple] = {}                    # -> (error at r=0, chosen error)
        self.clipped: Dict[str, float] = {}                   # "<layer>.<balance>" -> mean clip ratio

    def __repr__(self) -> str:
        return f"AWQModule(scale_grid={len(self.ratios)}, clip_grid={len(self.clip_ratios)}, clip={self.clip})"

    def process(self, ctx: LayerContext) -> None:
        if ctx.layer is None:
            return
        for mapping in (self.mappings if self.mappings is not None else ctx.structure.smooth_mappings):
            refuse_transform(mapping, self.method.label)
            stats = mapping_statistics(ctx, mapping, needs_act=False)
            if stats is None:
                continue
            x = mapping_input(ctx, mapping, stats)
            scale = self._search_scale(ctx, mapping, stats, x)
            fold_smoothing(ctx, mapping, stats, scale)
            if self.clip:
                xs = x / scale[stats.expand][None, :]
                for rel, cell in zip(mapping.balance, stats.balance):
                    if isinstance(cell, QuantLinear) and cell.spec.weight:
                        self._search_clip(cell, xs)
                        self.clipped[f"{ctx.name}.{rel}"] = float(np.mean(cell.weight_clip))

    def _search_scale(self, ctx: LayerContext, mapping: SmoothMapping, stats: MappingStats, x: np.ndarray) -> np.ndarray:
        mean = np.abs(x).mean(axis=0)
        if mapping.kv_grouped:
            heads, kv_heads, head_dim = ctx.structure.num_heads(ctx.network)
            mean = mean.reshape(kv_heads, heads // kv_heads, head_dim).mean(axis=1).reshape(-1)
        mean = np.maximum(mean, 1e-8)
        scorer = CandidateScorer(stats, x)
        best = None
        for r in self.ratios:
            scale = mean ** r
            scale = scale / np.sqrt(scale.max() * scale.min())
            err = scorer.error(scale[stats.expand])
            if best is None or err < best[0]:
                best = (err, float(r), scale)
            if r == 0:
                baseline = err
        key = f"{ctx.name}.{mapping.smooth}"
        self.chosen[key], self.errors[key] = best[1], (baseline, best[0])
        return best[2]

    def _search_clip(self, cell: QuantLinear, x: np.ndarray) -> None:
        spec = cell.spec
        w = cell.weight.asnumpy().astype(np.float64)
        out_features, in_features = w.shape
        group = spec.group_size or in_features
        groups = group_count(in_features, group)   # the last group may be ragged
        best_err = np.full((out_features, groups), np.inf)
        best_ratio = np.ones((out_features, groups))
        for c in self.clip_ratios:
            ratio = np.full((out_features, groups), c)
            diff = w - fake_quantize_weight(w, spec.group_size, spec.weight_symmetric, cell.weight_bits,
                                            ratio if spec.group_size else ratio[:, 0])
            err = np.stack([((x[:, g * group:(g + 1) * group] @ diff[:, g * group:(g + 1) * group].T) ** 2).sum(axis=0)
                            for g in range(groups)], axis=1)
            better = err < best_err
            best_err[better], best_ratio[better] = err[better], c
        cell.weight_clip = best_ratio if spec.group_size else best_ratio[:, 0]
