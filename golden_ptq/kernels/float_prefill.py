"""Build, load and wrap ``float_prefill.cc`` (RMSNorm, rotary embedding, causal attention, SwiGLU, the
residual additions, the rotation's online block Walsh-Hadamard transform) as MindSpore ``ops.Custom``
operators for the eager full forward / prefill, and for compiled graphs the cells bind before compiling.

Built and cached like the int8 kernels (:mod:`golden_ptq.kernels.build`) and switched off with
them (``set_native_kernels(False)``), or alone with :func:`set_float_prefill_kernels`. When they are
off or cannot be built, callers keep the MindSpore-op route. On x86-64 the vector code runs with
AVX-512, AVX2 + FMA or SSE2, whichever the CPU has; other machines use the MindSpore ops.
"""
from __future__ import annotations

import ctypes
import logging
import subprocess
import threading
from typing import Dict, Optional

from mindspore import ops

from golden_ptq.kernels import build, native

logger = logging.getLogger(__name__)

MAX_HEAD_DIM = 256   # the attention kernel's limit (head_dim must also be a multiple of 16)


class _State:
    def __init__(self):
        self.lock = threading.Lock()
        self.tried = False
        self.enabled = True
        self.path: Optional[str] = None
        self.lib: Optional[ctypes.CDLL] = None
        self.reason = ""
        self.ops: Dict[str, ops.Custom] = {}
        self.heads_ops: Dict[int, ops.Custom] = {}   # GpToHeads per head_dim


_STATE = _State()


# SwiGLU and RMSNorm are not MindSpore's bits (its SiLU's exp is another approximation, ~5e-6 relative
# apart; its ReduceMean sums in another order): SmolLM2's logits move by ~5e-6 of the largest with
# each. Compiled graphs bind rms_norm, swiglu, rope and fwht before compiling (bind_kernel), so eager
# and compiled calls run the same operators. Every output has its first input's shape and is float32.
_ENTRY_POINTS = {name: (symbol, native._same_shape, native._float32)
                 for name, symbol in (("rms_norm", "GpRmsNorm"), ("rope", "GpRope"),
                                      ("causal_attention", "GpCausalAttention"), ("fwht", "GpFwht"),
                                      ("swiglu", "GpSwiglu"), ("add", "GpAdd"))}


def _load() -> None:
    with _STATE.lock:
        if _STATE.tried:
            return
        _STATE.tried = True
        try:
            path = build.library_path("float_prefill")
            _STATE.lib, _STATE.path = ctypes.CDLL(path), path
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            _STATE.reason = f"float prefill kernels unavailable: {error}"
            logger.warning("golden_ptq: %s; using MindSpore ops", _STATE.reason)


def float_prefill_ops() -> Optional[Dict[str, ops.Custom]]:
    """``{name: Custom op}`` (``rms_norm``, ``rope``, ``causal_attention``, ``fwht``, ``swiglu``,
    ``add``), or None: use MindSpore ops."""
    if not (_STATE.enabled and native.native_enabled()):
        return None
    if not _STATE.tried:
        _load()
    if _STATE.lib is None:
        return None
    if not _STATE.ops:
        _STATE.ops = native.custom_ops(_STATE.path, _ENTRY_POINTS)
    return _STATE.ops


def to_heads_op(head_dim: int) -> Optional[ops.Custom]:
    """``op(x [B, T, Hin*head_dim], heads int32 [H]) -> [B, H, T, head_dim]`` (head ``i`` of the result is
    head ``heads[i]`` of ``x``) in one native copy, or None where these kernels do not run. One operator
    per ``head_dim``: its output shape is not a function of the operands' shapes alone."""
    if float_prefill_ops() is None:
        return None
    op = _STATE.heads_ops.get(head_dim)
    if op is None:
        op = ops.Custom(f"{_STATE.path}:GpToHeads", out_shape=lambda x, heads: [x[0], heads[0], x[1], head_dim],
                        out_dtype=native._float32, func_type="aot")
        _STATE.heads_ops[head_dim] = op
    return op


def set_float_prefill_kernels(enabled: bool) -> None:
    """Switch these kernels on (default) or off (the MindSpore-op route, for comparison)."""
    _STATE.enabled = bool(enabled)


def set_float_prefill_threads(threads: int) -> None:
    """Threads the attention kernel (and large elementwise calls) use; default: the CPUs this
    process may run on, at most 8."""
    if threads < 1:
        raise ValueError(f"set_float_prefill_threads: threads must be >= 1, got {threads}")
    _load()
    if _STATE.lib is None:
        raise RuntimeError(f"golden_ptq: {_STATE.reason}")
    _STATE.lib.gp_prefill_set_threads(int(threads))


PREFILL_ISAS = ("baseline", "avx2", "avx512")   # the attention and FWHT kernels' instruction sets, in order


def set_float_prefill_isa(isa: Optional[str]) -> str:
    """Run the attention and FWHT kernels with at most ``isa`` (one of PREFILL_ISAS; None: the best this CPU
    has), for tests and comparisons; returns the set now in use."""
    if isa is not None and isa not in PREFILL_ISAS:
        raise ValueError(f"set_float_prefill_isa: isa must be one of {PREFILL_ISAS} or None, got {isa!r}")
    _load()
    if _STATE.lib is None:
        raise RuntimeError(f"golden_ptq: {_STATE.reason}")
    wanted = len(PREFILL_ISAS) - 1 if isa is None else PREFILL_ISAS.index(isa)
    return PREFILL_ISAS[_STATE.lib.gp_prefill_set_isa(wanted)]


def attention_supported(head_dim: int) -> bool:
    """Whether the attention kernel takes heads of ``head_dim``."""
    return head_dim % 16 == 0 and 0 < head_dim <= MAX_HEAD_DIM
