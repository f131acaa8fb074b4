"""Build and load the native CPU kernels: ``int8_gemm.cc`` (quantized Linear products),
``kv_attention.cc`` (decode attention over the KV cache buffers, int8 or float) and ``kv_codec.cc`` (its encode /
decode) wrapped as MindSpore ``ops.Custom`` operators, and ``gptq_columns.cc`` (GPTQ's column
loop), ``candidate_score.cc`` (the smoothing searches' candidate error) and ``nll.cc``
(perplexity's log-softmax) called through ctypes on numpy arrays.

The sources ship inside the package; ``pip install`` compiles them, else the first use does, into a
per-user cache (:mod:`golden_ptq.kernels.build`). One shared library serves every CPU: the vector
paths are compiled with per-function target attributes and chosen at run time from the CPU's flags
(AMX-INT8 tiles where Linux grants them, else AVX-512 VNNI, else AVX2); without AVX2, or when
compilation fails, the caller keeps the MindSpore-op route and a warning names the reason once.
"""
from __future__ import annotations

import ctypes
import logging
import subprocess
import threading
from dataclasses import dataclass
from typing import Dict, Optional

import mindspore as ms
import numpy as np
from mindspore import ops

import golden_ptq.kernels.blas as blas
import golden_ptq.kernels.build as build

logger = logging.getLogger(__name__)

SOURCES, HEADERS = build.LIBRARIES["gp_kernels"]
ISA_NAMES = {0: "portable", 1: "avx2", 3: "avx512_vnni", 4: "amx"}
_MIN_ISA = 1   # the portable C++ path is a test reference, slower than MindSpore's float ops


@dataclass(frozen=True)
class KernelInfo:
    """What the native kernels do in this process."""

    available: bool          # built, loaded and usable on this CPU
    enabled: bool            # the switch (:func:`set_native_kernels`)
    isa: str                 # instruction set in use ("amx", "avx512_vnni", "avx2", "portable", or "none")
    detected_isa: str        # the best the CPU offers
    threads: int
    library: Optional[str]   # path of the shared library
    reason: str              # why unavailable ("" when available)
    blas: str = "none"       # the BLAS whose sgemm the float products use ("library:symbol"), or "none"


class _State:
    def __init__(self):
        self.lock = threading.Lock()
        self.tried = False
        self.lib: Optional[ctypes.CDLL] = None
        self.path: Optional[str] = None
        self.reason = ""
        self.enabled = True
        self.ops: Dict[str, ops.Custom] = {}
        self.blas: Optional[blas.Sgemm] = None
        self.blas_enabled = True


_STATE = _State()


def _build() -> str:
    """Path of the ``SOURCES`` library: installed with the package, cached, or compiled now
    (:mod:`golden_ptq.kernels.build`)."""
    return build.library_path("gp_kernels", SOURCES, HEADERS)


def _load() -> None:
    """Build and load once per process; remember why not on failure."""
    with _STATE.lock:
        if _STATE.tried:
            return
        _STATE.tried = True
        try:
            path = _build()
            lib = ctypes.CDLL(path)
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            _STATE.reason = f"native kernels unavailable: {error}"
            logger.warning("golden_ptq: %s; using MindSpore ops", _STATE.reason)
            return
        if lib.gp_detected_isa() < _MIN_ISA:
            _STATE.reason = "native kernels unavailable: the CPU has no AVX2"
            logger.warning("golden_ptq: %s; using MindSpore ops", _STATE.reason)
            return
        _STATE.lib, _STATE.path = lib, path
        _STATE.blas = blas.attach(lib)


def _mn_shape(x_shape, w_shape, *_):
    """The products' output: ``x [..., K]`` times ``w [N, K]`` transposed is ``[..., N]``."""
    return list(x_shape[:-1]) + [w_shape[0]]


def _same_shape(x_shape, *_):
    return list(x_shape)


def _one_wider(x_shape, *_):
    return list(x_shape[:-1]) + [x_shape[-1] + 1]


def _one_narrower(x_shape, *_):
    return list(x_shape[:-1]) + [x_shape[-1] - 1]


def _int8(*_):
    return ms.int8


def _float32(*_):
    return ms.float32


def _int32(*_):
    return ms.int32


