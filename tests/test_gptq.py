"""GPTQ: the blocked Cholesky implementation against a plain numpy reference of the math, and
in PTQ (the deployed codes and scales are GPTQ's, ragged groups, W8A8, DEPLOY round trip)."""
import mindspore as ms
import numpy as np
import pytest

from golden_ptq import PTQ, PTQConfig, PTQMode, QuantGranularity, kernels
from golden_ptq.algorithm.modules import GPTQModule, QuantizeModule, gptq_quantize
from golden_ptq.algorithm.modules.gptq import (ColumnBlock, HessianFactor, native_damped_in_order,
                                              native_gather_transposed, native_round_columns,
                                              native_subtract_transposed, numpy_damped_in_order,
                                              numpy_gather_transposed, numpy_round_columns,
                                              numpy_subtract_transposed, upper_factor_of_inverse)
from golden_ptq.io.checkpoint import load_checkpoint, save_checkpoint
from golden_ptq.kernels.native import gptq_columns
from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.quant_cells.linear import QuantLinear
from golden_ptq.quant_math.functions import dequantize_weight, fake_quantize_weight, quantize_weight, weight_qrange
from test_ptq_toy import calibration

I8 = ms.int8


def reference_gptq(w, h, group_size, symmetric, bits, damp, act_order, clip=None):
    """Optimal Brain Quantizer form: quantize column j, spread its error with the inverse Hessian
    of the columns left, then remove j from that inverse. No Cholesky, no blocks."""
    w = w.astype(np.float64).copy()
    out_features, in_features = w.shape
    h = h.astype(np.float64).copy()
    h[np.diag(h) == 0, np.diag(h) == 0] = 1.0
    qmin, qmax = weight_qrange(bits, symmetric)
    groups = -(-in_features // group_size) if group_size else 1
    width = group_size or in_features
    scale, zero = np.zeros((out_features, groups)), np.zeros((out_features, groups))

    def params(cols, g):
        _, s, z = quantize_weight(cols.astype(np.float32), 0, symmetric, bits, None if clip is None else clip[:, g])
        return s.astype(np.float64), (0.0 if z is None else z.astype(np.float64))

    if not group_size or act_order:
        for g in range(groups):
            scale[:, g], zero[:, g] = params(w[:, g * width:(g + 1) * width], g)
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(in_features)
    h = h + damp * np.mean(np.diag(h)) * np.eye(in_features)
    hinv = np.linalg.inv(h)
    left = list(order)
    codes = np.zeros_like(w)
    for j in order:
        g = j // width
        if group_size and not act_order and j % group_size == 0:
            scale[:, g], zero[:, g] = params(w[:, j:j + group_size], g)
        q = np.clip(np.round(w[:, j] / scale[:, g]) + zero[:, g], qmin, qmax)
        codes[:, j] = q
        err = (w[:, j] - (q - zero[:, g]) * scale[:, g]) / hinv[j, j]
        left.remove(j)
        w[:, left] -= np.outer(err, hinv[j, left])
        hinv = hinv - np.outer(hinv[:, j], hinv[j, :]) / hinv[j, j]
    return codes, scale if group_size else scale[:, 0], zero if group_size else zero[:, 0]


def test_upper_factor_of_the_inverse(rng):
    _, h, _ = problem(rng)
    h[5, 5] = 1.0
    u = upper_factor_of_inverse(h)
    assert np.array_equal(u, np.triu(u)) and (np.diag(u) > 0).all()
    np.testing.assert_allclose(u.T @ u, np.linalg.inv(h), rtol=1e-10, atol=1e-12 * np.abs(np.linalg.inv(h)).max())
    np.testing.assert_allclose(u, np.linalg.cholesky(np.linalg.inv(h)).T, rtol=1e-9, atol=1e-12)


def test_hessian_factor_in_float32_is_float64s_to_rounding(rng):
    """GPTQ's default factor (float32) against the float64 one on a badly scaled Hessian."""
    _, h, _ = problem(rng, in_features=64, rows=400)
    f32, f64 = HessianFactor(h, 0.01, True), HessianFactor(h, 0.01, True, dtype=np.float64)
    assert f32.u.dtype == np.float32 and f64.u.dtype == np.float64
    np.testing.assert_array_equal(f32.perm, f64.perm)
    np.testing.assert_allclose(f32.u, f64.u, rtol=0, atol=2e-5 * np.abs(f64.u).max())


def problem(rng, out_features=12, in_features=20, rows=200):
    mix = np.eye(in_features) + 0.5 * rng.randn(in_features, in_features)   # correlated channels: what
    x = (rng.randn(rows, in_features) @ mix) * np.linspace(0.2, 3.0, in_features)   # GPTQ exploits
    x[:, 5] = 0.0                                                           # a dead input
    w = rng.randn(out_features, in_features)
    return w, 2.0 * x.T @ x / rows, x


@pytest.mark.parametrize("group_size, symmetric, bits, act_order, clipped", [
    (0, True, 8, False, False), (0, True, 8, True, False), (8, True, 4, False, False),   # 20 = 8 + 8 + 4: ragged
    (8, False, 4, False, False), (8, True, 4, True, False), (0, False, 4, False, False), (8, False, 4, True, True),
    (8, True, 4, False, True),
])
def test_blocked_gptq_matches_the_reference(rng, group_size, symmetric, bits, act_order, clipped):
    w, h, _ = problem(rng)
    groups = 3 if group_size else 1
    clip = rng.uniform(0.6, 1.0, (w.shape[0], groups)) if clipped else None   # AWQ's clip ratios (m3)
    codes, scale, zp = gptq_quantize(w, h, group_size, symmetric, bits, block_size=8, damp_percent=0.01,
                                     act_order=act_order, clip_ratio=clip)
    ref_codes, ref_scale, ref_zero = reference_gptq(w, h, group_size, symmetric, bits, 0.01, act_order, clip)
    np.testing.assert_allclose(scale, ref_scale, rtol=1e-6)
    if not symmetric:
        np.testing.assert_array_equal(zp, ref_zero)
    assert np.mean(codes == ref_codes) > 0.99   # a rounding tie may fall differently in float
    assert np.abs(codes.astype(int) - ref_codes).max() <= 1


@pytest.mark.parametrize("group_size, symmetric, bits, act_order, clipped", [
    (0, True, 8, False, False), (0, True, 8, True, False), (8, False, 4, False, True), (8, True, 4, True, False),
    (6, False, 8, False, False),   # groups do not divide the 8-column blocks: blocks widen to 6
])
def test_native_column_loop_gives_the_numpy_loops_bits(rng, group_size, symmetric, bits, act_order, clipped):
    if kernels.kernel_info().available is False:
        pytest.skip("native kernels unavailable here (no g++ or no AVX2): only the numpy loop runs")
    w, h, _ = problem(rng, out_features=33, in_features=47)
    groups = -(-47 // group_size) if group_size else 1
    clip = rng.uniform(0.6, 1.0, (w.shape[0], groups)) if clipped else None
    args = (w, h, group_size, symmetric, bits, 8, 0.01, act_order, clip)
    native = gptq_quantize(*args)
    kernels.set_native_kernels(False)
    try:
        assert gptq_columns() is None
        numpy = gptq_quantize(*args)
    finally:
        kernels.set_native_kernels(True)
    assert gptq_columns() is not None
    for got, want in zip(native, numpy):
        if want is None:
            assert got is None
        else:
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("isa", ["portable", "avx2", "avx512_vnni"])   # a CPU without AVX-512 runs its best
@pytest.mark.parametrize("real", [np.float32, np.float64])
def test_native_column_loop_leaves_the_numpy_loops_floats(rng, isa, real):
    """Everything the loop leaves (corrected columns, errors, int8 codes) bit for bit, over runs that end
    inside a block and rows that span row tiles and register lanes unevenly (300 = 256 + 44)."""
    if kernels.kernel_info().available is False:
        pytest.skip("native kernels unavailable here (no g++ or no AVX2): only the numpy loop runs")
    columns, rows, start, inputs = 12, 300, 4, 20
    u = np.triu(rng.uniform(0.05, 1.0, (inputs, inputs))).astype(real)
    group_of = np.array([0] * 5 + [1] * 7, np.int64)
    scale, zero = rng.uniform(0.01, 0.03, (2, rows)).astype(real), rng.randint(-3, 4, (2, rows)).astype(real)
    block_t, codes_t = (rng.randn(columns, rows) * 0.1).astype(real), np.zeros((inputs, rows), np.int8)
    results = []
    kernels.set_kernel_isa(isa)
    try:
        for round_columns in (native_round_columns, numpy_round_columns):
            block = ColumnBlock(block_t.copy(), np.zeros_like(block_t), start, group_of, scale, zero, -8.0, 7.0)
            codes = codes_t.copy()
            for begin, end in ((0, 5), (5, 12)):
                round_columns(block, begin, end, u, codes)
            results.append((block.block_t, block.errors_t, codes))
    finally:
        kernels.set_kernel_isa(None)
    for got, want in zip(*results):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("real", [np.float32, np.float64])
def test_native_transposed_gather_is_numpys(rng, real):
    if kernels.kernel_info().available is False:
        pytest.skip("native kernels unavailable here (no g++ or no AVX2)")
    w, perm = rng.randn(70, 45).astype(real), rng.permutation(45)   # not multiples of the 32-element tiles
    got = native_gather_transposed(w, perm)
    assert got.dtype == real and got.flags.c_contiguous
    np.testing.assert_array_equal(got, numpy_gather_transposed(w, perm))
    np.testing.assert_array_equal(native_gather_transposed(w[:, ::2], perm[:20] // 2), w[:, ::2].T[perm[:20] // 2])
    with pytest.raises(ValueError, match="outside 0..44"):
        native_gather_transposed(w, np.array([0, 45]))


@pytest.mark.parametrize("real", [np.float32, np.float64])
def test_native_damped_hessian_in_order_is_numpys(rng, real):
    if kernels.kernel_info().available is False:
        pytest.skip("native kernels unavailable here (no g++ or no AVX2)")
    h = rng.randn(37, 37)   # not symmetric: rows and columns must each follow the order
    order, diag = rng.permutation(37), rng.rand(37) + 1.0
    got = native_damped_in_order(h, order, diag, real)
    assert got.dtype == real and got.flags.c_contiguous
    np.testing.assert_array_equal(got, numpy_damped_in_order(h, order, diag, real))
    np.testing.assert_array_equal(np.diag(got), diag.astype(real))
    with pytest.raises(ValueError, match="outside 0..36"):
        native_damped_in_order(h, np.r_[order[:-1], 37], diag, real)


@pytest.mark.parametrize("real", [np.float32, np.float64])
def test_native_transposed_subtraction_is_numpys(rng, real):
    if kernels.kernel_info().available is False:
        pytest.skip("native kernels unavailable here (no g++ or no AVX2)")
    a, b = rng.randn(70, 45).astype(real), rng.randn(45, 70).astype(real)   # not multiples of the 32-element tiles
    want = a.copy()
    numpy_subtract_transposed(want, b)
    native_subtract_transposed(a, b)
    np.testing.assert_array_equal(a, want)


@pytest.mark.parametrize("group_size, bits, ratio", [(0, 8, 0.8), (8, 4, 0.8), (0, 4, 0.98)])
def test_gptq_beats_round_to_nearest_on_the_output(rng, group_size, bits, ratio):
    """4-bit per channel saturates often (a 15-level grid over a whole row): less room to compensate."""
    w, h, x = problem(rng, rows=400)
    codes, scale, zp = gptq_quantize(w, h, group_size, True, bits)
    gptq = dequantize_weight(codes, scale, zp, group_size)
    rtn = fake_quantize_weight(w, group_size, True, bits)
    def err(q):
        return float(((x @ (w - q).T) ** 2).sum())
    assert err(gptq) < ratio * err(rtn), (err(gptq), err(rtn))


def test_module_reads_its_algo_args():
    config = PTQConfig(precision_recovery="GPTQ", algo_args={"gptq_damp_percent": 0.05, "gptq_block_size": 32,
                                                               "gptq_act_order": True})
    module = PTQ(config).pipeline[0]
    assert isinstance(module, GPTQModule) and (module.damp_percent, module.block_size, module.act_order) == (0.05, 32, True)
    with pytest.raises(ValueError, match=r"algo_args\['gptq_act_order'\].*not a boolean"):
        PTQConfig(algo_args={"gptq_act_order": 1})


class RecordingGPTQ(GPTQModule):
    """GPTQ that keeps what it chose for each cell, to compare with what the cell deploys."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.chosen = {}

    def process(self, ctx):
        super().process(ctx)
        for rel, cell in ctx.quant_cells.items():
            if getattr(cell, "weight_preset", None) is not None:
                self.chosen[ctx.full_name(rel)] = cell.weight_preset


SCHEMES = {
    "a16w8": dict(),
    "a16w4_g40_ragged": dict(weight_bits=4, weight_quant_granularity=QuantGranularity.PER_GROUP, group_size=40),
    "a16w4_g40_m3": dict(weight_bits=4, weight_quant_granularity=QuantGranularity.PER_GROUP, group_size=40,
                         weight_symmetric=False, anti_method="m3", algo_args={"gptq_act_order": True}),
    "a8w8_static": dict(act_quant_dtype=I8),
    "a8w8_dynamic_m2": dict(act_quant_dtype=I8, act_quant_granularity=QuantGranularity.PER_TOKEN, anti_method="m2"),
}


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_deployed_network_holds_gptqs_codes_and_scales(tmp_path, tiny_config, scheme):
    kwargs = dict(SCHEMES[scheme], precision_recovery="GPTQ")   # AWQ's clip ratios (m3) shape GPTQ's grid
    net = LlamaForCausalLM(tiny_config, seed=0)
    ids = np.random.RandomState(9).randint(0, tiny_config.vocab_size, (2, 20))
    reference = net(ids).asnumpy()
    config = PTQConfig(**kwargs)
    ptq = PTQ(config)
    assert [type(m).__name__ for m in ptq.pipeline][-2:] == ["GPTQModule", "QuantizeModule"]
    recorder = RecordingGPTQ()
    ptq.pipeline[-2] = recorder
    ptq.apply(net, None, calibration(tiny_config))
    ptq.convert(net)
    cells = {n: c for n, c in net.cells_and_names() if isinstance(c, QuantLinear)}
    assert set(recorder.chosen) == set(cells)   # every quantized Linear, lm_head included
    group = config.group_size
    for name, cell in cells.items():
        codes, scale, zp = recorder.chosen[name]
        np.testing.assert_array_equal(cell.weight.asnumpy(), codes, err_msg=name)
        if cell.spec.act and not cell.spec.act_dynamic:   # static W8A8 folds the weight scale into deq_scale
            deployed_scale = cell.deq_scale.asnumpy() / cell.input_scale.asnumpy()[0]
            np.testing.assert_allclose(deployed_scale, scale, rtol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(cell.weight_scale.asnumpy(), scale, err_msg=name)
        if group:
            assert cell.weight_scale.shape == (cell.out_features, -(-cell.in_features // group))
    quantized = net(ids).asnumpy()
    assert 0 < np.abs(quantized - reference).max() / np.abs(reference).max() < 0.3
    path = str(tmp_path / "q.safetensors")
    save_checkpoint(net, path)
    deployed = LlamaForCausalLM(tiny_config, seed=5)
    dptq = PTQ(PTQConfig(mode=PTQMode.DEPLOY, **kwargs))
    dptq.apply(deployed)
    dptq.convert(deployed)
    load_checkpoint(path, deployed)
    np.testing.assert_allclose(deployed(ids).asnumpy(), quantized, atol=1e-6, rtol=0)


def test_gptq_lowers_the_logit_error_of_4bit_weights(tiny_config):
    ids = np.random.RandomState(3).randint(0, tiny_config.vocab_size, (4, 24))
    errors = {}
    for name, extra in (("rtn", {}), ("gptq", dict(precision_recovery="GPTQ"))):
        net = LlamaForCausalLM(tiny_config, seed=0)
        reference = net(ids).asnumpy()
        PTQ(PTQConfig(weight_bits=4, weight_quant_granularity=QuantGranularity.PER_GROUP, group_size=16,
                      **extra)).apply(net, None, calibration(tiny_config, n=6))
        errors[name] = float(((net(ids).asnumpy() - reference) ** 2).sum() / (reference ** 2).sum())
    assert errors["gptq"] < 0.9 * errors["rtn"], errors   # random weights, uncorrelated tokens: a modest gain


def test_quantize_module_alone_leaves_no_preset(tiny_config):
    """Without GPTQ nothing sets a preset: round-to-nearest, as before."""
    net = LlamaForCausalLM(tiny_config, seed=0)
    ptq = PTQ(PTQConfig())
    assert [type(m) for m in ptq.pipeline] == [QuantizeModule]
    ptq.apply(net, None, calibration(tiny_config))
    cell = net.model.layers[0].attention.wq
    assert cell.weight_preset is None


def test_recorder_sums_the_gram_matrix_over_every_row(rng):
    from golden_ptq.algorithm.modules import InputRecorder
    batches = [rng.randn(7, 5).astype(np.float32), rng.randn(3, 5).astype(np.float32)]
    recorder = InputRecorder(max_rows=0, gram=True)
    for b in batches:
        recorder(b)
    x = np.concatenate(batches).astype(np.float64)
    assert recorder.gram_rows == 10 and recorder.kept == 0
    np.testing.assert_allclose(recorder.gram, x.T @ x, rtol=1e-5)
