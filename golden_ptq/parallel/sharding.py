"""Which slice of every parameter a tensor-parallel rank holds, and splitting / merging whole state dicts.

Megatron-style layout of the Llama block (parameter NAMES are the same at every TP size):

* column-parallel ``attention.wq``, ``feed_forward.w1``, ``feed_forward.w3``: output rows split
  into ``size`` contiguous blocks. Query heads go to ranks as ``numpy.array_split`` deals them:
  evenly when ``size`` divides ``num_heads``, else the first ranks get one head more (SmolLM2's 9
  heads on 2 ranks: 5 + 4), so ``wq`` rows and ``wo`` columns split at head boundaries;
* ``attention.wk``, ``attention.wv`` and the KV cache scales: split the same way when
  ``num_kv_heads % size == 0`` (``kv_split``); otherwise replicated on every rank (each rank keeps
  all KV heads and reads the ones its query heads use);
* row-parallel ``attention.wo``, ``feed_forward.w2``: input columns split; outputs are summed
  across ranks (AllReduce);
* everything else (embedding, norms, ``lm_head``) replicated.

Quantized parameters follow their layer: per-output-channel tensors split with the rows of a
column-parallel layer and are replicated for a row-parallel one; per-group scales of a row-parallel
layer split with its columns. ``quant_bias`` (and ``shift_bias``) of a row-parallel layer is a
*partial sum* over the rank's input columns: merging adds the ranks' values, splitting recomputes
it from the rank's int8 weight.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from golden_ptq.parallel.context import TPContext
from golden_ptq.quant_math.layouts import PARTIAL as PARTIAL_SUM, REPLICATE as REPLICATED, SPLIT0, SPLIT1
from golden_ptq.quant_math.layouts import parallel_rule

COLUMN_CELLS = ("attention.wq", "feed_forward.w1", "feed_forward.w3")
KV_CELLS = ("attention.wk", "attention.wv")
ROW_CELLS = ("attention.wo", "feed_forward.w2")
KV_CACHE_CELL = "attention.kv_cache"
HEAD_CELLS = ("attention.wq", "attention.wo")   # split at query-head boundaries

Rule = Tuple[str, int]   # ("split", dim) | ("replicate", -1) | ("partial", -1)
REPLICATE: Rule = ("replicate", -1)
PARTIAL: Rule = ("partial", -1)


@dataclass(frozen=True)
class TPLayout:
    """Head counts of one rank for a model of ``num_heads`` / ``num_kv_heads`` at ``ctx.size``."""

    ctx: TPContext
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def for_config(cls, config, ctx: TPContext) -> "TPLayout":
        """Check that ``config`` splits over ``ctx.size`` ranks; errors name the value and what would fit."""
        size, value = ctx.size, config.intermediate_size
        if value % size:
            fits = [d for d in range(1, 17) if value % d == 0]
            raise ValueError(f"tensor parallel size {size}: LlamaConfig.intermediate_size ({value}) is not divisible "
                             f"by it; TP sizes up to 16 that fit: {fits}")
        if config.num_heads < size:
            raise ValueError(f"tensor parallel size {size}: more ranks than LlamaConfig.num_heads "
                             f"({config.num_heads}); use at most {config.num_heads}")
        return cls(ctx, config.num_heads, config.num_kv_heads, config.head_dim)

    def with_rank(self, ctx: TPContext) -> "TPLayout":
        return TPLayout(ctx, self.num_heads, self.num_kv_heads, self.head_dim)

    @property
    def kv_split(self) -> bool:
        return self.num_kv_heads % self.ctx.size == 0

    def head_counts(self) -> List[int]:
        """Query heads of every rank (``array_split`` order)."""
        return [len(part) for part in np.array_split(np.arange(self.num_heads), self.ctx.size)]

    @property
    def first_head(self) -> int:
        return int(sum(self.head_counts()[: self.ctx.rank]))

    @property
    def local_heads(self) -> int:
        return self.head_counts()[self.ctx.rank]

    @property
    def local_kv_heads(self) -> int:
        """KV heads this rank stores: its share, or all of them when replicated."""
        return self.num_kv_heads // self.ctx.size if self.kv_split else self.num_kv_heads

    def kv_index(self) -> Optional[np.ndarray]:
        """For replicated KV heads: the KV head each local query head reads; None when KV is split."""
        if self.kv_split:
            return None
        group = self.num_heads // self.num_kv_heads
        first = self.first_head
        return (np.arange(first, first + self.local_heads) // group).astype(np.int32)

    def split_sizes(self, name: str, length: int) -> List[int]:
        """Per-rank lengths of a split dimension of ``length`` of parameter ``name``."""
        cell, _ = _cell_and_local(name)
        if _matches(cell, HEAD_CELLS) and length == self.num_heads * self.head_dim:
            return [count * self.head_dim for count in self.head_counts()]
        if length % self.ctx.size:
            raise ValueError(f"tensor parallel: parameter '{name}' dimension ({length}) is not divisible by TP size "
                             f"{self.ctx.size}")
        return [length // self.ctx.size] * self.ctx.size


def _cell_and_local(name: str) -> Tuple[str, str]:
    cell, _, local = name.rpartition(".")
    return cell, local


def _matches(cell: str, suffixes: Tuple[str, ...]) -> bool:
    return any(cell == s or cell.endswith("." + s) for s in suffixes)


def linear_parallel_mode(cell_name: str, kv_split: bool) -> Optional[str]:
    """``"column"``, ``"row"`` or None (replicated) for a Linear at ``cell_name``."""
    if _matches(cell_name, COLUMN_CELLS) or (kv_split and _matches(cell_name, KV_CELLS)):
        return "column"
    if _matches(cell_name, ROW_CELLS):
        return "row"
    return None


def rule_for(name: str, ndim: int, kv_split: bool) -> Rule:
    """How parameter ``name`` (``ndim`` dimensions) is distributed over the ranks."""
    cell, local = _cell_and_local(name)
    if _matches(cell, (KV_CACHE_CELL,)):
        return ("split", 0) if kv_split else REPLICATE
    mode = linear_parallel_mode(cell, kv_split)
    if mode is None:
        return REPLICATE
    try:
        rule = parallel_rule(local, mode, ndim)   # the quantized Linear's layout table says
    except KeyError as err:
        raise KeyError(str(err.args[0]).replace(f"'{local}'", f"'{name}'", 1)) from None
    return {SPLIT0: ("split", 0), SPLIT1: ("split", 1), REPLICATED: REPLICATE, PARTIAL_SUM: PARTIAL}[rule]


def _slice(array: np.ndarray, dim: int, layout: TPLayout, name: str) -> np.ndarray:
    sizes = layout.split_sizes(name, array.shape[dim])
    start = sum(sizes[: layout.ctx.rank])
    index = [slice(None)] * array.ndim
    index[dim] = slice(start, start + sizes[layout.ctx.rank])
    return array[tuple(index)]


def shard_array(name: str, array: np.ndarray, layout: TPLayout) -> np.ndarray:
    """This rank's slice of the full ``array`` of ``name`` (partial sums need :func:`split_state`)."""
    kind, dim = rule_for(name, array.ndim, layout.kv_split)
    if kind == "replicate" or not layout.ctx.parallel:
        return array
    if kind == "split":
        return _slice(array, dim, layout, name)
    raise ValueError(f"tensor parallel: '{name}' is a per-rank partial sum; split whole checkpoints with split_state")


