"""Tensor parallelism: process group context (:mod:`.context`) and per-parameter split rules (:mod:`.sharding`)."""
from golden_ptq.parallel.context import (TPContext, all_gather_numpy, all_reduce, all_reduce_max, all_reduce_min,
                                         barrier, current_context, init_from_launcher)

__all__ = ["TPContext", "all_gather_numpy", "all_reduce", "all_reduce_max", "all_reduce_min", "barrier",
           "current_context", "init_from_launcher"]
