"""Smoothing the w3 -> w2 pair through the rotation's online Hadamard (``rotation_online_smooth``):
the math against numpy references, float equivalence, save / DEPLOY, refusals."""
import mindspore as ms
import numpy as np
import pytest

from golden_ptq import PTQ, PTQConfig
from golden_ptq.algorithm.modules import smooth_transform
from golden_ptq.algorithm.modules.rotation import RotatedStructure, RotationModule
from golden_ptq.algorithm.modules.smooth import MappingStats
from golden_ptq.algorithm.modules.smooth_transform import (PreTransformStats, transform_weight,
                                                           transformed_output_error)
from golden_ptq.config.validation import ConfigError
from golden_ptq.deploy import load_quantized, save_quantized
from golden_ptq.networks.hadamard import OnlineHadamard, online_matrix
from golden_ptq.networks.layers import Linear
from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.networks.structure import LlamaStructure
from golden_ptq.quant_cells import LayerQuantSpec
from golden_ptq.quant_cells.linear import QuantLinear
from test_rotation import TEST_IDS, calibration, rel_error, tiny

I8 = ms.int8
ONLINE_SMOOTH = {"rotation_online_smooth": True, "alpha_grid": 3, "beta_grid": 2, "search_rows": 64}


@pytest.mark.parametrize("chunk", [1024, 3])   # rows transformed at a time: the result does not depend on it
def test_pre_transform_stats_match_numpy(monkeypatch, chunk):
    monkeypatch.setattr(smooth_transform, "ROW_CHUNK", chunk)
    rng = np.random.RandomState(0)
    transform = OnlineHadamard(64)
    t = online_matrix(64)
    batches = [rng.randn(n, 64) * rng.choice([1.0, 30.0], size=(n, 1)) for n in (7, 5, 9)]
    stats = PreTransformStats(transform, keep=4)
    for x in batches:
        stats(x @ t)                       # the layer sees u T; the recorder undoes T
    u = np.concatenate(batches)
    np.testing.assert_allclose(stats.minimum, u.min(axis=0), atol=1e-10)
    np.testing.assert_allclose(stats.maximum, u.max(axis=0), atol=1e-10)
    top = np.argsort(-np.abs(u).max(axis=1), kind="stable")[:4]
    np.testing.assert_allclose(stats.extreme, u[top], atol=1e-10)


def test_fold_through_transform_keeps_the_product():
    """((u / s) T) ((W diag(s)) T)ᵀ = u Wᵀ for the orthogonal, symmetric T."""
    rng = np.random.RandomState(1)
    transform = OnlineHadamard(32)
    u, w, s = rng.randn(6, 32), rng.randn(5, 32), rng.uniform(0.1, 10.0, 32)
    z = (u / s) @ online_matrix(32)
    np.testing.assert_allclose(z @ transform_weight(transform, w, s).T, u @ w.T, atol=1e-10)


def test_transformed_output_error_matches_numpy_reference():
    rng = np.random.RandomState(2)
    width, out = 32, 8
    linear = Linear(width, out)
    w_cell = rng.randn(out, width).astype(np.float32)
    linear.weight.set_data(ms.Tensor(w_cell))
    cell = QuantLinear(linear, LayerQuantSpec(weight=True, act=True))
    transform = OnlineHadamard(width)
    t = online_matrix(width)
    x = rng.randn(40, width)
    x[3, 5] = 80.0
    extreme = np.array([x[3]]) * 1.5   # a row outside the sample widens the range
    s = rng.uniform(0.5, 4.0, width)
    stats = MappingStats([cell], np.ones(width), np.ones(width), np.arange(width), None,
                         transform=transform, extreme=extreme)
    # reference: pre-T weight W T, candidate input (x / s) T, per-tensor asymmetric range, per-channel int8 weight
    w_pre = w_cell.astype(np.float64) @ t
    z, ze = (x / s) @ t, (extreme / s) @ t
    lo, hi = min(z.min(), ze.min(), 0.0), max(z.max(), ze.max(), 0.0)
    step = (hi - lo) / 255.0
    zp = np.round(-128 - lo / step)
    zq = (np.clip(np.round(z / step) + zp, -128, 127) - zp) * step
    w_new = ((w_pre * s) @ t).astype(np.float32).astype(np.float64)
    wscale = np.abs(w_new).max(axis=1, keepdims=True) / 127.0
    wq = np.round(w_new / wscale) * wscale
    ref = x @ w_pre.T
    expected = ((zq @ wq.T - ref) ** 2).sum() / (ref ** 2).sum()
    assert transformed_output_error(stats, x, s) == pytest.approx(expected, rel=1e-4)