_ENTRY_POINTS = {   # name: (symbol, output shape, output dtype)
    "i8_gemm": ("GpI8Gemm", _mn_shape, _int32),
    "f32_gemm": ("GpF32Gemm", _mn_shape, _float32),   # only through blas_gemm_op()
    "a8w8_static": ("GpQGemmStatic", _mn_shape, _float32),
    "a8w8_dynamic": ("GpQGemmDynamic", _mn_shape, _float32),
    "a8w8_dynamic_absmax": ("GpQGemmDynamicAbsmax", _mn_shape, _float32),
    "w8_gemm": ("GpW8Gemm", _mn_shape, _float32),
    "wg_gemm": ("GpWgGemm", _mn_shape, _float32),
    "kv_attention_static": ("GpKvAttnStatic", _same_shape, _float32),
    "kv_attention_tokens": ("GpKvAttnTokens", _same_shape, _float32),
    "kv_attention_float": ("GpKvAttnFloat", _same_shape, _float32),
    "kv_attention_static_write": ("GpKvAttnStaticWrite", _same_shape, _float32),
    "kv_attention_tokens_write": ("GpKvAttnTokensWrite", _same_shape, _float32),
    "kv_attention_float_write": ("GpKvAttnFloatWrite", _same_shape, _float32),
    "kv_encode_symmetric": ("GpKvEncodeSym", _same_shape, _int8),
    "kv_encode_asymmetric": ("GpKvEncodeAsym", _same_shape, _int8),
    "kv_encode_tokens": ("GpKvEncodeTokens", _one_wider, _int8),
    "kv_decode_symmetric": ("GpKvDecodeSym", _same_shape, _float32),
    "kv_decode_asymmetric": ("GpKvDecodeAsym", _same_shape, _float32),
    "kv_decode_tokens": ("GpKvDecodeTokens", _one_narrower, _float32),
}


def native_ops() -> Optional[Dict[str, ops.Custom]]:
    """``{name: Custom op}`` for the entries of ``_ENTRY_POINTS``, or None (use MindSpore ops)."""
    if not _STATE.enabled:
        return None
    if not _STATE.tried:
        _load()
    if _STATE.lib is None:
        return None
    if not _STATE.ops:
        _STATE.ops = custom_ops(_STATE.path, _ENTRY_POINTS)
    return _STATE.ops


def blas_gemm_op() -> Optional[ops.Custom]:
    """``x [..., K] @ w [N, K].T`` in float32 by the process's BLAS (``blas_gemm.cc``) as a Custom op, or
    None (kernels unavailable or switched off, no BLAS found, or :func:`set_blas_gemm` off): use
    MindSpore's MatMul."""
    native = native_ops()
    if native is None or _STATE.blas is None or not _STATE.blas_enabled:
        return None
    return native["f32_gemm"]


def set_blas_gemm(enabled: bool) -> None:
    """Use the process's BLAS for the eager float products (default, when one is found), or not
    (MindSpore's MatMul)."""
    _STATE.blas_enabled = bool(enabled)


def custom_ops(path: str, entries) -> Dict[str, ops.Custom]:
    """``{name: Custom op}`` of library ``path``'s AOT entry points ``{name: (symbol, output shape
    function, output dtype function)}``."""
    return {name: ops.Custom(f"{path}:{symbol}", out_shape=shape, out_dtype=dtype, func_type="aot")
            for name, (symbol, shape, dtype) in entries.items()}


def native_enabled() -> bool:
    """The :func:`set_native_kernels` switch (it also covers ``golden_ptq.kernels.float_prefill``)."""
    return _STATE.enabled


def set_native_kernels(enabled: bool) -> None:
    """Switch the native kernels on (default) or off (the MindSpore-op route, e.g. for comparison);
    also the float prefill kernels of :mod:`golden_ptq.kernels.float_prefill`."""
    _STATE.enabled = bool(enabled)


def set_kernel_isa(name: Optional[str]) -> str:
    """Use at most instruction set ``name`` (one of ``ISA_NAMES``' values; None: the best the CPU has).
    Returns the set now in use. For tests and comparisons; raises if the kernels are unavailable."""
    lib = _require()
    levels = {value: key for key, value in ISA_NAMES.items()}
    if name is not None and name not in levels:
        raise ValueError(f"set_kernel_isa: {name!r} is not one of {sorted(levels)} or None")
    return ISA_NAMES[lib.gp_set_isa(lib.gp_detected_isa() if name is None else levels[name])]


def set_kernel_threads(threads: int) -> None:
    """Threads the native kernels use (default: the CPUs this process may run on, at most 8)."""
    if threads < 1:
        raise ValueError(f"set_kernel_threads: threads must be >= 1, got {threads}")
    _require().gp_set_threads(int(threads))


def _require() -> ctypes.CDLL:
    _load()
    if _STATE.lib is None:
        raise RuntimeError(f"golden_ptq: {_STATE.reason}")
    return _STATE.lib


def kernel_info() -> KernelInfo:
    """Builds the kernels if needed and says what runs."""
    _load()
    lib = _STATE.lib
    if lib is None:
        return KernelInfo(False, _STATE.enabled, "none", "none", 0, None, _STATE.reason)
    found = _STATE.blas
    return KernelInfo(True, _STATE.enabled, ISA_NAMES.get(lib.gp_isa(), "?"), ISA_NAMES.get(lib.gp_detected_isa(), "?"),
                      lib.gp_threads(), _STATE.path, "",
                      f"{found.library}:{found.symbol}" if found is not None and _STATE.blas_enabled else "none")


