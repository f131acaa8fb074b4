"""The Smooth module (SmoothQuant): per-input-channel scales that move activation outliers into weights.

For each declared mapping ``smooth -> balance``, ``s_j = max|X_j|^alpha / max|W_:,j|^(1-alpha)``
(X the balance layers' shared input, W all balance weights). Folds, exact in float:

* RMSNorm ``smooth`` (attention_norm -> wq/wk/wv, ffn_norm -> w1/w3): norm weight / s;
* Linear ``smooth`` (w3 -> w2; wv -> wo): rows (and bias) of the smooth layer / s. Under GQA,
  channels of wo's input that read the same KV head share one scale (max over the group).
* a mapping through a run-time transform (w3 -> online Hadamard -> w2 after rotation): the scale
  acts on the channels before the transform (``smooth_transform.py``).

Balance columns are multiplied by s. Observer statistics are rescaled in place, so the Quantize
module sees the smoothed ranges without another calibration pass (histogram observers, which
cannot be rescaled per channel, are observed again by PTQ after the module).

The module-level helpers (``mapping_statistics``, ``smoothing_scale``, ``fold_smoothing``) are
shared by the other outlier-suppression methods (m2, m3, m4, m6), which only choose ``s``
differently.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
from mindspore import Tensor

from golden_ptq.algorithm.modules.base import ACTIVATION_RANGES, AlgoModule, LayerContext, MethodDeclaration, config_arg
from golden_ptq.algorithm.modules.smooth_transform import (check_unsharded, fold_balance_through, pre_transform_stats,
                                                           pre_transform_weight)
from golden_ptq.config.method_names import ANTI_OUTLIER, W8A8
from golden_ptq.networks.layers import Linear, RMSNorm
from golden_ptq.networks.structure import SmoothMapping
from golden_ptq.parallel.context import all_reduce_max
from golden_ptq.quant_cells.kvcache import QuantKVCache
from golden_ptq.quant_cells.linear import QuantLinear

_MIN_SCALE = 1e-5
#: the tensor-parallel layouts every smoothing method (m1, m2, m6) folds as at TP=1
TP_SMOOTHING = ("column-parallel balance layers (wq/wk/wv, w1/w3), row-parallel ones after a column-parallel "
                "smooth cell (w3 -> w2, wv -> wo with KV heads split), and wv -> wo with KV heads replicated")


@dataclass
class MappingStats:
    """What a mapping's scale is computed from; ``act``/``weight_max`` are per *smooth* channel
    (KV channels under GQA); ``expand`` maps them onto the balance layers' input channels."""

    balance: list
    act: np.ndarray
    weight_max: np.ndarray
    expand: np.ndarray
    smooth_cell: object
    transform: object = None            # the mapping's run-time transform cell (``smooth_transform.py``)
    extreme: Optional[np.ndarray] = None   # with a transform: the rows of largest max |u| before it