def test_structure_keeps_the_w3_w2_mapping_through_the_transform():
    plain = RotatedStructure(LlamaStructure())
    kept = RotatedStructure(LlamaStructure(), smooth_online=True)
    assert not any(m.smooth == "feed_forward.w3" for m in plain.smooth_mappings)
    through = [m for m in kept.smooth_mappings if m.smooth == "feed_forward.w3"]
    assert len(through) == 1 and through[0].transform == "feed_forward.down_transform"
    assert all(m.transform is None for m in kept.smooth_mappings if m.smooth != "feed_forward.w3")


@pytest.mark.parametrize("anti", ["m1", "m2", "m6"])
def test_online_smoothing_keeps_the_float_function(anti):
    config = tiny()
    net = LlamaForCausalLM(config, seed=0)
    reference = net(TEST_IDS).asnumpy()
    ptq = PTQ(PTQConfig(rotation="hadamard", anti_method=anti, act_quant_dtype=I8, algo_args=ONLINE_SMOOTH),
              keep_float_cells=True)
    ptq.apply(net, None, calibration(config))
    if anti != "m1":
        assert "model.layers.1.feed_forward.w3" in ptq.pipeline[1].chosen
    ptq.roll_back(net, [r.name for r in ptq.records if not r.spec.skip_reason])
    assert rel_error(net(TEST_IDS).asnumpy(), reference) < 1e-4


def planted_w2_outliers(config):
    """A few w3 rows scaled up: a few huge channels of w2's input (SmolLM2's pattern)."""
    net = LlamaForCausalLM(config, seed=0)
    for layer in net.model.layers:
        w3 = layer.feed_forward.w3.weight
        w = w3.asnumpy()
        w[[4, 50]] *= 60.0
        w3.set_data(ms.Tensor(w))
    return net


def test_online_smoothing_beats_the_plain_online_transform_on_planted_w2_outliers():
    """w2's measured output error (quantized vs float on its calibration inputs): the huge channels
    shrunk before T spreads them beat T alone."""
    config = tiny()
    errors = {}
    for smooth in (False, True):
        net = planted_w2_outliers(config)
        ptq = PTQ(PTQConfig(rotation="hadamard", anti_method="m2", act_quant_dtype=I8,
                            algo_args=dict(ONLINE_SMOOTH, rotation_online_smooth=smooth)), measure_sensitivity=True)
        ptq.apply(net, None, calibration(config))
        errors[smooth] = [ptq.output_errors[f"model.layers.{i}.feed_forward.w2"] for i in range(2)]
    assert all(a < 0.2 * b for a, b in zip(errors[True], errors[False])), errors


def test_online_smoothed_network_saves_and_deploys(tmp_path):
    config = tiny()
    net = planted_w2_outliers(config)
    cfg = PTQConfig(rotation="hadamard", anti_method="m2", act_quant_dtype=I8, algo_args=ONLINE_SMOOTH)
    ptq = PTQ(cfg)
    ptq.apply(net, None, calibration(config))
    ptq.convert(net)
    quantized = net(TEST_IDS).asnumpy()
    save_quantized(net, ptq, str(tmp_path / "q"))
    deployed, _ = load_quantized(str(tmp_path / "q"))
    assert isinstance(deployed.model.layers[0].feed_forward.down_transform, OnlineHadamard)
    np.testing.assert_allclose(deployed(TEST_IDS).asnumpy(), quantized, atol=1e-5, rtol=0)


@pytest.mark.parametrize("anti, scheme, name", [("m3", {}, "m3 \\(awq\\)"),
                                               ("m4", {"act_quant_dtype": I8}, "m4 \\(os_plus\\)")])
def test_methods_that_cannot_fold_through_the_transform_refuse_by_name(anti, scheme, name):
    config = tiny()
    ptq = PTQ(PTQConfig(rotation="hadamard", anti_method=anti, algo_args=ONLINE_SMOOTH, **scheme))
    with pytest.raises(NotImplementedError, match=f"anti_method {name} cannot smooth feed_forward.w3 .*"
                                                  f"rotation_online_smooth: false"):
        ptq.apply(LlamaForCausalLM(config, seed=0), None, calibration(config))


def test_online_smoothing_needs_the_online_transform():
    with pytest.raises(ConfigError, match=r"algo_args\['rotation_online_smooth'\]: true .* needs "
                                          r"algo_args\['rotation_online'\]: true"):
        PTQConfig(rotation="hadamard", algo_args={"rotation_online": False, "rotation_online_smooth": True}).validate()
    with pytest.raises(ValueError, match="needs online=True"):
        RotationModule(online=False, online_smooth=True)
