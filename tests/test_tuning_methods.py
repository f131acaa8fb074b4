"""Outlier-suppression methods m1-m6 on toy networks with planted outlier channels."""
import mindspore as ms
import numpy as np
import pytest

from golden_ptq import PTQ, PTQConfig, PTQMode, QuantGranularity
from golden_ptq.algorithm.modules import (AWQModule, FlexSmoothModule, OutlierSuppressionPlusModule, SmoothModule,
                                          SmoothSearchModule, build_anti_outlier_module)
from golden_ptq.io.checkpoint import load_checkpoint, save_checkpoint
from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.quant_math import fake_quantize_weight, quantize_weight
from test_ptq_toy import calibration, planted_outlier_network

I8 = ms.int8
EVAL_IDS = np.random.RandomState(3).randint(0, 97, (4, 24))


def rel_mse(a, b):
    return float(((a - b) ** 2).sum() / (b ** 2).sum())


def logits_error(tiny_config, **kwargs):
    net = planted_outlier_network(tiny_config)
    reference = net(EVAL_IDS).asnumpy()
    ptq = PTQ(PTQConfig(**kwargs))
    ptq.apply(net, None, calibration(tiny_config, n=4))
    ptq.convert(net)
    return rel_mse(net(EVAL_IDS).asnumpy(), reference), ptq


@pytest.fixture
def w8a8_errors(tiny_config):
    return {m: logits_error(tiny_config, act_quant_dtype=I8, anti_method=m)[0] for m in (None, "m1")}


def test_methods_by_code_and_name():
    assert isinstance(build_anti_outlier_module("m1"), SmoothModule)
    assert isinstance(build_anti_outlier_module("smooth_search"), SmoothSearchModule)
    assert isinstance(build_anti_outlier_module("M3"), AWQModule)
    assert isinstance(build_anti_outlier_module("os_plus"), OutlierSuppressionPlusModule)
    assert isinstance(build_anti_outlier_module("m6"), FlexSmoothModule)
    with pytest.raises(NotImplementedError, match="'m5' .*CBQ.*not implemented yet"):
        build_anti_outlier_module("m5")
    with pytest.raises(NotImplementedError, match="CBQ"):
        PTQConfig(act_quant_dtype=I8, anti_method="cbq")
    with pytest.raises(ValueError, match="'m7' is not a known outlier-suppression method; allowed: m1"):
        PTQConfig(act_quant_dtype=I8, anti_method="m7")
    with pytest.raises(ValueError, match=r"'m2' \(smooth_search\) works on quantized activations and needs "
                                         r"act_quant_dtype=int8; for weight-only use m3 \(awq\)"):
        PTQConfig(anti_method="m2")
    with pytest.raises(ValueError, match="'m3' .*weight-only"):
        PTQConfig(act_quant_dtype=I8, anti_method="m3")


@pytest.mark.parametrize("method", ["m2", "m6"])
def test_searched_smoothing_beats_m1(tiny_config, w8a8_errors, method):
    error, ptq = logits_error(tiny_config, act_quant_dtype=I8, anti_method=method)
    assert error < 0.95 * w8a8_errors["m1"] < w8a8_errors[None], (error, w8a8_errors)
    module = ptq.pipeline[0]
    assert len(module.chosen) == 8  # 4 mappings x 2 layers, each with a chosen candidate
    assert all(chosen <= identity for identity, chosen in module.errors.values())


def test_os_plus_shift_reduces_error_and_deploys(tmp_path, tiny_config, w8a8_errors):
    error, ptq = logits_error(tiny_config, act_quant_dtype=I8, anti_method="m4")
    assert error < 0.3 * w8a8_errors[None], (error, w8a8_errors)
    assert all(label.endswith("+shift") for label in ptq.pipeline[0].chosen.values())
    # the shift lives in each W8A8 balance layer: input_shift / shift_bias, rebuilt by DEPLOY
    net = planted_outlier_network(tiny_config)
    cfg = PTQConfig(act_quant_dtype=I8, anti_method="m4")
    ptq = PTQ(cfg)
    ptq.apply(net, None, calibration(tiny_config, n=4))
    ptq.convert(net)
    params = net.parameters_dict()
    assert params["model.layers.0.attention.wq.input_shift"].shape == (tiny_config.hidden_size,)
    assert "model.layers.0.feed_forward.w2.shift_bias" in params and "lm_head.input_shift" not in params
    expected = net(EVAL_IDS).asnumpy()
    save_checkpoint(net, str(tmp_path / "m4.ckpt"))
    deployed = LlamaForCausalLM(tiny_config, seed=7)
    ptq2 = PTQ(PTQConfig(mode=PTQMode.DEPLOY, act_quant_dtype=I8, anti_method="m4"))
    ptq2.apply(deployed)
    ptq2.convert(deployed)
    load_checkpoint(str(tmp_path / "m4.ckpt"), deployed)
    np.testing.assert_allclose(deployed(EVAL_IDS).asnumpy(), expected, atol=1e-5, rtol=0)


