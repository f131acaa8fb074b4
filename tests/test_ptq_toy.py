"""PTQ on small random networks: error bounds per mode, DEPLOY exactness, errors, registry, pipeline."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from golden_ptq import PTQ, OutliersSuppressionType, PTQConfig, PTQMode, QuantGranularity
from golden_ptq.algorithm.modules import AlgoModule, QuantizeModule, SmoothModule
from golden_ptq.io.checkpoint import CheckpointMismatchError, load_checkpoint, quant_desc, save_checkpoint
from golden_ptq.networks.layers import Linear
from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.quant_cells import LayerQuantSpec, QuantKVCache, QuantLinear

I8 = ms.int8
SMOOTH = OutliersSuppressionType.SMOOTH
# scheme -> (config, max relative logit error on the toy network). Random weights have no outlier
# channels, so smoothing brings nothing here (planted outliers: test_smooth_reduces_error...).
MODES = {
    "a16w8": (dict(), 0.02),
    "a16w8_g16": (dict(weight_quant_granularity=QuantGranularity.PER_GROUP, group_size=16), 0.02),
    # 40 divides neither 64 nor 96: every row ends in a ragged group (64 = 40 + 24, 96 = 40 + 40 + 16)
    "a16w8_g40_ragged": (dict(weight_quant_granularity=QuantGranularity.PER_GROUP, group_size=40), 0.02),
    "a16w4_g40_ragged": (dict(weight_bits=4, weight_quant_granularity=QuantGranularity.PER_GROUP, group_size=40), 0.3),
    "a8w8": (dict(act_quant_dtype=I8), 0.05),
    "a8w8_smooth": (dict(act_quant_dtype=I8, outliers_suppression=SMOOTH), 0.12),
    "a8w8_dynamic": (dict(act_quant_dtype=I8, act_quant_granularity=QuantGranularity.PER_TOKEN), 0.03),
    "c8": (dict(weight_quant_dtype=None, kvcache_quant_dtype=I8), 0.04),
    "a8w8c8_smooth": (dict(act_quant_dtype=I8, kvcache_quant_dtype=I8, outliers_suppression=SMOOTH), 0.12),
    "a16w8_emb": (dict(embedding_quant_dtype=I8), 0.02),
    "a8w8_dynamic_head_w8a16": (dict(act_quant_dtype=I8, act_quant_granularity=QuantGranularity.PER_TOKEN,
                                     weight_only_names=["lm_head"]), 0.03),
}


def calibration(config, n=3, length=24, seed=0):
    rng = np.random.RandomState(seed)
    return [rng.randint(0, config.vocab_size, (2, length)) for _ in range(n)]


def rel_error(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("scheme", sorted(MODES))
def test_quantize_error_bound_and_deploy_reproduces_logits(tmp_path, tiny_config, scheme):
    tiny_config.tie_word_embeddings = scheme == "a16w8_emb"
    kwargs, bound = MODES[scheme]
    net = LlamaForCausalLM(tiny_config, seed=0)
    test_ids = np.random.RandomState(9).randint(0, tiny_config.vocab_size, (2, 20))
    reference = net(test_ids).asnumpy()
    ptq = PTQ(PTQConfig(**kwargs))
    ptq.apply(net, None, calibration(tiny_config))
    ptq.convert(net)
    quantized = net(test_ids).asnumpy()
    error = rel_error(quantized, reference)
    assert 0 < error < bound, error
    path = str(tmp_path / ("q.safetensors" if "emb" in scheme else "q.ckpt"))
    save_checkpoint(net, path)
    deployed = LlamaForCausalLM(tiny_config, seed=123)  # different float weights: all must come from the ckpt
    ptq2 = PTQ(PTQConfig(mode=PTQMode.DEPLOY, **kwargs))
    ptq2.apply(deployed)
    ptq2.convert(deployed)
    load_checkpoint(path, deployed)
    np.testing.assert_allclose(deployed(test_ids).asnumpy(), quantized, atol=1e-6, rtol=0)
    assert (tmp_path / "quant_desc.json").exists()


def test_weights_are_int8_and_desc_maps_every_parameter(tiny_config):
    net = LlamaForCausalLM(tiny_config, seed=0)
    ptq = PTQ(PTQConfig(act_quant_dtype=I8, kvcache_quant_dtype=I8, opname_blacklist=["w2", "lm_head"]))
    ptq.apply(net, None, calibration(tiny_config))
    ptq.convert(net)
    params = net.parameters_dict()
    assert params["model.layers.0.attention.wq.weight"].dtype == ms.int8
    assert params["model.layers.0.attention.wq.quant_bias"].dtype == ms.int32
    assert params["model.layers.0.feed_forward.w2.weight"].dtype == ms.float32
    desc = quant_desc(net)
    assert set(desc) == set(params)
    assert desc["model.layers.1.attention.wo.deq_scale"] == "W8A8"
    assert desc["model.layers.1.attention.kv_cache.key_scale"] == "C8"
    assert desc["model.layers.1.feed_forward.w2.weight"] == "FLOAT"
    text = ptq.summary()
    assert "model.layers.0.feed_forward.w2" in text and "FLOAT (opname_blacklist 'w2')" in text
    assert "C8 2" in text and "W8A8 12" in text


def test_weight_only_names_keep_those_activations_float(tiny_config):
    """In an A8W8 config, ``weight_only_names`` layers get int8 weights and float activations
    (W8A16), the others W8A8; DEPLOY builds the same structure from the same config."""
    kwargs = dict(act_quant_dtype=I8, weight_only_names=["lm_head", "w2"])
    net = LlamaForCausalLM(tiny_config, seed=0)
    ptq = PTQ(PTQConfig(**kwargs))
    ptq.apply(net, None, calibration(tiny_config))
    ptq.convert(net)
    desc = quant_desc(net)
    assert desc["lm_head.weight"] == desc["model.layers.1.feed_forward.w2.weight"] == "W8A16"
    assert desc["model.layers.1.feed_forward.w1.weight"] == "W8A8"
    params = net.parameters_dict()
    assert params["lm_head.weight"].dtype == ms.int8 and "lm_head.deq_scale" not in params
    deployed = LlamaForCausalLM(tiny_config, seed=0)
    PTQ(PTQConfig(mode=PTQMode.DEPLOY, **kwargs)).apply(deployed)
    assert quant_desc(deployed) == desc


def test_kv_cache_stores_int8_and_decoding_matches_full(tiny_config):
    net = LlamaForCausalLM(tiny_config, seed=0)
    PTQ(PTQConfig(weight_quant_dtype=None, kvcache_quant_dtype=I8)).apply(net, None, calibration(tiny_config))
    ids = np.random.RandomState(2).randint(0, tiny_config.vocab_size, (1, 10))
    full = net(ids).asnumpy()
    net.prefill(ids[:, :6])
    cache = net.model.layers[0].attention.kv_cache
    assert isinstance(cache, QuantKVCache) and cache._history["key"].dtype == ms.int8
    for t in range(6, 10):
        np.testing.assert_allclose(net.decode_step(ids[:, t]).asnumpy(), full[:, t], atol=1e-5)


def test_deploy_with_other_settings_names_first_mismatch(tmp_path, tiny_config):
    net = LlamaForCausalLM(tiny_config, seed=0)
    ptq = PTQ(PTQConfig(act_quant_dtype=I8))
    ptq.apply(net, None, calibration(tiny_config))
    ptq.convert(net)
    save_checkpoint(net, str(tmp_path / "a8w8.ckpt"))
    other = LlamaForCausalLM(tiny_config, seed=0)
    PTQ(PTQConfig(mode=PTQMode.DEPLOY)).apply(other)  # A16W8 structure
    with pytest.raises(CheckpointMismatchError, match=r"no parameter 'model\.layers\.0\.attention\.wq\.weight_scale' "
                                                       r"\(the network expects Float32 \(64,\)\)"):
        load_checkpoint(str(tmp_path / "a8w8.ckpt"), other)
    blacklisted = LlamaForCausalLM(tiny_config, seed=0)
    PTQ(PTQConfig(mode=PTQMode.DEPLOY, act_quant_dtype=I8, opname_blacklist=["wk"])).apply(blacklisted)
    with pytest.raises(CheckpointMismatchError, match=r"'model\.layers\.0\.attention\.wk\.weight' is Int8"):
        load_checkpoint(str(tmp_path / "a8w8.ckpt"), blacklisted)


def test_config_errors_that_need_the_network(tiny_config):
    net = LlamaForCausalLM(tiny_config, seed=0)
    with pytest.raises(ValueError, match="opname_blacklist entry 'w9' matches no quantizable layer"):
        PTQ(PTQConfig(opname_blacklist=["w9"])).apply(net, None, calibration(tiny_config))
    net = LlamaForCausalLM(tiny_config, seed=0)
    with pytest.raises(ValueError, match="weight_only_names entry 'gate_proj' matches no quantizable layer"):
        PTQ(PTQConfig(act_quant_dtype=I8, weight_only_names=["gate_proj"])).apply(net, None, calibration(tiny_config))
    net = LlamaForCausalLM(tiny_config, seed=0)
    with pytest.raises(ValueError, match="quantizes no layer"):
        PTQ(PTQConfig(opname_blacklist=["layers", "lm_head"])).apply(net, None, calibration(tiny_config))
    net = LlamaForCausalLM(tiny_config, seed=0)
    with pytest.raises(ValueError, match="needs calibration data"):
        PTQ(PTQConfig()).apply(net)


class GatedLinear(nn.Cell):
    """A user's own Linear-like layer: y = (x @ W.T) * gate."""

    def __init__(self, inner: Linear):
        super().__init__()
        self.inner = inner
        self.gate = ms.Parameter(ms.Tensor(np.full((inner.out_features,), 0.5, np.float32)), name="gate")

    def construct(self, x):
        return self.inner(x) * self.gate


