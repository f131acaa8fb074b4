"""Build, load and wrap ``int8_gemm.cc`` as MindSpore ``ops.Custom`` operators.

The source ships inside the package; the first use compiles it with the system ``g++`` into a
per-user cache (``$XDG_CACHE_HOME/golden_ptq/kernels``, or ``~/.cache/...``), named by a hash of
the source and the compiler so an upgrade rebuilds. One shared library serves every CPU: the
vector paths are compiled with per-function target attributes and chosen at run time from the
CPU's flags (AVX-512 VNNI, else AVX2); without AVX2, or when compilation fails, the caller keeps
the MindSpore-op route and a warning names the reason once.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from typing import Dict, Optional

import mindspore as ms
from mindspore import ops

logger = logging.getLogger(__name__)

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "int8_gemm.cc")
FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-pthread"]
ISA_NAMES = {0: "portable", 1: "avx2", 3: "avx512_vnni"}
_MIN_ISA = 1   # the portable C++ path is a test reference, slower than MindSpore's float ops


@dataclass(frozen=True)
class KernelInfo:
    """What the native kernels do in this process."""

    available: bool          # built, loaded and usable on this CPU
    enabled: bool            # the switch (:func:`set_native_kernels`)
    isa: str                 # instruction set in use ("avx512_vnni", "avx2", "portable", or "none")
    detected_isa: str        # the best the CPU offers
    threads: int
    library: Optional[str]   # path of the shared library
    reason: str              # why unavailable ("" when available)


class _State:
    def __init__(self):
        self.lock = threading.Lock()
        self.tried = False
        self.lib: Optional[ctypes.CDLL] = None
        self.path: Optional[str] = None
        self.reason = ""
        self.enabled = True
        self.ops: Dict[str, ops.Custom] = {}


_STATE = _State()


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "golden_ptq", "kernels")


def _compiler_version(cxx: str) -> str:
    return subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]


def _build(source: Optional[str] = None) -> str:
    """Path of the compiled library of ``source`` (default ``SOURCE``), compiling it if the cache
    lacks it (written atomically)."""
    source = source or SOURCE
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise RuntimeError(f"machine {platform.machine()} is not x86-64")
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++) on PATH")
    with open(source, "rb") as handle:
        text = handle.read()
    key = hashlib.sha256(text + " ".join(FLAGS).encode() + _compiler_version(cxx).encode()).hexdigest()[:16]
    folder = _cache_dir()
    stem = os.path.splitext(os.path.basename(source))[0]
    path = os.path.join(folder, f"{stem}-{key}.so")
    if os.path.isfile(path):
        return path
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
    os.close(fd)
    try:
        done = subprocess.run([cxx, *FLAGS, "-o", tmp, source], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{cxx} failed on {source}: {done.stderr.strip()[:400]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


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


def _mn_shape(x_shape, w_shape, *_):
    return [x_shape[0], w_shape[0]]


def _float32(*_):
    return ms.float32


def _int32(*_):
    return ms.int32


_ENTRY_POINTS = {
    "i8_gemm": ("GpI8Gemm", _int32),
    "a8w8_static": ("GpQGemmStatic", _float32),
    "a8w8_dynamic": ("GpQGemmDynamic", _float32),
    "a8w8_dynamic_absmax": ("GpQGemmDynamicAbsmax", _float32),
    "w8_gemm": ("GpW8Gemm", _float32),
    "wg_gemm": ("GpWgGemm", _float32),
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
        _STATE.ops = {name: ops.Custom(f"{_STATE.path}:{symbol}", out_shape=_mn_shape, out_dtype=dtype,
                                       func_type="aot")
                      for name, (symbol, dtype) in _ENTRY_POINTS.items()}
    return _STATE.ops


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
    return KernelInfo(True, _STATE.enabled, ISA_NAMES.get(lib.gp_isa(), "?"), ISA_NAMES.get(lib.gp_detected_isa(), "?"),
                      lib.gp_threads(), _STATE.path, "")
