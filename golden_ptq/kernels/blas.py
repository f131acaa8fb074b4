"""The process's BLAS for float32 products (``blas_gemm.cc``).

MindSpore's CPU ``MatMul`` computes on its pool threads while the launching thread spins; on a 2-core
machine the product runs at about half the speed of the same ``sgemm`` called from the launching
thread. numpy is linked with a BLAS (its wheels bundle OpenBLAS), so the eager float Linears use that
one: :func:`find_sgemm` looks for a CBLAS ``sgemm`` (and the same library's ``sgemv``) among the
libraries this process has loaded, numpy's first, and :func:`attach` hands it to the native library.
Without one (another BLAS layout, or none loaded) the float Linears keep MindSpore's MatMul.
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

# (symbol, 64-bit dimensions): numpy >= 2 wheels (scipy-openblas64), numpy 1.x wheels (openblas64_),
# then plain CBLAS (system OpenBLAS, MKL, BLIS builds of numpy). One-row products take the same library's
# matrix-vector product, the symbol with sgemv for sgemm.
SYMBOLS = (("scipy_cblas_sgemm64_", True), ("cblas_sgemm64_", True), ("cblas_sgemm", False))
_LIBRARY_HINTS = ("blas", "mkl", "blis")   # words in the file names of the libraries searched


@dataclass(frozen=True)
class Sgemm:
    """A CBLAS ``sgemm`` found in this process."""
    library: str
    symbol: str
    ilp64: bool
    address: int
    gemv_address: Optional[int]   # the library's cblas_sgemv, if it has one


def loaded_libraries() -> List[str]:
    """Shared libraries mapped into this process whose names suggest a BLAS, numpy's own first."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if line.rstrip().endswith(".so") or ".so." in line}
    except OSError:
        return []
    numpy_dir = os.path.dirname(os.path.dirname(np.__file__))
    found = [p for p in paths if os.path.isabs(p) and any(h in os.path.basename(p).lower() for h in _LIBRARY_HINTS)]
    return sorted(found, key=lambda p: (not os.path.basename(os.path.dirname(p)).startswith("numpy"),
                                        not p.startswith(numpy_dir), p))


def find_sgemm() -> Optional[Sgemm]:
    """numpy's (else any loaded library's) CBLAS sgemm, or None."""
    for path in loaded_libraries():
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol, ilp64 in SYMBOLS:
            function = getattr(library, symbol, None)
            if function is not None:
                gemv = getattr(library, symbol.replace("sgemm", "sgemv"), None)
                return Sgemm(path, symbol, ilp64, ctypes.cast(function, ctypes.c_void_p).value,
                             None if gemv is None else ctypes.cast(gemv, ctypes.c_void_p).value)
    return None


def attach(lib: ctypes.CDLL) -> Optional[Sgemm]:
    """Give the native library ``lib`` this process's sgemm (or nothing, when there is none)."""
    found = find_sgemm()
    lib.gp_set_sgemm.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    if found is None:
        lib.gp_set_sgemm(None, None, 0)
    else:
        lib.gp_set_sgemm(found.address, found.gemv_address, int(found.ilp64))
    return found