def mapping_statistics(ctx: LayerContext, mapping: SmoothMapping, needs_act: bool = True) -> Optional[MappingStats]:
    """Statistics of one mapping, or None when no balance layer quantizes what the method targets
    (activations when ``needs_act``, else weights)."""
    balance = [ctx.find(name) for name in mapping.balance]
    targets = [b for b in balance if isinstance(b, QuantLinear) and (b.spec.act if needs_act else b.spec.weight)]
    if not targets:
        return None
    if mapping.transform is not None:
        return _transform_statistics(ctx, mapping, balance, targets)
    observer = targets[0].input_observer
    if not observer.calibrated:
        raise RuntimeError(f"{ctx.name}: smoothing {mapping.smooth} -> {list(mapping.balance)} found no "
                           f"calibration statistics for {mapping.balance[0]}; did the calibration pass run it?")
    act = observer.absmax().astype(np.float64)
    weight_max = np.max([np.abs(b.weight.asnumpy()).max(axis=0) for b in balance], axis=0).astype(np.float64)
    act, weight_max, local = _reduce_over_ranks(ctx, mapping, balance, act, weight_max)
    if mapping.kv_grouped:
        heads, kv_heads, head_dim = ctx.structure.num_heads(ctx.network) if local is None else local[1]
        group = heads // kv_heads
        act = act.reshape(kv_heads, group, head_dim).max(axis=1).reshape(-1)
        weight_max = weight_max.reshape(kv_heads, group, head_dim).max(axis=1).reshape(-1)
        expand = (np.arange(heads)[:, None] // group * head_dim + np.arange(head_dim)[None]).reshape(-1)
        if local is not None:
            expand = expand[local[0]]   # this rank's query-head channels of wo
    else:
        expand = np.arange(act.size)
    return MappingStats(balance, act, weight_max, expand, ctx.find(mapping.smooth))


def _transform_statistics(ctx: LayerContext, mapping: SmoothMapping, balance: list, targets: list) -> MappingStats:
    """Statistics of a mapping through a run-time transform: those of the channels before it."""
    check_unsharded(ctx, balance, mapping)
    transform = ctx.find(mapping.transform)
    seen = pre_transform_stats(ctx, targets[0], transform)
    act = np.maximum(np.abs(seen.minimum), np.abs(seen.maximum)).astype(np.float64)
    weight_max = np.max([np.abs(pre_transform_weight(b, transform)).max(axis=0) for b in balance], axis=0)
    return MappingStats(balance, act, weight_max, np.arange(act.size), ctx.find(mapping.smooth),
                        transform=transform, extreme=seen.extreme)


def _reduce_over_ranks(ctx: LayerContext, mapping: SmoothMapping, balance: list, act: np.ndarray,
                       weight_max: np.ndarray):
    """Tensor parallel: statistics every rank folds identically; ``(act, weight_max, local)``.

    Column-parallel balance layers (wq/wk/wv, w1/w3) read the replicated norm output but hold only
    some output rows: the weight maxima (and, for bit-identical scales, the activation maxima) are
    maxima over the ranks. Row-parallel balance layers (wo, w2) hold whole rows of their input
    channels, so with a column-parallel smooth cell (w3, or wv with KV heads split) their
    statistics are already exact for the shard they fold into. With replicated KV heads every rank
    holds all of wv but only its query heads' columns of wo: the wo statistics are gathered into
    the whole model's channels, every rank computes the TP=1 scales, and ``local`` =
    ``(this rank's channel slice, (heads, kv_heads, head_dim) of the whole model)`` tells
    :func:`mapping_statistics` which of them its wo columns take. ``local`` is None otherwise.
    """
    contexts = [b.tp for b in balance if getattr(b, "shard", None)]
    if not contexts:
        return act, weight_max, None
    tp = contexts[0]
    modes = {getattr(b, "parallel", None) for b in balance}
    if "row" not in modes:
        return all_reduce_max(act, tp), all_reduce_max(weight_max, tp), None
    smooth_mode = getattr(ctx.find(mapping.smooth), "parallel", None)
    if modes == {"row"} and smooth_mode == "column":
        return act, weight_max, None
    layout = getattr(ctx.network, "tp_layout", None)
    if modes == {"row"} and mapping.kv_grouped and smooth_mode is None and layout is not None:
        head_dim = layout.head_dim
        start = layout.first_head * head_dim
        span = slice(start, start + layout.local_heads * head_dim)
        full_act = np.zeros(layout.num_heads * head_dim)
        full_weight = np.zeros(layout.num_heads * head_dim)
        full_act[span], full_weight[span] = act, weight_max   # maxima are >= 0: zero padding is exact
        return (all_reduce_max(full_act, tp), all_reduce_max(full_weight, tp),
                (span, (layout.num_heads, layout.num_kv_heads, head_dim)))
    raise NotImplementedError(f"{ctx.name}: smoothing {mapping.smooth} -> {list(mapping.balance)} under "
                              f"tensor parallel size {tp.size} is supported for column-parallel balance layers, "
                              f"row-parallel ones after a column-parallel '{mapping.smooth}', or wv -> wo with "
                              f"replicated KV heads; got balance modes {sorted(map(str, modes))} and "
                              f"'{mapping.smooth}' mode {smooth_mode}")


def smoothing_scale(act: np.ndarray, weight_max: np.ndarray, alpha: float, beta: Optional[float] = None) -> np.ndarray:
    """``s = act^alpha / weight_max^beta`` (``beta = 1 - alpha`` by default: SmoothQuant), floored."""
    beta = 1.0 - alpha if beta is None else beta
    valid = (act > 0) & (weight_max > 0)
    scale = np.ones_like(act)
    scale[valid] = act[valid] ** alpha / weight_max[valid] ** beta
    return np.maximum(scale, _MIN_SCALE)


def fold_smoothing(ctx: LayerContext, mapping: SmoothMapping, stats: MappingStats, scale: np.ndarray) -> None:
    """Fold ``scale`` (per smooth channel): smooth cell / s, balance columns * s, observers rescaled."""
    _fold_into_smooth(stats.smooth_cell, scale, ctx.name, mapping.smooth, getattr(ctx.structure, "norm_types", ()))
    balance_scale = scale[stats.expand]
    if stats.transform is not None:
        fold_balance_through(stats, balance_scale)
        drop_input_grams(ctx, mapping.balance)   # no longer a per-channel rescale of the recorded input
        return
    rescale_input_grams(ctx, mapping.balance, 1.0 / balance_scale)
    for cell in stats.balance:
        cell.weight.set_data(Tensor.from_numpy(_rescaled(cell.weight.asnumpy(), column_scale=balance_scale)))
        if isinstance(cell, QuantLinear) and cell.input_observer.calibrated:
            cell.input_observer.scale_channels(1.0 / balance_scale)
    if mapping.value_cache:
        cache = ctx.find(mapping.value_cache)
        if isinstance(cache, QuantKVCache) and cache.observers["value"].calibrated:
            cache.observers["value"].scale_channels(1.0 / scale)


def rescale_input_grams(ctx: LayerContext, names, channel_scale: np.ndarray) -> None:
    """Inputs of the Linears ``names`` now have their channels times ``channel_scale``: their recorded
    grams ``sum x^T x`` follow (``D G D``), as exact as the observers' rescale, without a new pass."""
    outer = np.outer(channel_scale, channel_scale)
    for rel in names:
        if rel in ctx.grams:
            gram, rows = ctx.grams[rel]
            ctx.grams[rel] = (gram * outer, rows)


def drop_input_grams(ctx: LayerContext, names) -> None:
    """The recorded grams of ``names`` no longer describe their inputs: GPTQ takes new ones in a pass."""
    for rel in names:
        ctx.grams.pop(rel, None)


_ROW_BLOCK = 1024   # rows rescaled at a time: float64 working set of one block, not of the whole weight


def _rescaled(weight: np.ndarray, column_scale: Optional[np.ndarray] = None,
              row_divisor: Optional[np.ndarray] = None) -> np.ndarray:
    """float32 ``weight * column_scale`` or ``weight / row_divisor[:, None]``, computed in float64 row
    block by row block: the same values as on the whole array, without a float64 copy of it."""
    out = np.empty(weight.shape, np.float32)
    for start in range(0, weight.shape[0], _ROW_BLOCK):
        rows = slice(start, start + _ROW_BLOCK)
        if column_scale is not None:
            out[rows] = weight[rows].astype(np.float64) * column_scale[None, :]
        else:
            out[rows] = weight[rows] / row_divisor[rows, None]
    return out


def _fold_into_smooth(cell, scale: np.ndarray, layer_name: str, relative: str, norm_types=()) -> None:
    """``norm_types``: further RMSNorm classes (with a ``weight`` per channel) the structure declares,
    e.g. MindFormers' ``LlamaRMSNorm``."""
    if isinstance(cell, (RMSNorm,) + tuple(norm_types)):
        cell.weight.set_data(Tensor((cell.weight.asnumpy() / scale).astype(np.float32)))
        return
    if isinstance(cell, (Linear, QuantLinear)):
        if getattr(cell, "quantized", False):
            raise RuntimeError(f"{layer_name}.{relative} is already quantized; Smooth must run before Quantize")
        cell.weight.set_data(Tensor.from_numpy(_rescaled(cell.weight.asnumpy(), row_divisor=scale)))
        if cell.bias is not None:
            cell.bias.set_data(Tensor((cell.bias.asnumpy() / scale).astype(np.float32)))
        return
    raise TypeError(f"{layer_name}.{relative}: cannot fold smoothing scales into {type(cell).__name__}; "
                    f"supported: RMSNorm, Linear")


class SmoothModule(AlgoModule):
    method = MethodDeclaration(
        name="smooth", alias="m1", role=ANTI_OUTLIER, schemes=(W8A8,), needs=(ACTIVATION_RANGES,),
        algo_args=("smooth_alpha",), tp=True, tp_note=TP_SMOOTHING)

    rescales_input_grams = True   # fold_smoothing

    @classmethod
    def from_config(cls, config=None) -> "SmoothModule":
        return cls(alpha=float(config_arg(config, "smooth_alpha")))

    def __init__(self, alpha: float = 0.5, mappings: Optional[Sequence[SmoothMapping]] = None):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"SmoothModule: alpha must be in [0, 1], got {alpha}")
        self.alpha = alpha
        self.mappings = mappings
        self.applied: List[str] = []

    def __repr__(self) -> str:
        return f"SmoothModule(alpha={self.alpha})"

    def process(self, ctx: LayerContext) -> None:
        if ctx.layer is None:
            return
        mappings = self.mappings if self.mappings is not None else ctx.structure.smooth_mappings
        for mapping in mappings:
            self._apply(ctx, mapping)

    def _apply(self, ctx: LayerContext, mapping: SmoothMapping) -> None:
        stats = mapping_statistics(ctx, mapping)
        if stats is None:
            return  # no balance layer quantizes its activations: nothing to gain
        fold_smoothing(ctx, mapping, stats, smoothing_scale(stats.act, stats.weight_max, self.alpha))
        self.applied.append(f"{ctx.name}.{mapping.smooth}")
