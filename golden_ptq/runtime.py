"""MindSpore runtime settings that make PyNative inference fast on small CPUs.

Measured on the 2-core development machine: with PyNative's asynchronous launch pipeline the
worker threads fight the compute threads, and a [1,576] add costs ~0.8 ms; with synchronous
launch it costs ~0.05 ms, and a decode step of SmolLM2 gets several times faster.
"""
from __future__ import annotations

import os

import mindspore as ms

_CONFIGURED = False


def configure_cpu_runtime() -> None:
    """Apply the settings once per process (set ``GOLDEN_PTQ_KEEP_CONTEXT=1`` to leave yours alone)."""
    global _CONFIGURED
    if _CONFIGURED or os.environ.get("GOLDEN_PTQ_KEEP_CONTEXT") == "1":
        return
    ms.runtime.launch_blocking()
    _CONFIGURED = True
