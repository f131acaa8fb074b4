"""Native int8 kernels (golden_ptq.kernels): exact integer products on every instruction set the CPU
has, the same results as the MindSpore-op route, and the fallback when they cannot be built."""
import logging

import numpy as np
import pytest
from mindspore import Tensor

from golden_ptq import kernels
from golden_ptq.kernels import native
from golden_ptq.quant_cells import linear_kernels

INFO = kernels.kernel_info()
needs_native = pytest.mark.skipif(not INFO.available, reason=f"native kernels unavailable here: {INFO.reason}")

# Shapes that reach every code path: the dot-product paths (<= 16 rows) and the packed-panel paths,
# tails in K (not a multiple of 4, 16, 64) and in N (not a multiple of 4, 32, 48).
SHAPES = [(1, 64, 8), (1, 577, 50), (3, 130, 7), (4, 100, 49), (9, 67, 97), (17, 200, 96), (33, 576, 53),
          (70, 129, 130)]


def _cpu_flags():
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def _isas():
    order = ["portable", "avx2", "avx512_vnni"]
    return order[:order.index(INFO.detected_isa) + 1] if INFO.available else []


@pytest.fixture
def isa(request):
    used = kernels.set_kernel_isa(request.param)
    assert used == request.param
    yield used
    kernels.set_kernel_isa(None)


@needs_native
def test_detected_isa_matches_cpu_flags():
    flags = _cpu_flags()
    if {"avx512_vnni", "avx512bw", "avx512vl"} <= flags:
        assert INFO.detected_isa == "avx512_vnni"
    elif "avx2" in flags:
        assert INFO.detected_isa == "avx2"


@needs_native
@pytest.mark.parametrize("isa", _isas(), indirect=True)
def test_int8_gemm_equals_int64_numpy(isa):
    rng = np.random.RandomState(1)
    op = kernels.native_ops()["i8_gemm"]
    for m, k, n in SHAPES:
        a = rng.randint(-128, 128, (m, k)).astype(np.int8)
        b = rng.randint(-128, 128, (n, k)).astype(np.int8)
        a[0, :] = -128                       # the extremes, where a saturating route would go wrong
        b[0, :] = -128
        got = op(Tensor(a), Tensor(b)).asnumpy()
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, a.astype(np.int64) @ b.astype(np.int64).T, err_msg=f"{isa} {m}x{k}x{n}")


STATIC_SCALE = 0.0625


def _w8a8_inputs(rng, m, k, n):
    x = rng.randn(m, k).astype(np.float32) * 3
    x[0, :2] = [2.5 * STATIC_SCALE, 3.5 * STATIC_SCALE]   # exactly half-way between codes: to even
    wq = rng.randint(-127, 128, (n, k)).astype(np.int8)
    return x, wq


@needs_native
@pytest.mark.parametrize("isa", _isas(), indirect=True)
def test_w8a8_kernels_equal_the_mindspore_route(isa):
    rng = np.random.RandomState(2)
    for m, k, n in SHAPES:
        x, wq = _w8a8_inputs(rng, m, k, n)
        scale, zp = Tensor(np.array([STATIC_SCALE], np.float32)), Tensor(np.array([3.0], np.float32))
        quant_bias = Tensor(rng.randint(-5000, 5000, n).astype(np.int32))
        deq = Tensor((rng.rand(n) * 1e-3).astype(np.float32))
        absmax = Tensor(np.abs(x).max(axis=1, keepdims=True) * 1.5)
        cases = {
            "static": ((Tensor(x), Tensor(wq), scale, zp, quant_bias, deq), linear_kernels._a8w8_static),
            "dynamic": ((Tensor(x), Tensor(wq), deq), linear_kernels._a8w8_dynamic),
            "dynamic_absmax": ((Tensor(x), Tensor(wq), deq, absmax), linear_kernels._a8w8_dynamic_absmax),
        }
        for name, (args, graph_route) in cases.items():
            got = kernels.native_ops()[f"a8w8_{name}"](*args).asnumpy()
            want = graph_route(*args).asnumpy()
            np.testing.assert_array_equal(got, want, err_msg=f"{name} {isa} {m}x{k}x{n}")


@needs_native
@pytest.mark.parametrize("isa", _isas(), indirect=True)
def test_weight_only_kernel_matches_float64(isa):
    rng = np.random.RandomState(3)
    for m, k, n in SHAPES:
        x = rng.randn(m, k).astype(np.float32)
        wq = rng.randint(-128, 128, (n, k)).astype(np.int8)
        ws = (rng.rand(n) * 0.01 + 1e-3).astype(np.float32)
        got = kernels.native_ops()["w8_gemm"](Tensor(x), Tensor(wq), Tensor(ws)).asnumpy()
        want = (x.astype(np.float64) @ wq.astype(np.float64).T) * ws
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max(), err_msg=f"{isa} {m}x{k}x{n}")


@needs_native
def test_switching_native_kernels_off_uses_the_mindspore_route():
    rng = np.random.RandomState(4)
    x, wq = _w8a8_inputs(rng, 5, 96, 24)
    ws = Tensor((rng.rand(24) * 1e-2).astype(np.float32))
    native_out = linear_kernels.a8w8_dynamic(Tensor(x), Tensor(wq), ws).asnumpy()
    kernels.set_native_kernels(False)
    try:
        assert kernels.native_ops() is None
        fallback_out = linear_kernels.a8w8_dynamic(Tensor(x), Tensor(wq), ws).asnumpy()
    finally:
        kernels.set_native_kernels(True)
    np.testing.assert_array_equal(native_out, fallback_out)


def test_failed_build_falls_back_with_a_warning(tmp_path, monkeypatch, caplog):
    broken = tmp_path / "broken.cc"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(native, "SOURCE", str(broken))
    monkeypatch.setattr(native, "_STATE", native._State())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        assert kernels.native_ops() is None
    info = kernels.kernel_info()
    assert not info.available and "unavailable" in info.reason
    assert any("using MindSpore ops" in record.getMessage() for record in caplog.records)
    rng = np.random.RandomState(5)
    x, wq = _w8a8_inputs(rng, 3, 64, 16)
    ws = Tensor(np.full(16, 1e-2, np.float32))
    got = linear_kernels.w8a16_channel(Tensor(x), Tensor(wq), ws).asnumpy()
    np.testing.assert_allclose(got, (x.astype(np.float64) @ wq.T.astype(np.float64)) * 1e-2, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="unavailable"):
        kernels.set_kernel_isa("avx2")