class QuantGatedLinear(QuantLinear):
    def __init__(self, cell: GatedLinear, spec: LayerQuantSpec):
        super().__init__(cell.inner, spec)
        self.gate = cell.gate

    def construct(self, x):
        return super().construct(x) * self.gate


def test_user_registers_quant_cell_for_own_layer(tiny_config):
    net = LlamaForCausalLM(tiny_config, seed=0)
    for layer in net.model.layers:
        layer.feed_forward.w2 = GatedLinear(layer.feed_forward.w2)
    ptq = PTQ(PTQConfig(act_quant_dtype=I8))
    ptq.registry.register(GatedLinear, QuantGatedLinear)
    ids = np.random.RandomState(1).randint(0, tiny_config.vocab_size, (1, 12))
    reference = net(ids).asnumpy()
    ptq.apply(net, None, calibration(tiny_config))
    ptq.convert(net)
    w2 = net.model.layers[0].feed_forward.w2
    assert isinstance(w2, QuantGatedLinear) and w2.weight.dtype == ms.int8
    assert "model.layers.0.feed_forward.w2.gate" in net.parameters_dict()
    assert 0 < rel_error(net(ids).asnumpy(), reference) < 0.05
    # another PTQ instance is unaffected by that registration
    assert GatedLinear not in PTQ(PTQConfig()).registry.registered()


