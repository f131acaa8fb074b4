"""Tensor parallelism: process group context (:mod:`.context`) and per-parameter split rules (:mod:`.sharding`)."""
from golden_ptq.parallel.context import (ChannelShards, TPContext, all_concat_numpy, all_gather_numpy, all_reduce,
                                         all_reduce_max, all_reduce_min, all_reduce_sum_numpy, barrier,
                                         current_context, init_from_launcher)

__all__ = ["ChannelShards", "TPContext", "all_concat_numpy", "all_gather_numpy", "all_reduce", "all_reduce_max",
           "all_reduce_min", "all_reduce_sum_numpy", "barrier", "current_context", "init_from_launcher"]
