"""What calibration computes once instead of again: shared inputs (host copy, channel range, gram),
unread products skipped, grams recorded in the calibration pass when nothing changes the weights
before GPTQ, one Hessian factor per distinct input, one scorer per smoothing mapping. Each shortcut
must give exactly what the long way gives."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from golden_ptq import PTQ, PTQConfig, QuantGranularity
from golden_ptq.algorithm.calibration_data import length_batches, token_rows
from golden_ptq.algorithm.driver import grams_in_calibration_pass, unread_outputs
from golden_ptq.algorithm.modules import AlgoModule, GPTQModule, InputRecorder, QuantizeModule
from golden_ptq.algorithm.modules import gptq as gptq_module
from golden_ptq.algorithm.modules.gptq import HessianFactor, gptq_quantize, gptq_round
from golden_ptq.algorithm.modules.rotation import RotationModule
from golden_ptq.algorithm.modules.smooth_search import (CandidateScorer, OutlierSuppressionPlusModule,
                                                        SmoothSearchModule, mapping_input, quantized_output_error)
from golden_ptq.networks.layers import Linear
from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.networks.structure import LlamaStructure
from golden_ptq.quant_cells import LayerQuantSpec, QuantLinear
from golden_ptq.quant_math.input_sharing import shared, sharing
from golden_ptq.quant_math.observers import MinMaxObserver
from test_ptq_toy import calibration

I8 = ms.int8
PER_TOKEN = QuantGranularity.PER_TOKEN


def test_shared_values_live_only_inside_sharing():
    made = []

    def make():
        made.append(1)
        return len(made)

    source, other = object(), object()
    assert shared(source, "v", make) == 1 and shared(source, "v", make) == 2   # outside: nothing kept
    with sharing():
        assert shared(source, "v", make) == 3 and shared(source, "v", make) == 3
        assert shared(source, "w", make) == 4                                  # another value: its own slot
        assert shared(other, "v", make) == 5 and shared(source, "v", make) == 6   # the last source only
    assert shared(source, "v", make) == 7


def test_observers_sharing_an_input_get_equal_ranges_and_keep_their_own(rng):
    x = rng.randn(6, 4).astype(np.float32)
    a, b = MinMaxObserver(), MinMaxObserver()
    with sharing():
        a.update(x)
        b.update(x)
    assert a.minimum is not b.minimum
    np.testing.assert_array_equal(a.minimum, x.min(axis=0))
    a.scale_channels(np.full(4, 2.0))   # a rescale of one leaves the other alone
    np.testing.assert_array_equal(b.maximum, x.max(axis=0))


def _linear(rng, spec=LayerQuantSpec(weight=True, act=True)):
    linear = Linear(8, 5)
    linear.weight.set_data(Tensor(rng.randn(5, 8).astype(np.float32)))
    return QuantLinear(linear, spec)


def test_unread_product_is_skipped_but_observer_and_recorder_see_the_input(rng):
    cell = _linear(rng)
    x = rng.randn(2, 3, 8).astype(np.float32)
    cell.recorder = InputRecorder()
    cell.observing = True
    with unread_outputs({"w2": cell, "wq": _linear(rng)}, ["w2"]):
        assert cell.output_unread
        y = cell(Tensor(x)).asnumpy()
    assert not cell.output_unread
    assert y.shape == (2, 3, 5) and not y.any()
    np.testing.assert_array_equal(cell.recorder.rows(), x.reshape(6, 8))
    np.testing.assert_array_equal(cell.input_observer.minimum, x.reshape(6, 8).min(axis=0))
    np.testing.assert_allclose(cell(Tensor(x)).asnumpy(), x @ cell.weight.asnumpy().T, rtol=1e-5, atol=1e-6)


class MightChangeWeights(AlgoModule):
    """A module that changes nothing but does not promise so (the default)."""

    name = "might_change_weights"

    def process(self, ctx):
        pass


@pytest.mark.parametrize("pipeline, expected", [
    ([GPTQModule(), QuantizeModule()], True),
    ([RotationModule(), GPTQModule(), QuantizeModule()], True),
    ([SmoothSearchModule(), GPTQModule(), QuantizeModule()], True),    # it rescales the grams it changes
    ([OutlierSuppressionPlusModule(), GPTQModule(), QuantizeModule()], True),   # drops them: a gram pass
    ([MightChangeWeights(), GPTQModule(), QuantizeModule()], False),
    ([QuantizeModule()], False),
])
def test_grams_are_recorded_in_the_calibration_pass_only_when_no_module_before_may_change_weights(pipeline, expected):
    assert grams_in_calibration_pass(pipeline) is expected


def _calibrated(tiny_config, config, **ptq_kwargs):
    net = LlamaForCausalLM(tiny_config, seed=0)
    ptq = PTQ(config, **ptq_kwargs)
    ptq.apply(net, None, calibration(tiny_config))
    ptq.convert(net)
    return {n: p.asnumpy() for n, p in net.parameters_and_names()}, ptq


def _assert_same(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def _count_layer_runs(monkeypatch):
    runs = []
    original = LlamaStructure.run_layer

    def counting(self, layer, hidden, inputs):
        runs.append(1)
        return original(self, layer, hidden, inputs)

    monkeypatch.setattr(LlamaStructure, "run_layer", counting)
    return runs


@pytest.mark.parametrize("extra", [dict(), dict(kvcache_quant_dtype=I8, weight_bits=4, group_size=16,
                                                 weight_quant_granularity=QuantGranularity.PER_GROUP)])
def test_grams_of_the_calibration_pass_equal_those_of_a_pass_of_their_own(tiny_config, monkeypatch, extra):
    config = PTQConfig(precision_recovery="GPTQ", **extra)
    runs = _count_layer_runs(monkeypatch)
    early, _ = _calibrated(tiny_config, config)
    early_runs = len(runs)
    runs.clear()
    late, _ = _calibrated(tiny_config, config, pipeline=[MightChangeWeights(), GPTQModule(), QuantizeModule()])
    _assert_same(early, late)
    batches = len(length_batches(token_rows(calibration(tiny_config)), 8))   # PTQ's calib_batch_size
    assert early_runs == 2 * batches * tiny_config.num_layers   # calibration pass + output pass
    assert len(runs) == 3 * batches * tiny_config.num_layers    # + the gram pass


def _recorded_grams(monkeypatch):
    seen = []
    original = GPTQModule._input_grams

    def recording(ctx, cells):
        grams = original(ctx, cells)
        seen.append((ctx.name, {rel: (g.copy(), rows) for rel, (g, rows) in grams.items()}))
        return grams

    monkeypatch.setattr(GPTQModule, "_input_grams", staticmethod(recording))
    return seen


@pytest.mark.parametrize("module, passes", [(SmoothSearchModule, 2), (OutlierSuppressionPlusModule, 3)])
def test_smoothing_rescales_the_calibration_pass_grams_instead_of_a_gram_pass(tiny_config, monkeypatch, module,
                                                                              passes):
    """m2's rescaled grams are those a pass of their own takes (to float rounding); m4 shifts the
    quantized input, so its layers' grams come from a pass."""
    config = PTQConfig(act_quant_dtype=I8, act_quant_granularity=PER_TOKEN, precision_recovery="GPTQ")
    runs, seen = _count_layer_runs(monkeypatch), _recorded_grams(monkeypatch)
    _calibrated(tiny_config, config, pipeline=[module(alpha_grid=3), GPTQModule(), QuantizeModule()])
    batches = len(length_batches(token_rows(calibration(tiny_config)), 8))
    assert len(runs) == passes * batches * tiny_config.num_layers
    early = dict(seen)
    seen.clear()
    _calibrated(tiny_config, config, pipeline=[module(alpha_grid=3), MightChangeWeights(), GPTQModule(),
                                               QuantizeModule()])
    layer = "model.layers.0"   # later layers' inputs depend on GPTQ's codes, which may round apart
    assert sorted(early[layer]) == sorted(dict(seen)[layer])
    for rel, (gram, rows) in dict(seen)[layer].items():
        assert early[layer][rel][1] == rows
        np.testing.assert_allclose(early[layer][rel][0], gram, rtol=2e-5, atol=2e-5 * np.abs(gram).max(), err_msg=rel)


