"""The smoothing searches' native candidate error (candidate_score.cc) against the numpy route: the
same codes and scales bit for bit, errors equal up to the order of the final sum, the same choices."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from golden_ptq import PTQConfig, QuantGranularity
from golden_ptq.algorithm.modules import QuantizeModule
from golden_ptq.algorithm.modules.native_scoring import NativeScorer, NonFiniteRows, native_scorable
from golden_ptq.algorithm.modules import smooth_search
from golden_ptq.algorithm.modules.smooth_search import CandidateScorer, SmoothSearchModule, mapping_input
from golden_ptq.kernels.native import candidate_scoring
from golden_ptq.networks.layers import Linear
from golden_ptq.quant_cells import LayerQuantSpec, QuantLinear
from golden_ptq.quant_math.functions import act_codes, per_token_codes, weight_codes
from test_calibration_passes import _calibrated

pytestmark = pytest.mark.skipif(candidate_scoring() is None, reason="needs the native kernels (g++ and an x86-64 CPU)")


def _cell(rng, n, k, **spec):
    linear = Linear(k, n)
    linear.weight.set_data(Tensor(rng.randn(n, k).astype(np.float32)))
    return QuantLinear(linear, LayerQuantSpec(weight=True, act=True, **spec))


def _rows_with_ties(rng, rows, k):
    """Rows whose quantized values land exactly on .5 in places (rounding half to even decides)."""
    x = rng.randn(rows, k) * np.exp(rng.randn(1, k))
    x[:, 0] = 127.0 * np.sign(x[:, 0]) * np.abs(x).max(axis=1)   # the row's max: code +-127 exactly
    x[:, 1] = x[:, 0] * (2.5 / 127.0)                            # code 2.5 -> 2
    x[:, 2] = x[:, 0] * (3.5 / 127.0)                            # code 3.5 -> 4
    return x


def test_per_token_codes_are_numpys(rng):
    x, s = _rows_with_ties(rng, 37, 24), np.exp(0.1 * rng.randn(24))
    cell = _cell(rng, 5, 24, act_dynamic=True)
    codes, scale, per_row, zp = NativeScorer(x, {}, {}).input_codes(cell, s, None)
    want_codes, want_scale = per_token_codes(x / s[None, :])
    np.testing.assert_array_equal(codes, want_codes)
    np.testing.assert_array_equal(scale, want_scale[:, 0])
    assert per_row and zp == 0.0


@pytest.mark.parametrize("symmetric", [True, False])
def test_static_codes_are_numpys(rng, symmetric):
    x, s = rng.randn(29, 16), np.exp(0.1 * rng.randn(16))
    cell = _cell(rng, 5, 16, act_symmetric=symmetric)
    lo, hi = float((x / s).min()) * 0.7, float((x / s).max()) * 0.9   # some rows saturate
    codes, scale, per_row, zp = NativeScorer(x, {}, {}).input_codes(cell, s, (lo, hi))
    want_codes, want_scale = act_codes(x / s[None, :], lo, hi, symmetric)
    np.testing.assert_array_equal(codes.astype(np.float64) - zp, want_codes)
    assert scale[0] == want_scale and not per_row and (zp == 0.0) == symmetric


def test_weight_codes_and_errors_are_numpys(rng):
    n, k = 40, 24
    cell = _cell(rng, n, k, act_dynamic=True)
    w = cell.weight.asnumpy().astype(np.float64)
    w[0, :3] = [1.0, 2.5 / 127.0, 3.5 / 127.0]   # exact ties after the float32 rounding
    x, s = rng.randn(33, k), np.exp(0.2 * rng.randn(k))
    ref = x @ w.T
    scorer = NativeScorer(x, {id(cell): w}, {id(cell): ref})
    w_codes, w_scale = scorer.weight_codes(cell, s)
    want_codes, want_scale = weight_codes(w * s[None, :])
    np.testing.assert_array_equal(w_codes, want_codes)
    np.testing.assert_array_equal(w_scale, want_scale)
    x_codes, x_scale = per_token_codes(x / s[None, :])
    y = (x_codes @ want_codes.T) * x_scale * want_scale[None, :]
    got = scorer.error_sums(cell, s, scorer.input_codes(cell, s, None))
    assert got == pytest.approx(((y - ref) ** 2).sum(), rel=1e-12)


def test_non_finite_rows_go_to_numpy(rng):
    x = rng.randn(4, 8)
    x[2, 3] = np.nan
    with pytest.raises(NonFiniteRows):
        NativeScorer(x, {}, {}).input_codes(_cell(rng, 3, 8, act_dynamic=True), np.ones(8), None)


def test_only_per_channel_symmetric_8bit_quantized_activations_are_native(rng):
    assert native_scorable(_cell(rng, 4, 8, act_dynamic=True))
    assert native_scorable(_cell(rng, 4, 8, act_symmetric=False))
    assert not native_scorable(_cell(rng, 4, 8, weight_symmetric=False))
    assert not native_scorable(_cell(rng, 4, 8, group_size=4))
    linear = Linear(8, 4)
    linear.weight.set_data(Tensor(rng.randn(4, 8).astype(np.float32)))
    assert not native_scorable(QuantLinear(linear, LayerQuantSpec(weight=True, act=False)))


class NativeAgainstNumpy(SmoothSearchModule):
    """m2 whose every candidate is scored by both routes."""

    native_scored = 0

    def candidates(self, ctx, mapping, stats):
        found = super().candidates(ctx, mapping, stats)
        scorer = CandidateScorer(stats, mapping_input(ctx, mapping, stats))
        if scorer.native is not None:
            for _, scale, _ in found:
                scale_e = scale[stats.expand]
                assert scorer.error(scale_e) == pytest.approx(scorer._numpy_error(scale_e, None), rel=1e-12)
                NativeAgainstNumpy.native_scored += 1
        return found


@pytest.mark.parametrize("extra", [
    dict(act_quant_dtype=ms.int8),                                                      # static, asymmetric
    dict(act_quant_dtype=ms.int8, act_symmetric=True),                                  # static, symmetric
    dict(act_quant_dtype=ms.int8, act_quant_granularity=QuantGranularity.PER_TOKEN),   # per token
])
def test_searches_score_alike_and_choose_alike_on_both_routes(tiny_config, extra, monkeypatch):
    NativeAgainstNumpy.native_scored = 0
    pipeline = lambda: [NativeAgainstNumpy(alpha_grid=5), QuantizeModule()]   # noqa: E731
    native, _ = _calibrated(tiny_config, PTQConfig(**extra), pipeline=pipeline())
    assert NativeAgainstNumpy.native_scored == tiny_config.num_layers * 4 * 6
    monkeypatch.setattr(smooth_search, "native_scorable", lambda cell: False)   # the numpy route throughout
    NativeAgainstNumpy.native_scored = 0
    reference, _ = _calibrated(tiny_config, PTQConfig(**extra), pipeline=pipeline())
    assert NativeAgainstNumpy.native_scored == 0
    assert sorted(native) == sorted(reference)
    for name in reference:
        np.testing.assert_array_equal(native[name], reference[name], err_msg=name)
