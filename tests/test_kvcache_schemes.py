"""The int8 KV cache's ``token_values`` scheme: its math against numpy, decoding, save -> DEPLOY, config."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from golden_ptq import PTQ, PTQConfig, PTQMode
from golden_ptq.config.validation import ConfigError
from golden_ptq.io.checkpoint import CheckpointMismatchError, load_checkpoint, quant_desc, save_checkpoint
from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.parallel import TPContext
from golden_ptq.parallel.sharding import TPLayout, rule_for

I8 = ms.int8
TOKEN = dict(weight_quant_dtype=None, kvcache_quant_dtype=I8, algo_args={"kvcache_scheme": "token_values"})


def calibration(config, n=3, length=24, seed=0):
    rng = np.random.RandomState(seed)
    return [rng.randint(0, config.vocab_size, (2, length)) for _ in range(n)]


def _numpy_token_values(x, base):
    """Reference: per (token, head) scale base * 2**(e/16) / 127 with the least e covering the row's abs-max."""
    absmax = np.abs(x).max(-1, keepdims=True)
    e = np.clip(np.ceil(np.log2(np.maximum(absmax / base, 1e-30)) * 16), -128, 127)
    scale = base * 2.0 ** (e / 16) / 127
    codes = np.clip(np.round(x / scale), -127, 127)
    return codes, e, codes * scale


def _quantized_cache(tiny_config, **kwargs):
    net = LlamaForCausalLM(tiny_config, seed=0)
    ptq = PTQ(PTQConfig(**{**TOKEN, **kwargs}))
    ptq.apply(net, None, calibration(tiny_config))
    ptq.convert(net)
    return net, ptq


def test_token_values_math_matches_numpy(tiny_config):
    net, _ = _quantized_cache(tiny_config)
    cache = net.model.layers[0].attention.kv_cache
    heads, dim = cache.num_kv_heads, cache.head_dim
    rng = np.random.RandomState(3)
    x = (rng.randn(2, heads, 7, dim) * rng.choice([0.01, 1.0, 30.0], (2, heads, 7, 1))).astype(np.float32)
    x[0, 0, 0] = 0.0                                   # an all-zero row: exponent at its floor, decodes exactly
    stored = cache.encode(Tensor(x), "value")
    assert stored.dtype == ms.int8 and stored.shape == (2, heads, 7, dim + 1)
    base = cache.value_token_base.asnumpy().astype(np.float64).reshape(1, heads, 1, 1)
    codes, e, dequant = _numpy_token_values(x.astype(np.float64), base)
    got = stored.asnumpy()
    np.testing.assert_array_equal(got[..., dim:], e)
    assert np.abs(got[..., :dim].astype(np.int32) - codes).max() <= 1     # float32 vs float64 rounding ties
    decoded = cache.decode(stored, "value").asnumpy()
    step = (base * 2.0 ** (e / 16) / 127)
    assert np.all(np.abs(decoded - x) <= 0.5 * step * (1 + 1e-5) + 1e-12)  # never clipped: half a step at most
    np.testing.assert_allclose(decoded, dequant, rtol=1e-6, atol=1e-6 * float(step.max()))
    assert not decoded[0, 0, 0].any()


def test_token_values_keys_are_asymmetric_per_channel(tiny_config):
    net = LlamaForCausalLM(tiny_config, seed=0)
    ptq = PTQ(PTQConfig(**TOKEN))
    ptq.apply(net, None, calibration(tiny_config))
    cache = net.model.layers[1].attention.kv_cache
    observer = cache.observers["key"]
    lo, hi = np.minimum(observer.minimum, 0.0), np.maximum(observer.maximum, 0.0)
    ptq.convert(net)
    scale, zero_point = cache.key_scale.asnumpy(), cache.key_zero_point.asnumpy()
    np.testing.assert_allclose(scale, (hi.astype(np.float64) - lo) / 255, rtol=1e-6)
    assert np.array_equal(zero_point, np.round(zero_point)) and zero_point.min() >= -128 and zero_point.max() <= 127
    heads, dim = cache.num_kv_heads, cache.head_dim
    x = np.random.RandomState(4).uniform(lo, hi, (1, 5, heads * dim)).astype(np.float32)
    x = x.reshape(1, 5, heads, dim).transpose(0, 2, 1, 3)
    stored = cache.encode(Tensor(x), "key").asnumpy()
    s4, z4 = scale.reshape(1, heads, 1, dim), zero_point.reshape(1, heads, 1, dim)
    expected = np.clip(np.round(x / s4) + z4, -128, 127)
    assert np.abs(stored.astype(np.int32) - expected).max() <= 1
    np.testing.assert_allclose(cache.decode(Tensor(stored), "key").asnumpy(), (stored - z4) * s4, rtol=1e-6, atol=1e-7)