class NoUnreadOutputs(LlamaStructure):
    unread_output_linears = ()


@pytest.mark.parametrize("extra", [
    dict(act_quant_dtype=I8, anti_method="m2", act_method=3, precision_recovery="GPTQ"),   # histograms re-observed
    dict(act_quant_dtype=I8, act_quant_granularity=PER_TOKEN, anti_method="m4", kvcache_quant_dtype=I8,
         embedding_quant_dtype=I8, precision_recovery="GPTQ"),
])
def test_skipping_unread_products_changes_nothing(tiny_config, extra):
    config = PTQConfig(**extra)
    skipped, ptq_a = _calibrated(tiny_config, config, measure_sensitivity=True)
    full, ptq_b = _calibrated(tiny_config, config, measure_sensitivity=True, structure=NoUnreadOutputs())
    _assert_same(skipped, full)
    assert ptq_a.range_parms == ptq_b.range_parms and ptq_a.output_errors == ptq_b.output_errors


@pytest.mark.parametrize("group_size, symmetric, bits, act_order", [(0, True, 8, True), (8, False, 4, False)])
def test_rounding_against_a_shared_factor_is_gptq(rng, group_size, symmetric, bits, act_order):
    x = rng.randn(50, 20) @ (np.eye(20) + 0.3 * rng.randn(20, 20))
    hessian = 2.0 * x.T @ x / 50
    factor = HessianFactor(hessian, 0.01, act_order)
    for _ in range(2):   # the factor is not changed by a rounding
        w = rng.randn(6, 20)
        expected = gptq_quantize(w, hessian, group_size, symmetric, bits, 8, 0.01, act_order)
        got = gptq_round(w, factor, group_size, symmetric, bits, 8)
        for a, b in zip(got, expected):
            if b is None:
                assert a is None
            else:
                np.testing.assert_array_equal(a, b)


