"""Native int8 kernels (golden_ptq.kernels): exact integer products on every instruction set the CPU
has, the same results as the MindSpore-op route, and the fallback when they cannot be built."""
import logging

import numpy as np
import pytest
from mindspore import Tensor

from golden_ptq import PTQ, PTQConfig, QuantGranularity, kernels
from golden_ptq.kernels import native
from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.quant_cells import linear_kernels
from golden_ptq.quant_cells.linear import QuantLinear
from golden_ptq.quant_math.functions import dequantize_weight

INFO = kernels.kernel_info()
needs_native = pytest.mark.skipif(not INFO.available, reason=f"native kernels unavailable here: {INFO.reason}")

# Shapes that reach every code path: the dot-product paths (<= 16 rows, in blocks of four rows and
# four weight rows) and the packed-panel paths (panels of 48 weight rows packed 16 at a time), tails in
# K (not a multiple of 4, 16, 64), in N (not a multiple of 4, 16, 32, 48) and in M.
SHAPES = [(1, 64, 8), (1, 577, 50), (3, 130, 7), (4, 100, 49), (6, 300, 70), (9, 67, 97), (16, 70, 22),
          (17, 200, 96), (33, 576, 53), (70, 129, 130), (50, 640, 100)]


def _cpu_flags():
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def _isas():
    order = ["portable", "avx2", "avx512_vnni", "amx"]
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
    if {"avx512_vnni", "avx512bw", "avx512vl", "amx_tile", "amx_int8"} <= flags:
        assert INFO.detected_isa in ("amx", "avx512_vnni")   # avx512_vnni: the kernel refused AMX state
    elif {"avx512_vnni", "avx512bw", "avx512vl"} <= flags:
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
    monkeypatch.setattr(native, "SOURCES", [str(broken)])
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
    x, q, scale, zp, w = _group_operands(rng, 3, 70, 9, 32, 4, False)
    _assert_within_rounding(linear_kernels.w8a16_group(Tensor(x), Tensor(q), Tensor(scale), Tensor(zp), 32).asnumpy(),
                            x, w, "fallback after a failed build")
    with pytest.raises(RuntimeError, match="unavailable"):
        kernels.set_kernel_isa("avx2")


# ----- weight-only per group (A16W8 / A16W4 with zero points) -------------------------------------
# (M, K, N, group size (0: per channel, asymmetric), bits, symmetric): one row, 8 rows and 512 rows
# (the dot and the panel paths), ragged last groups (576 = 4 x 128 + 64, 100 = 3 x 32 + 4, 13 = 2 x 5 + 3),
# groups shorter than a vector, tails in N.
GROUP_CASES = [(1, 576, 50, 128, 4, False), (8, 576, 49, 128, 4, False), (512, 100, 37, 32, 4, False),
               (3, 67, 5, 64, 8, False), (17, 64, 33, 16, 8, True), (9, 70, 9, 0, 8, False), (20, 13, 3, 5, 4, True),
               (8, 1536, 20, 128, 8, True)]