def test_os_plus_shift_alone_keeps_the_float_function(tiny_config):
    """The shift is exact in float: only the quantized input changes (Quantize not run)."""
    net = planted_outlier_network(tiny_config)
    reference = net(EVAL_IDS).asnumpy()
    module = OutlierSuppressionPlusModule(alpha_grid=3)
    PTQ(PTQConfig(act_quant_dtype=I8, anti_method="m4"), pipeline=[module]).apply(net, None, calibration(tiny_config))
    np.testing.assert_allclose(net(EVAL_IDS).asnumpy(), reference, rtol=1e-4, atol=1e-4)
    wq = net.model.layers[0].attention.wq
    assert wq.input_shift_value is not None and np.abs(wq.input_shift_value).max() > 0


@pytest.mark.parametrize("kwargs", [
    dict(),                                                                           # W8A16 per channel
    dict(weight_bits=4, weight_quant_granularity=QuantGranularity.PER_GROUP, group_size=16),   # W4A16 g16
])
def test_awq_reduces_weight_only_error(tiny_config, kwargs):
    plain, _ = logits_error(tiny_config, **kwargs)
    awq, ptq = logits_error(tiny_config, anti_method="m3", **kwargs)
    assert awq < 0.7 * plain, (awq, plain)
    module = ptq.pipeline[0]
    assert len(module.chosen) == 8 and any(r > 0 for r in module.chosen.values())
    assert module.clipped and all(0.5 <= c <= 1.0 for c in module.clipped.values())


def test_w4_codes_fit_four_bits_and_deploy(tmp_path, tiny_config):
    kwargs = dict(weight_bits=4, weight_quant_granularity=QuantGranularity.PER_GROUP, group_size=16, anti_method="m3")
    net = planted_outlier_network(tiny_config)
    ptq = PTQ(PTQConfig(**kwargs))
    ptq.apply(net, None, calibration(tiny_config))
    ptq.convert(net)
    weight = net.model.layers[0].attention.wq.weight.asnumpy()
    assert weight.dtype == np.int8 and weight.min() >= -7 and weight.max() <= 7
    assert "W4A16-g16" in ptq.summary()
    expected = net(EVAL_IDS).asnumpy()
    path = str(tmp_path / "w4.safetensors")
    save_checkpoint(net, path)
    deployed = LlamaForCausalLM(tiny_config, seed=5)
    ptq2 = PTQ(PTQConfig(mode=PTQMode.DEPLOY, **kwargs))
    ptq2.apply(deployed)
    ptq2.convert(deployed)
    load_checkpoint(path, deployed)
    np.testing.assert_allclose(deployed(EVAL_IDS).asnumpy(), expected, atol=1e-5, rtol=0)


def test_four_bit_and_clip_math():
    rng = np.random.RandomState(0)
    w = rng.randn(6, 32).astype(np.float32)
    q, scale, zp = quantize_weight(w, 16, True, bits=4)
    assert q.min() >= -7 and q.max() <= 7 and zp is None and scale.shape == (6, 2)
    q, scale, zp = quantize_weight(w, 0, False, bits=4)
    assert q.min() >= -8 and q.max() <= 7 and zp.shape == (6,)
    # 8-bit without clip equals the original path; a clip ratio shrinks the scale by that ratio
    q8, s8, _ = quantize_weight(w)
    _, s_clip, _ = quantize_weight(w, clip_ratio=np.full(6, 0.5))
    np.testing.assert_allclose(s_clip, s8 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(fake_quantize_weight(w), q8 * s8[:, None], rtol=1e-6)
    with pytest.raises(ValueError, match=r"weight bits 3 not supported; allowed: \[4, 8\]"):
        quantize_weight(w, bits=3)