def test_one_hessian_factor_per_distinct_input(tiny_config, monkeypatch):
    made = []

    class Counting(HessianFactor):
        def __init__(self, *args, **kwargs):
            made.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(gptq_module, "HessianFactor", Counting)
    _calibrated(tiny_config, PTQConfig(precision_recovery="GPTQ"))
    # per layer: wq/wk/wv share one input, w1/w3 another, wo and w2 their own; lm_head its own
    assert len(made) == 4 * tiny_config.num_layers + 1


class Checking:
    """A searched smoothing whose every candidate is also scored on its own, by quantized_output_error."""

    checked = 0

    def candidates(self, ctx, mapping, stats):
        found = super().candidates(ctx, mapping, stats)
        x = mapping_input(ctx, mapping, stats)
        scorer = CandidateScorer(stats, x)
        for _, scale, shift in found:
            shift_e = None if shift is None else (shift / scale)[stats.expand]
            alone = quantized_output_error(stats, x, scale[stats.expand], shift_e)
            assert scorer.error(scale[stats.expand], shift_e) == alone
            Checking.checked += 1
        return found


class CheckingScorer(Checking, SmoothSearchModule):
    pass


class CheckingShiftScorer(Checking, OutlierSuppressionPlusModule):
    pass


@pytest.mark.parametrize("module, extra", [
    (CheckingScorer, dict(act_quant_dtype=I8)),                                   # static per-tensor ranges
    (CheckingScorer, dict(act_quant_dtype=I8, act_quant_granularity=PER_TOKEN)),  # per-token inputs
    (CheckingShiftScorer, dict(act_quant_dtype=I8)),                              # m4: shift and scale
])
def test_a_mappings_scorer_gives_each_candidates_own_error(tiny_config, module, extra):
    Checking.checked = 0
    _calibrated(tiny_config, PTQConfig(**extra), pipeline=[module(alpha_grid=3), QuantizeModule()])
    assert Checking.checked == tiny_config.num_layers * 4 * 4   # 4 mappings, identity + 3 alphas each
