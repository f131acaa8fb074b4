"""Quantization math against hand-computed numpy references, and the exact integer matmul."""
import mindspore as ms
import numpy as np
import pytest

from golden_ptq.quant_cells.linear_kernels import EXACT_CHUNK, int_matmul
from golden_ptq.quant_math import (MinMaxObserver, asymmetric_params, dequantize, fake_quantize_act,
                                   fake_quantize_per_token, fake_quantize_weight, quantize, quantize_weight,
                                   symmetric_scale)
from golden_ptq.quant_math.functions import act_codes, integer_product, per_token_codes, weight_codes


def test_symmetric_weight_quantization_per_channel():
    w = np.array([[0.5, -1.0, 0.25], [2.0, 0.0, -0.02]], np.float32)
    q, scale, zp = quantize_weight(w)
    np.testing.assert_allclose(scale, [1.0 / 127, 2.0 / 127], rtol=1e-6)
    assert q.dtype == np.int8 and zp is None
    np.testing.assert_array_equal(q, [[64, -127, 32], [127, 0, -1]])  # 63.5 -> 64 (half to even), -1.27 -> -1
    assert np.abs(dequantize(q, scale[:, None]) - w).max() <= scale.max() / 2 + 1e-7


def test_group_quantization_has_one_scale_per_group():
    rng = np.random.RandomState(0)
    w = rng.randn(4, 8).astype(np.float32)
    w[0, :4] *= 100  # an outlier group must not coarsen the other group of the row
    q, scale, _ = quantize_weight(w, group_size=4)
    assert scale.shape == (4, 2)
    np.testing.assert_allclose(scale, np.abs(w.reshape(4, 2, 4)).max(-1) / 127, rtol=1e-6)
    deq = dequantize(q.reshape(4, 2, 4), scale[..., None]).reshape(4, 8)
    assert np.abs(deq - w)[0, 4:].max() <= scale[0, 1] / 2 + 1e-7


def test_asymmetric_params_map_range_and_keep_zero_exact():
    scale, zp = asymmetric_params(np.array([-1.0]), np.array([3.0]))
    np.testing.assert_allclose(scale, [4.0 / 255], rtol=1e-6)
    assert zp[0] == np.round(-128 + 1.0 / scale[0])
    codes = quantize(np.array([-1.0, 0.0, 3.0]), scale, zp, symmetric=False)
    assert codes[0] == -128 and codes[2] == 127
    assert dequantize(codes[1:2], scale, zp)[0] == 0.0
    scale, zp = asymmetric_params(np.array([0.5]), np.array([2.0]))  # range widened to contain 0
    assert quantize(np.array([0.0]), scale, zp, symmetric=False)[0] == -128


def test_asymmetric_weights():
    w = np.array([[0.0, 1.0, 2.0, 3.0]], np.float32)
    q, scale, zp = quantize_weight(w, symmetric=False)
    np.testing.assert_allclose(dequantize(q, scale[:, None], zp[:, None]), w, atol=scale[0] / 2 + 1e-7)


def test_symmetric_scale_of_zero_channel_is_positive():
    assert symmetric_scale(np.array([0.0]))[0] > 0


def test_observer_tracks_channels_and_rescales():
    obs = MinMaxObserver()
    obs.update(np.array([[1.0, -4.0], [2.0, 0.5]]))
    obs.update(np.array([[-3.0, 1.0]]))
    np.testing.assert_array_equal(obs.minimum, [-3.0, -4.0])
    np.testing.assert_array_equal(obs.absmax(), [3.0, 4.0])
    assert obs.tensor_range() == (-4.0, 2.0)
    obs.scale_channels(np.array([0.5, 2.0]))
    assert obs.tensor_range() == (-8.0, 2.0) and obs.rows == 3
    with pytest.raises(RuntimeError, match="no data"):
        MinMaxObserver().absmax()


@pytest.mark.parametrize("k", [7, EXACT_CHUNK, 2500])
def test_int_matmul_is_exact_int32_accumulation(k):
    rng = np.random.RandomState(k)
    x = rng.randint(-128, 128, size=(5, k))
    w = rng.randint(-127, 128, size=(3, k))
    x[0] = -128
    w[0] = -127  # worst-case sum: k * 16256, beyond float32's exact range for k > 1032
    got = int_matmul(ms.Tensor(x.astype(np.float32)), ms.Tensor(w.astype(np.int8))).asnumpy()
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, x.astype(np.int64) @ w.T.astype(np.int64))