def _group_operands(rng, m, k, n, group_size, bits, symmetric):
    """x, int8 codes, scale and zero point (``[n, groups]``, or ``[n]`` per channel) and the dequantized
    weight as the MindSpore-op route computes it (float32 ``(q - zp) * scale``)."""
    groups = -(-k // group_size) if group_size else 1
    low, high = (-2 ** (bits - 1), 2 ** (bits - 1))
    q = rng.randint(low, high, (n, k)).astype(np.int8)
    scale = (rng.rand(n, groups) * 0.05 + 1e-3).astype(np.float32)
    zp = np.zeros((n, groups), np.float32) if symmetric else rng.randint(low, high, (n, groups)).astype(np.float32)
    if not group_size:
        scale, zp = scale[:, 0], zp[:, 0]
    w = dequantize_weight(q, scale, zp, group_size).astype(np.float32)   # (q - zp) exact, one rounding
    return rng.randn(m, k).astype(np.float32), q, scale, zp, w


def _assert_within_rounding(got, x, w, what):
    """``got`` is ``x @ w.T`` up to float32 summation error in any order: ``|err| <= K * 2^-23 * (|x| @ |w|.T)``."""
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    bound = x.shape[1] * 2.0 ** -23 * (np.abs(x64) @ np.abs(w64).T)
    err = np.abs(got.astype(np.float64) - x64 @ w64.T)
    assert got.shape == bound.shape and np.all(err <= bound), f"{what}: worst error / bound {np.max(err / bound):.3g}"


@needs_native
@pytest.mark.parametrize("isa", _isas(), indirect=True)
def test_group_kernel_is_the_dequantized_product_within_float_rounding(isa):
    rng = np.random.RandomState(6)
    op = kernels.native_ops()["wg_gemm"]
    for m, k, n, group_size, bits, symmetric in GROUP_CASES:
        x, q, scale, zp, w = _group_operands(rng, m, k, n, group_size, bits, symmetric)
        got = op(Tensor(x), Tensor(q), Tensor(scale), Tensor(zp), Tensor(np.array([group_size or k], np.int32)))
        _assert_within_rounding(got.asnumpy(), x, w, f"{isa} {m}x{k}x{n} g{group_size} {bits}-bit")


@needs_native
@pytest.mark.parametrize("isa", _isas(), indirect=True)
def test_channel_kernel_within_float_rounding(isa):
    rng = np.random.RandomState(7)
    for m, k, n in [(1, 576, 50), (8, 576, 49), (512, 100, 37), (12, 1536, 7)]:
        x = rng.randn(m, k).astype(np.float32)
        q = rng.randint(-127, 128, (n, k)).astype(np.int8)
        scale = (rng.rand(n) * 0.05 + 1e-3).astype(np.float32)
        got = kernels.native_ops()["w8_gemm"](Tensor(x), Tensor(q), Tensor(scale)).asnumpy()
        # the kernel scales the sum (x @ q.T) * scale: bound the sum, then the one rounding of the product
        _assert_within_rounding(got / scale, x, q.astype(np.float32), f"{isa} {m}x{k}x{n}")


@needs_native
def test_group_kernel_agrees_with_the_mindspore_route_and_is_its_fallback():
    rng = np.random.RandomState(8)
    for m, k, n, group_size, bits, symmetric in GROUP_CASES:
        x, q, scale, zp, w = _group_operands(rng, m, k, n, group_size, bits, symmetric)
        args = (Tensor(x), Tensor(q), Tensor(scale), Tensor(zp), group_size)
        native_out = linear_kernels.w8a16_group(*args).asnumpy()
        route_out = linear_kernels._w8a16_group(*args).asnumpy()
        kernels.set_native_kernels(False)
        try:
            fallback_out = linear_kernels.w8a16_group(*args).asnumpy()
        finally:
            kernels.set_native_kernels(True)
        np.testing.assert_array_equal(fallback_out, route_out)
        for what, got in (("native", native_out), ("mindspore route", route_out)):
            _assert_within_rounding(got, x, w, f"{what} {m}x{k}x{n} g{group_size}")


@needs_native
def test_group_kernel_rejects_a_group_size_that_does_not_match_the_scales():
    rng = np.random.RandomState(9)
    x, q, scale, zp, _ = _group_operands(rng, 2, 100, 4, 32, 4, False)   # 4 groups of 32 (last: 4)
    op = kernels.native_ops()["wg_gemm"]
    with pytest.raises(RuntimeError, match="GpWgGemm"):
        op(Tensor(x), Tensor(q), Tensor(scale), Tensor(zp), Tensor(np.array([20], np.int32))).asnumpy()


def _group_network(config, bits, group_size):
    """A tiny network quantized A16W{bits} in groups (of 40: ragged, hidden 64 = 40 + 24 and intermediate
    96 = 40 + 40 + 16; of 32: dividing both)."""
    network = LlamaForCausalLM(config, seed=3)
    network.set_train(False)
    rng = np.random.RandomState(0)
    ptq = PTQ(PTQConfig(weight_quant_granularity=QuantGranularity.PER_GROUP, group_size=group_size,
                        weight_symmetric=False, weight_bits=bits))
    ptq.apply(network, None, [rng.randint(0, config.vocab_size, 16) for _ in range(2)])
    ptq.convert(network)
    return network


@needs_native
@pytest.mark.parametrize("bits,group_size", [(4, 40), (8, 40), (4, 32)])
def test_quantized_network_binds_the_native_group_kernel_and_matches_the_mindspore_route(tiny_config, bits,
                                                                                         group_size):
    tiny_config.num_layers = 1
    network = _group_network(tiny_config, bits, group_size)
    ids = np.random.RandomState(4).randint(0, tiny_config.vocab_size, (2, 9))

    def decode():
        network.set_compiled(decode=True)
        out = [network.prefill(ids[:, :5]).asnumpy()]
        out += [network.decode_step(ids[:, t]).asnumpy() for t in range(5, ids.shape[1])]
        network.reset_cache()
        return np.stack(out)

    native_logits = decode()
    layers = [cell for _, cell in network.cells_and_names() if isinstance(cell, QuantLinear)]
    assert layers and network.compiled_decode
    for layer in layers:
        assert layer.bound_kernel is kernels.native_ops()["wg_gemm"]
        assert layer.kernel_extra.asnumpy().tolist() == [group_size]
    kernels.set_native_kernels(False)
    try:
        route_logits = decode()   # rebinds: the MindSpore-op route, compiled into the graph
        assert all(layer.bound_kernel is linear_kernels._w8a16_group and layer.kernel_extra == group_size
                   for layer in layers)
        assert network.compiled_decode
    finally:
        kernels.set_native_kernels(True)
        network.set_compiled(decode=True)
    scale = np.abs(route_logits).max()
    assert np.abs(native_logits - route_logits).max() <= 1e-4 * scale


@pytest.mark.parametrize("top", [127, 255])   # 255: codes minus a zero point no longer fit int8
def test_codes_product_is_exact_native_or_not(top):
    rng = np.random.RandomState(top)
    a = rng.randint(-top - 1 if top == 127 else -top, top + 1, size=(37, 1100)).astype(np.float64)
    b = rng.randint(-127, 128, size=(19, 1100)).astype(np.float64)
    a[0], b[0] = -top, -127   # a worst-case sum past float32's exact integers
    want = (a.astype(np.int64) @ b.T.astype(np.int64)).astype(np.float64)
    np.testing.assert_array_equal(linear_kernels.codes_product(a, b), want)
    kernels.set_native_kernels(False)
    try:
        np.testing.assert_array_equal(linear_kernels.codes_product(a, b), want)
    finally:
        kernels.set_native_kernels(True)


@needs_native
def test_products_take_leading_dimensions_native_and_fallback():
    """Every quantized product takes ``x [..., K]`` (eager callers pass it unreshaped): the same values as
    its rows ``[M, K]``, natively and on the MindSpore-op route; a mismatched leading shape is refused."""
    rng = np.random.RandomState(6)
    x, wq = _w8a8_inputs(rng, 2 * 5, 96, 24)
    x3 = x.reshape(2, 5, 96)
    ws = Tensor((rng.rand(24) * 1e-2).astype(np.float32))
    scale, zp = Tensor(np.array([STATIC_SCALE], np.float32)), Tensor(np.array([3.0], np.float32))
    qb, deq = Tensor(rng.randint(-500, 500, 24).astype(np.int32)), Tensor((rng.rand(24) * 1e-3).astype(np.float32))
    gscale = Tensor((rng.rand(24, 3) * 1e-2).astype(np.float32))
    gzp = Tensor(np.zeros((24, 3), np.float32))
    calls = {
        "a8w8_static": lambda a: linear_kernels.a8w8_static(a, Tensor(wq), scale, zp, qb, deq),
        "a8w8_dynamic": lambda a: linear_kernels.a8w8_dynamic(a, Tensor(wq), ws),
        "w8a16_channel": lambda a: linear_kernels.w8a16_channel(a, Tensor(wq), ws),
        "w8a16_group": lambda a: linear_kernels.w8a16_group(a, Tensor(wq), gscale, gzp, 32),
    }
    for native_on in (True, False):
        kernels.set_native_kernels(native_on)
        try:
            for name, call in calls.items():
                rows, batched = call(Tensor(x)).asnumpy(), call(Tensor(x3)).asnumpy()
                assert batched.shape == (2, 5, 24), name
                np.testing.assert_array_equal(batched.reshape(10, 24), rows, err_msg=f"{name} native={native_on}")
        finally:
            kernels.set_native_kernels(True)
    op = kernels.native_ops()["w8_gemm"]
    with pytest.raises(RuntimeError, match="GpW8Gemm"):   # x's K (95) is not the weight's (96)
        ops_out = op(Tensor(x3[:, :, :95]), Tensor(wq), ws)
        ops_out.asnumpy()
