"""The process's BLAS as the float32 product (golden_ptq.kernels.blas, blas_gemm.cc): found in numpy's
libraries, exact up to float32 summation order (sgemm, and sgemv for one row), used by eager float
Linears, and switched off cleanly."""
import numpy as np
import pytest
from mindspore import Tensor

from golden_ptq import kernels
from golden_ptq.kernels import blas
from golden_ptq.networks.layers import Linear, float_matmul

INFO = kernels.kernel_info()
needs_native = pytest.mark.skipif(not INFO.available, reason=f"native kernels unavailable here: {INFO.reason}")


def _within_rounding(got, x, w, what):
    """``got`` is ``x @ w.T`` up to float32 summation error in any order."""
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    bound = max(x.shape[1], 1) * 2.0 ** -23 * (np.abs(x64) @ np.abs(w64).T) + 1e-30
    err = np.abs(got.astype(np.float64) - x64 @ w64.T)
    assert got.shape == bound.shape and np.all(err <= bound), f"{what}: worst error / bound {np.max(err / bound):.3g}"


@pytest.fixture
def blas_off():
    kernels.set_blas_gemm(False)
    yield
    kernels.set_blas_gemm(True)


def test_numpy_blas_is_found():
    found = blas.find_sgemm()
    assert found is not None, f"no CBLAS sgemm among {blas.loaded_libraries()}"
    assert found.symbol in dict(blas.SYMBOLS) and found.address and found.gemv_address   # one-row products: gemv
    if INFO.available:
        assert INFO.blas == f"{found.library}:{found.symbol}"


@needs_native
def test_float_product_is_exact_up_to_summation_order():
    rng = np.random.RandomState(0)
    op = kernels.blas_gemm_op()
    for m, k, n in [(1, 64, 8), (3, 577, 50), (70, 129, 130), (512, 576, 200), (5, 1, 3)]:
        x, w = rng.randn(m, k).astype(np.float32), rng.randn(n, k).astype(np.float32)
        _within_rounding(op(Tensor(x), Tensor(w)).asnumpy(), x, w, f"{m}x{k}x{n}")
    got = op(Tensor(np.zeros((3, 0), np.float32)), Tensor(np.zeros((4, 0), np.float32))).asnumpy()
    np.testing.assert_array_equal(got, np.zeros((3, 4), np.float32))


@needs_native
def test_float_product_refuses_mismatched_operands():
    op = kernels.blas_gemm_op()
    with pytest.raises(RuntimeError, match="GpF32Gemm"):
        op(Tensor(np.ones((2, 5), np.float32)), Tensor(np.ones((3, 4), np.float32))).asnumpy()


@needs_native
def test_eager_linear_uses_the_blas_and_agrees_with_mindspore_matmul(blas_off):
    rng = np.random.RandomState(2)
    layer = Linear(96, 40)
    layer.weight.set_data(Tensor(rng.randn(40, 96).astype(np.float32)))
    x = Tensor(rng.randn(2, 7, 96).astype(np.float32))
    mindspore_out = layer(x).asnumpy()
    assert kernels.blas_gemm_op() is None and kernels.kernel_info().blas == "none"
    kernels.set_blas_gemm(True)
    assert kernels.blas_gemm_op() is not None
    blas_out = layer(x).asnumpy()
    np.testing.assert_allclose(blas_out, mindspore_out, rtol=1e-5, atol=1e-5 * np.abs(mindspore_out).max())
    np.testing.assert_array_equal(float_matmul(x.reshape(14, 96), layer.weight).asnumpy().reshape(2, 7, 40), blas_out)


@needs_native
def test_float_product_takes_leading_dimensions(blas_off):
    """``x [..., K]`` as it comes, through the BLAS and MindSpore's MatMul alike."""
    rng = np.random.RandomState(3)
    x, w = rng.randn(2, 3, 5, 33).astype(np.float32), rng.randn(7, 33).astype(np.float32)
    by_matmul = float_matmul(Tensor(x), Tensor(w)).asnumpy()
    kernels.set_blas_gemm(True)
    by_blas = float_matmul(Tensor(x), Tensor(w)).asnumpy()
    assert by_matmul.shape == by_blas.shape == (2, 3, 5, 7)
    _within_rounding(by_blas.reshape(30, 7), x.reshape(30, 33), w, "blas [2, 3, 5, 33]")
    np.testing.assert_allclose(by_blas, by_matmul, rtol=1e-5, atol=1e-5 * np.abs(by_matmul).max())