def test_ragged_groups_quantize_each_group_on_its_own_range(rng):
    """576 % 128 != 0 in SmolLM2: a row of 10 in groups of 4 is 4 + 4 + 2, each with its own scale."""
    w = rng.randn(3, 10).astype(np.float32)
    for bits, symmetric in ((8, True), (4, True), (4, False)):
        q, scale, zp = quantize_weight(w, group_size=4, symmetric=symmetric, bits=bits)
        assert q.shape == (3, 10) and scale.shape == (3, 3)
        for g, cols in enumerate((slice(0, 4), slice(4, 8), slice(8, 10))):
            q_g, scale_g, zp_g = quantize_weight(w[:, cols], 0, symmetric, bits)
            np.testing.assert_array_equal(q[:, cols], q_g)
            np.testing.assert_array_equal(scale[:, g], scale_g)
            if not symmetric:
                np.testing.assert_array_equal(zp[:, g], zp_g)
        deq = fake_quantize_weight(w, 4, symmetric, bits)
        assert deq.shape == w.shape and np.abs(deq - w).max() <= 0.5 * scale.max() * (1 + 1e-6)


def test_float16_static_scales_round_up_to_a_half_value_and_keep_the_range():
    from golden_ptq.quant_math.functions import representable_scale, static_act_params
    rng = np.random.default_rng(3)
    scales = (np.abs(rng.standard_normal(1000)) * 10.0 ** rng.integers(-4, 2, 1000)).astype(np.float32)
    half = representable_scale(scales, "float16")
    assert np.all(half.astype(np.float16).astype(np.float32) == half)  # exactly a float16 value
    assert np.all(half >= scales)  # rounded up: nothing the float32 scale kept is clipped
    below = np.nextafter(half.astype(np.float16), np.float16(0)).astype(np.float32)
    assert np.all(below < scales)  # the smallest such value
    assert np.array_equal(representable_scale(scales), scales)
    lo, hi = -0.7312, 5.123
    scale, zero_point = static_act_params(lo, hi, symmetric=False, scale_dtype="float16")
    assert np.float16(scale[0]) == scale[0]
    codes = np.clip(np.round(np.array([lo, 0.0, hi]) / scale) + zero_point, -128, 127)
    assert codes[1] == zero_point[0] and codes[0] >= -128 and codes[2] <= 127
    with pytest.raises(ValueError, match="allowed"):
        representable_scale(scales, "bfloat16")


@pytest.mark.parametrize("k, top", [(7, 127), (1500, 127), (700, 255), (3000, 255)])
def test_integer_product_is_exact_where_float32_alone_is_not(k, top):
    rng = np.random.RandomState(k)
    a = rng.randint(-top, top + 1, size=(6, k)).astype(np.float64)
    b = rng.randint(-top, top + 1, size=(4, k)).astype(np.float64)
    a[0], b[0] = top, top   # worst-case sum k * top^2: beyond 2**24 when the span is exceeded
    got = integer_product(a, b)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, (a.astype(np.int64) @ b.T.astype(np.int64)).astype(np.float64))


def test_factored_quantizers_give_the_fake_quantizers_bits():
    rng = np.random.RandomState(3)
    x, w = rng.randn(9, 40) * 3, rng.randn(7, 40)
    codes, scale = per_token_codes(x)
    np.testing.assert_array_equal(codes * scale, fake_quantize_per_token(x))
    assert np.array_equal(codes, np.round(codes)) and np.abs(codes).max() <= 127
    for symmetric in (True, False):
        codes, scale = act_codes(x, -2.0, 5.0, symmetric)
        np.testing.assert_array_equal(codes * scale, fake_quantize_act(x, -2.0, 5.0, symmetric))
        assert np.array_equal(codes, np.round(codes))
        for bits in (8, 4):
            codes, scale = weight_codes(w, symmetric, bits)
            np.testing.assert_array_equal(codes * scale[:, None], fake_quantize_weight(w, 0, symmetric, bits))
            assert np.array_equal(codes, np.round(codes))
