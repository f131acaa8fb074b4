"""Tensor-parallel rank and size, and the collectives PTQ needs, on top of ``mindspore.communication``.

The size comes from the communication group: ``get_group_size()`` once ``mindspore.communication.init()``
has run (``msrun`` sets up the cluster), else 1. At size 1 every collective returns its input, so
a single process runs exactly the same code path without communication.

MindSpore's CPU ``AllReduce`` supports only SUM on float tensors; max/min are computed from an
all-gather, which is itself a SUM of zero-padded per-rank buffers (adding zeros is exact).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from mindspore import Tensor, ops


@dataclass(frozen=True)
class TPContext:
    """``size`` ranks in the tensor-parallel group; this process is ``rank``."""

    size: int = 1
    rank: int = 0

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise ValueError(f"TPContext: rank {self.rank} / size {self.size} is invalid; need size >= 1 and "
                             f"0 <= rank < size")

    @property
    def parallel(self) -> bool:
        return self.size > 1


def shard_mode(parallel: Optional[str], ctx: TPContext) -> Optional[str]:
    """``"column"`` / ``"row"`` for a layer split that way over more than one rank, else None: the
    one answer to "is this layer sharded" (``Linear.shard``, ``QuantLinear.shard``)."""
    return parallel if parallel and ctx.parallel else None


def communication_initialized() -> bool:
    """Whether ``mindspore.communication.init()`` has run in this process."""
    from mindspore.communication import GlobalComm
    return bool(GlobalComm.INITED)


def current_context() -> TPContext:
    """The tensor-parallel context of this process: the whole communication group, or size 1."""
    if not communication_initialized():
        return TPContext()
    from mindspore.communication import get_group_size, get_rank
    return TPContext(size=int(get_group_size()), rank=int(get_rank()))


def init_from_launcher() -> TPContext:
    """Call ``mindspore.communication.init()`` when launched by msrun (``MS_WORKER_NUM`` set); the context."""
    import os
    if not communication_initialized() and os.environ.get("MS_WORKER_NUM") and os.environ.get("MS_ROLE"):
        from mindspore.communication import init
        init()
    return current_context()


_ALL_REDUCE = None


def all_reduce(x: Tensor, ctx: TPContext) -> Tensor:
    """SUM of ``x`` over the group (float tensors); ``x`` itself at size 1."""
    global _ALL_REDUCE
    if not ctx.parallel:
        return x
    if _ALL_REDUCE is None:
        _ALL_REDUCE = ops.AllReduce()
    return _ALL_REDUCE(x)


def all_gather_numpy(x: np.ndarray, ctx: TPContext) -> np.ndarray:
    """``[size, *x.shape]``: every rank's ``x`` (float64 arrays travel as float32 pairs, exactly)."""
    x = np.asarray(x)
    if not ctx.parallel:
        return x[None]
    if x.dtype == np.float32:
        buffer = np.zeros((ctx.size,) + x.shape, np.float32)
        buffer[ctx.rank] = x
        return all_reduce(Tensor(buffer), ctx).asnumpy()
    if x.dtype == np.float64:  # three float32 parts (72 mantissa bits) carry a float64 exactly
        parts, rest = [], x
        for _ in range(3):
            parts.append(rest.astype(np.float32))
            rest = rest - parts[-1].astype(np.float64)
        gathered = all_gather_numpy(np.stack(parts), ctx).astype(np.float64)
        return gathered[:, 0] + gathered[:, 1] + gathered[:, 2]
    raise TypeError(f"all_gather_numpy: dtype {x.dtype} is not supported; allowed: float32, float64")


def all_reduce_max(x: np.ndarray, ctx: TPContext) -> np.ndarray:
    """Elementwise maximum of ``x`` over the group."""
    return all_gather_numpy(x, ctx).max(axis=0) if ctx.parallel else np.asarray(x)


def all_reduce_min(x: np.ndarray, ctx: TPContext) -> np.ndarray:
    """Elementwise minimum of ``x`` over the group."""
    return all_gather_numpy(x, ctx).min(axis=0) if ctx.parallel else np.asarray(x)


def all_concat_numpy(x: np.ndarray, ctx: TPContext) -> np.ndarray:
    """Every rank's 1-D ``x`` concatenated in rank order (lengths may differ between ranks), float64."""
    x = np.asarray(x, np.float64).reshape(-1)
    if not ctx.parallel:
        return x
    sizes = all_gather_numpy(np.array([x.size], np.float32), ctx)[:, 0].astype(np.int64)
    start = int(sizes[: ctx.rank].sum())
    buffer = np.zeros(int(sizes.sum()), np.float64)
    buffer[start:start + x.size] = x
    return all_gather_numpy(buffer, ctx).sum(axis=0)   # one rank's values plus zeros: exact


def all_reduce_sum_numpy(x: np.ndarray, ctx: TPContext) -> np.ndarray:
    """SUM of float64 ``x`` over the group, added in rank order (the same bits on every rank)."""
    x = np.asarray(x, np.float64)
    return all_gather_numpy(x, ctx).sum(axis=0) if ctx.parallel else x


class ChannelShards:
    """Reductions for a statistic whose channels are split over the ranks of ``ctx`` (the input of
    a row-parallel layer): what an observer needs to see the whole tensor. Every rank must call
    the same methods in the same order (they are collectives)."""

    def __init__(self, ctx: TPContext):
        self.ctx = ctx

    def min(self, x: np.ndarray) -> np.ndarray:
        return all_reduce_min(np.asarray(x, np.float64), self.ctx)

    def max(self, x: np.ndarray) -> np.ndarray:
        return all_reduce_max(np.asarray(x, np.float64), self.ctx)

    def sum(self, x: np.ndarray) -> np.ndarray:
        return all_reduce_sum_numpy(x, self.ctx)

    def concat(self, x: np.ndarray) -> np.ndarray:
        return all_concat_numpy(x, self.ctx)


def barrier(ctx: TPContext) -> None:
    """Wait until every rank got here."""
    if ctx.parallel:
        all_reduce(Tensor(np.zeros(1, np.float32)), ctx).asnumpy()


def resolve(ctx: Optional[TPContext]) -> TPContext:
    """``ctx``, or the process's context when None."""
    return current_context() if ctx is None else ctx