def test_custom_module_joins_pipeline_without_touching_ptq(tiny_config):
    seen = []

    class Recorder(AlgoModule):
        def process(self, ctx):
            seen.append((ctx.name, sorted(ctx.quant_cells)[:1], all(not c.quantized for c in ctx.quant_cells.values())))

    net = LlamaForCausalLM(tiny_config, seed=0)
    ptq = PTQ(PTQConfig(), pipeline=[Recorder(), QuantizeModule()])
    ptq.apply(net, None, calibration(tiny_config))
    assert [s[0] for s in seen] == ["model.layers.0", "model.layers.1", "head"]
    assert all(s[2] for s in seen)  # ran before Quantize


def planted_outlier_network(tiny_config):
    """Channels 3 and 17 of every norm output are 40x larger: SmoothQuant's target case."""
    net = LlamaForCausalLM(tiny_config, seed=0)
    for layer in net.model.layers:
        for norm in (layer.attention_norm, layer.ffn_norm):
            w = norm.weight.asnumpy().copy()
            w[[3, 17]] *= 40
            norm.weight.set_data(ms.Tensor(w))
    return net


def test_smooth_reduces_error_with_planted_outliers(tiny_config):
    ids = np.random.RandomState(3).randint(0, tiny_config.vocab_size, (2, 20))
    errors = {}
    for name, smooth in (("plain", OutliersSuppressionType.NONE), ("smooth", SMOOTH)):
        net = planted_outlier_network(tiny_config)
        reference = net(ids).asnumpy()
        ptq = PTQ(PTQConfig(act_quant_dtype=I8, outliers_suppression=smooth))
        ptq.apply(net, None, calibration(tiny_config, n=4))
        errors[name] = rel_error(net(ids).asnumpy(), reference)
    assert errors["smooth"] < 0.6 * errors["plain"], errors