def full_shape(name: str, local_shape: Tuple[int, ...], layout: TPLayout) -> Tuple[int, ...]:
    """The TP=1 shape of a parameter whose shard on this rank has ``local_shape``."""
    kind, dim = rule_for(name, len(local_shape), layout.kv_split)
    shape = list(local_shape)
    if kind == "split":
        cell, _ = _cell_and_local(name)
        head_based = _matches(cell, HEAD_CELLS) and shape[dim] == layout.local_heads * layout.head_dim
        shape[dim] = layout.num_heads * layout.head_dim if head_based else shape[dim] * layout.ctx.size
    return tuple(shape)


def split_state(full: Dict[str, np.ndarray], layout: TPLayout) -> Dict[str, np.ndarray]:
    """Rank ``layout.ctx.rank``'s state dict from a full (TP=1) one, partial sums recomputed from its shard."""
    return {name: local_state_array(name, full.__getitem__, layout) for name in full}


def local_state_array(name: str, get: Callable[[str], np.ndarray], layout: TPLayout) -> np.ndarray:
    """Rank ``layout.ctx.rank``'s part of parameter ``name`` of a full (TP=1) checkpoint whose
    tensors ``get(name)`` returns: its slice, or a partial sum recomputed from this rank's shard
    (which reads the layer's weight and input zero point too)."""
    array = get(name)
    kind, _ = rule_for(name, array.ndim, layout.kv_split)
    if kind != "partial":
        return np.ascontiguousarray(shard_array(name, array, layout))
    cell, local = _cell_and_local(name)
    if not layout.ctx.parallel:
        return array
    if local != "quant_bias":
        raise NotImplementedError(f"tensor parallel: splitting '{name}' (input-shift outlier suppression) "
                                  f"is not supported; only m1 SmoothQuant checkpoints split")
    weight = _slice(get(f"{cell}.weight"), 1, layout, f"{cell}.weight").astype(np.int64)
    zero_point = np.asarray(get(f"{cell}.input_zp")).astype(np.int64).reshape(-1)[0]
    return (-zero_point * weight.sum(axis=1)).astype(array.dtype)


def merge_states(states: List[Dict[str, np.ndarray]], kv_split: bool) -> Dict[str, np.ndarray]:
    """The full (TP=1) state dict from every rank's, in rank order.

    Replicated parameters must be identical on every rank (else an error names the parameter and
    rank); split ones are concatenated; partial sums are added (in int64 for integers).
    """
    if not states:
        raise ValueError("merge_states: no rank states given")
    names = list(states[0])
    for rank, state in enumerate(states[1:], 1):
        if set(state) != set(names):
            diff = sorted(set(state) ^ set(names))
            raise ValueError(f"merge_states: rank {rank} holds other parameters than rank 0 (first: '{diff[0]}')")
    merged: Dict[str, np.ndarray] = {}
    for name in names:
        arrays = [np.asarray(state[name]) for state in states]
        kind, dim = rule_for(name, arrays[0].ndim, kv_split)
        if kind == "split":
            merged[name] = np.concatenate(arrays, axis=dim)
        elif kind == "partial":
            acc = sum(a.astype(np.int64 if np.issubdtype(a.dtype, np.integer) else np.float64) for a in arrays)
            merged[name] = acc.astype(arrays[0].dtype)
        else:
            for rank, array in enumerate(arrays[1:], 1):
                if array.shape != arrays[0].shape or not np.array_equal(array, arrays[0]):
                    raise ValueError(f"merge_states: replicated parameter '{name}' differs between rank 0 and "
                                     f"rank {rank}; the ranks were not calibrated consistently")
            merged[name] = arrays[0]
    return merged