def gptq_columns(dtype=np.float64):
    """The native GPTQ column loop for ``dtype`` arrays (float32 or float64: ``gp_gptq_columns_f32`` /
    ``_f64`` of ``gptq_columns.cc``) as a ctypes function, or None (switched off, or the library is
    unavailable): the caller then runs its numpy loop, which gives the same bits."""
    real_p, long_p, i64 = real_pointer(dtype), ctypes.POINTER(ctypes.c_int64), ctypes.c_int64
    return _native_function(f"gp_gptq_columns_{_real_suffix(dtype)}",
                            [real_p, i64, i64, i64, i64, real_p, i64, i64, long_p, real_p, real_p,
                             ctypes.c_double, ctypes.c_double, ctypes.POINTER(ctypes.c_int8), real_p])


def gptq_subtract_transposed(dtype=np.float64):
    """GPTQ's ``a -= b.T`` on ``dtype`` arrays (``gp_subtract_transposed_f32`` / ``_f64``) as a ctypes
    function, or None like :func:`gptq_columns`."""
    real_p, i64 = real_pointer(dtype), ctypes.c_int64
    return _native_function(f"gp_subtract_transposed_{_real_suffix(dtype)}", [real_p, i64, i64, real_p],
                            restype=None)


def gptq_gather_transposed(dtype=np.float64):
    """GPTQ's ``w.T[perm]`` on ``dtype`` arrays (``gp_gather_transposed_f32`` / ``_f64``) as a ctypes
    function, or None like :func:`gptq_columns`."""
    real_p, i64 = real_pointer(dtype), ctypes.c_int64
    return _native_function(f"gp_gather_transposed_{_real_suffix(dtype)}",
                            [real_p, i64, i64, ctypes.POINTER(ctypes.c_int64), i64, real_p])


def gptq_permute_square(dtype=np.float64):
    """GPTQ's damped Hessian in visiting order, stored as ``dtype`` (``gp_permute_square_f32`` /
    ``_f64``, from a float64 matrix) as a ctypes function, or None like :func:`gptq_columns`."""
    f64_p, i64 = real_pointer(np.float64), ctypes.c_int64
    return _native_function(f"gp_permute_square_{_real_suffix(dtype)}",
                            [f64_p, i64, ctypes.POINTER(ctypes.c_int64), f64_p, real_pointer(dtype)])


def _real_suffix(dtype) -> str:
    names = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
    if np.dtype(dtype) not in names:
        raise ValueError(f"GPTQ kernels take float32 or float64 arrays, not {np.dtype(dtype)}")
    return names[np.dtype(dtype)]


def real_pointer(dtype):
    """The ctypes pointer type of a float32 or float64 array's data."""
    return ctypes.POINTER(ctypes.c_float if _real_suffix(dtype) == "f32" else ctypes.c_double)


@dataclass(frozen=True)
class CandidateScoring:
    """The ctypes functions of ``candidate_score.cc`` (see its comments for the arguments)."""
    input_codes: object
    weight_codes: object
    error: object


def candidate_scoring() -> Optional[CandidateScoring]:
    """The native candidate scoring functions, or None (switched off, or the library is unavailable):
    the caller then runs its numpy route, which gives the same codes."""
    double_p, i8_p, i64 = ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_int8), ctypes.c_int64
    inputs = _native_function("gp_score_input_codes", [double_p, double_p, i64, i64, ctypes.c_int, ctypes.c_double,
                                                       ctypes.c_double, ctypes.c_double, i8_p, double_p])
    if inputs is None:
        return None
    weights = _native_function("gp_score_weight_codes", [double_p, double_p, i64, i64, i8_p, double_p])
    error = _native_function("gp_score_error", [i8_p, double_p, ctypes.c_int, ctypes.c_double, i8_p, double_p,
                                                double_p, i64, i64, i64, double_p], restype=None)
    return CandidateScoring(inputs, weights, error)


def nll_rows():
    """Perplexity's per-position NLL over float32 logits (``gp_nll_rows`` of ``nll.cc``) as a ctypes
    function, or None (switched off, or the library is unavailable): the caller then runs numpy."""
    return _native_function("gp_nll_rows", [ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_int64),
                                            ctypes.c_int64, ctypes.c_int64, ctypes.POINTER(ctypes.c_double)])


def _native_function(name: str, argtypes: list, restype=ctypes.c_int):
    """``name`` of the kernel library with its ctypes signature set, or None (switched off, or the
    library is unavailable)."""
    if not _STATE.enabled:
        return None
    _load()
    if _STATE.lib is None:
        return None
    fn = getattr(_STATE.lib, name)
    if fn.argtypes is None:
        fn.argtypes, fn.restype = argtypes, restype
    return fn