def test_smoothing_alone_keeps_the_function(tiny_config):
    """Smooth's folds are exact in float: run Smooth without Quantize and compare logits."""
    net = planted_outlier_network(tiny_config)
    ids = np.random.RandomState(4).randint(0, tiny_config.vocab_size, (1, 16))
    reference = net(ids).asnumpy()
    smooth = SmoothModule(alpha=0.5)
    ptq = PTQ(PTQConfig(act_quant_dtype=I8, outliers_suppression=SMOOTH), pipeline=[smooth])
    ptq.apply(net, None, calibration(tiny_config))
    np.testing.assert_allclose(net(ids).asnumpy(), reference, rtol=1e-4, atol=1e-4)
    assert len(smooth.applied) == 8  # 4 mappings x 2 layers
    with pytest.raises(RuntimeError, match="never calibrated"):
        ptq.convert(net)


def test_guide_flow_with_mindspore_save_and_load(tmp_path, tiny_config):
    """The Golden Stick guide's own calls: ms.save_checkpoint / ms.load_checkpoint on the int8 network."""
    kwargs = dict(act_quant_dtype=I8, kvcache_quant_dtype=I8, outliers_suppression=SMOOTH,
                  opname_blacklist=["w2", "lm_head"])
    net = LlamaForCausalLM(tiny_config, seed=0)
    ptq = PTQ(config=PTQConfig(mode=PTQMode.QUANTIZE, **kwargs))
    ptq.apply(net, None, calibration(tiny_config))
    ptq.convert(net)
    ids = np.random.RandomState(5).randint(0, tiny_config.vocab_size, (1, 16))
    expected = net(ids).asnumpy()
    path = str(tmp_path / "a8w8c8.ckpt")
    ms.save_checkpoint(net.parameters_dict(), path,
                       choice_func=lambda x: "key_cache" not in x and "value_cache" not in x and "float_weight" not in x)
    deployed = LlamaForCausalLM(tiny_config, seed=1)
    ptq = PTQ(config=PTQConfig(mode=PTQMode.DEPLOY, **kwargs))
    ptq.apply(deployed)
    ptq.convert(deployed)
    ms.load_checkpoint(path, deployed)
    np.testing.assert_allclose(deployed(ids).asnumpy(), expected, atol=1e-6, rtol=0)


def test_float16_storage_of_float_parameters(tmp_path, tiny_config):
    net = LlamaForCausalLM(tiny_config, seed=0)
    ptq = PTQ(PTQConfig(opname_blacklist=["lm_head"]))
    ptq.apply(net, None, calibration(tiny_config))
    ptq.convert(net)
    save_checkpoint(net, str(tmp_path / "f32.safetensors"))
    save_checkpoint(net, str(tmp_path / "f16.safetensors"), float_dtype="float16")
    from golden_ptq.io.checkpoint import read_checkpoint
    stored = read_checkpoint(str(tmp_path / "f16.safetensors"))
    assert stored["lm_head.weight"].dtype == np.float16 and stored["model.norm_out.weight"].dtype == np.float16
    assert stored["model.layers.0.attention.wq.weight_scale"].dtype == np.float32
    assert stored["model.layers.0.attention.wq.weight"].dtype == np.int8
    float_bytes = sum(p.asnumpy().nbytes for n, p in net.parameters_and_names() if quant_desc(net)[n] == "FLOAT")
    saved = (tmp_path / "f32.safetensors").stat().st_size - (tmp_path / "f16.safetensors").stat().st_size
    assert abs(saved - float_bytes / 2) < 256  # half of every float parameter, up to header padding
    deployed = LlamaForCausalLM(tiny_config, seed=1)
    PTQ(PTQConfig(mode=PTQMode.DEPLOY, opname_blacklist=["lm_head"])).apply(deployed)
    load_checkpoint(str(tmp_path / "f16.safetensors"), deployed)
    ids = np.random.RandomState(0).randint(0, tiny_config.vocab_size, (1, 8))
    np.testing.assert_allclose(deployed(ids).asnumpy(), net(ids).asnumpy(), rtol=0, atol=2e-3)