def test_token_values_decoding_matches_full_forward(tiny_config):
    net, _ = _quantized_cache(tiny_config)
    ids = np.random.RandomState(2).randint(0, tiny_config.vocab_size, (1, 10))
    full = net(ids).asnumpy()
    net.prefill(ids[:, :6])
    cache = net.model.layers[0].attention.kv_cache
    assert cache._history["value"].dtype == ms.int8 and cache._history["value"].shape[-1] == cache.head_dim + 1
    assert cache.history_bytes() == 6 * cache.num_kv_heads * (2 * cache.head_dim + 1)
    for t in range(6, 10):
        np.testing.assert_allclose(net.decode_step(ids[:, t]).asnumpy(), full[:, t], atol=1e-5)


def test_token_values_save_deploy_round_trip(tmp_path, tiny_config):
    net, _ = _quantized_cache(tiny_config)
    ids = np.random.RandomState(9).randint(0, tiny_config.vocab_size, (2, 20))
    expected = net(ids).asnumpy()
    desc = quant_desc(net)
    assert {k: v for k, v in desc.items() if ".kv_cache." in k and k.startswith("model.layers.0.")} == {
        "model.layers.0.attention.kv_cache.key_scale": "C8", "model.layers.0.attention.kv_cache.key_zero_point": "C8",
        "model.layers.0.attention.kv_cache.value_token_base": "C8"}
    path = str(tmp_path / "c8.ckpt")
    save_checkpoint(net, path)
    deployed = LlamaForCausalLM(tiny_config, seed=123)
    ptq = PTQ(PTQConfig(mode=PTQMode.DEPLOY, **TOKEN))
    ptq.apply(deployed)
    ptq.convert(deployed)
    load_checkpoint(path, deployed)
    np.testing.assert_allclose(deployed(ids).asnumpy(), expected, atol=1e-6, rtol=0)
    # the other layout cannot load it: strict loading names the missing parameter
    static = LlamaForCausalLM(tiny_config, seed=123)
    PTQ(PTQConfig(mode=PTQMode.DEPLOY, weight_quant_dtype=None, kvcache_quant_dtype=I8)).apply(static)
    with pytest.raises(CheckpointMismatchError, match="value_scale"):
        load_checkpoint(path, static)


def test_token_values_parameters_follow_the_kv_heads_under_tp(tiny_config):
    net, _ = _quantized_cache(tiny_config)
    layout = TPLayout.for_config(tiny_config, TPContext(rank=0, size=2))
    assert layout.kv_split     # 2 KV heads on 2 ranks
    for name, param in net.parameters_and_names():
        if ".kv_cache." in name:
            assert rule_for(name, param.ndim, layout.kv_split) == ("split", 0), name
            assert param.shape[0] % tiny_config.num_kv_heads == 0


def test_kvcache_scheme_is_validated():
    with pytest.raises(ConfigError, match=r"kvcache_scheme.*'per_head'.*static.*token_values"):
        PTQConfig(**{**TOKEN, "algo_args": {"kvcache_scheme": "per_head"}})


@pytest.mark.parametrize("codec", ["symmetric", "asymmetric", "tokens"])
def test_graph_ops_and_numpy_twins_give_the_same_bits(codec):
    """Eager calls encode/decode with numpy, compiled graphs with MindSpore ops: identical stored
    codes and decoded values, in PyNative and in a compiled graph."""
    from golden_ptq.quant_cells import kv_codecs as codecs
    rng = np.random.RandomState(11)
    x = (rng.randn(2, 3, 37, 16) * rng.choice([1e-4, 0.3, 1.0, 50.0], (2, 3, 37, 1))).astype(np.float32)
    x[0, 0, :3] = 0.0
    if codec == "tokens":
        params = (np.array([0.5, 2.0, 7.0], np.float32).reshape(1, 3, 1, 1),)
    else:
        params = ((rng.rand(1, 3, 1, 16) * 0.2 + 1e-3).astype(np.float32),)
        if codec == "asymmetric":
            params += (np.round(rng.uniform(-60, 60, (1, 3, 1, 16))).astype(np.float32),)
    ms_params = [Tensor(p) for p in params]
    encode, decode = getattr(codecs, "encode_" + codec), getattr(codecs, "decode_" + codec)
    stored = getattr(codecs, "np_encode_" + codec)(x, *params)
    for run_encode in (encode, ms.jit(encode)):
        np.testing.assert_array_equal(run_encode(Tensor(x), *ms_params).asnumpy(), stored)
    decoded = getattr(codecs, "np_decode_" + codec)(stored, *params)
    assert decoded.dtype == np.float32 and np.abs(decoded - x).max() > 0
    for run_decode in (decode, ms.jit(decode)):
        np.testing.assert_array_equal(run_decode(Tensor(stored), *ms_params).asnumpy(), decoded)
