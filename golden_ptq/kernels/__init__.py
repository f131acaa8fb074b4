"""Native CPU kernels (C++ ``ops.Custom`` "aot" operators) for the quantized Linear forms.

:func:`native_ops` returns them, built on first use, or None when they cannot run here (no
compiler, no x86 AVX2, or switched off with :func:`set_native_kernels`); callers then use the
MindSpore-op route.
"""
from golden_ptq.kernels.native import (KernelInfo, blas_gemm_op, kernel_info, native_ops, set_blas_gemm,
                                       set_kernel_isa, set_kernel_threads, set_native_kernels)

__all__ = ["KernelInfo", "blas_gemm_op", "kernel_info", "native_ops", "set_blas_gemm", "set_kernel_isa",
           "set_native_kernels", "set_kernel_threads"]
