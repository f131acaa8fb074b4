"""Compiled decoding with a static KV cache: the same logits as eager (PyNative) decoding and as a
full recomputation, for the float network and every deploy form (tiny random networks)."""
from types import SimpleNamespace

import numpy as np
import mindspore as ms
import pytest

from golden_ptq import PTQ, OutliersSuppressionType, PTQConfig, QuantGranularity
from golden_ptq.networks.llama import STATIC_CACHE_BLOCK, LlamaForCausalLM

I8 = ms.int8
SCHEMES = {
    "fp32": None,
    "a16w8": dict(),
    "a16w8-group-asym": dict(weight_quant_granularity=QuantGranularity.PER_GROUP, group_size=16,
                             weight_symmetric=False),
    "w4a16": dict(weight_bits=4),
    "a8w8": dict(act_quant_dtype=I8),
    "a8w8-dynamic": dict(act_quant_dtype=I8, act_quant_granularity=QuantGranularity.PER_TOKEN),
    "c8": dict(weight_quant_dtype=None, kvcache_quant_dtype=I8),
    "c8-token-values": dict(weight_quant_dtype=None, kvcache_quant_dtype=I8,
                            algo_args={"kvcache_scheme": "token_values"}),
    "a16w8-c8": dict(kvcache_quant_dtype=I8),
    "a8w8-smooth-c8": dict(act_quant_dtype=I8, kvcache_quant_dtype=I8,
                           outliers_suppression=OutliersSuppressionType.SMOOTH),
    "a8w8-dynamic+head-w8a16": dict(act_quant_dtype=I8, act_quant_granularity=QuantGranularity.PER_TOKEN,
                                    weight_only_names=["lm_head"]),
    "a8w8-dynamic+embedding": dict(act_quant_dtype=I8, act_quant_granularity=QuantGranularity.PER_TOKEN,
                                   embedding_quant_dtype=I8),
}


def _network(config, scheme, seed=1):
    network = LlamaForCausalLM(config, seed=seed)
    network.set_train(False)
    if SCHEMES[scheme] is not None:
        rng = np.random.RandomState(0)
        ptq = PTQ(PTQConfig(**SCHEMES[scheme]))
        ptq.apply(network, None, [rng.randint(0, config.vocab_size, 16) for _ in range(2)])
        ptq.convert(network)
    return network


def _decode(network, ids, prompt, compiled, forward=False):
    """Logits of the prompt's last token and of every later token fed one by one, ``[T, B, V]``."""
    if (network.compiled_decode, network.compiled_forward) != (compiled, forward):
        network.set_compiled(decode=compiled, forward=forward)
    out = [network.prefill(ids[:, :prompt]).asnumpy()]
    for t in range(prompt, ids.shape[1]):
        out.append(network.decode_step(ids[:, t]).asnumpy())
    network.reset_cache()
    return np.stack(out)


def _assert_close(got, want, what):
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 1e-4 * scale, f"{what}: max diff {np.abs(got - want).max()} (scale {scale})"


@pytest.fixture
def config(tiny_config):
    tiny_config.tie_word_embeddings = True
    tiny_config.num_layers = 1          # graphs compile in proportion to their size
    return tiny_config


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_compiled_equals_eager_and_full_recompute(config, scheme):
    network = _network(config, scheme)
    ids = np.random.RandomState(7).randint(0, config.vocab_size, (2, 11))
    eager = _decode(network, ids, 5, compiled=False)
    full = network(ids).asnumpy()
    compiled = _decode(network, ids, 5, compiled=True, forward=True)   # compiled prefill, then decode
    _assert_close(compiled, eager, f"{scheme} compiled vs eager")
    _assert_close(compiled, full[:, 4:].transpose(1, 0, 2), f"{scheme} compiled decode vs full recompute")
    _assert_close(network(ids).asnumpy(), full, f"{scheme} compiled full forward vs eager")


def test_static_cache_is_written_in_place_and_reused(config):
    network = _network(config, "c8")
    ids = np.random.RandomState(8).randint(0, config.vocab_size, (1, 9))
    network.prefill(ids[:, :4])
    network.decode_step(ids[:, 4])
    step = network._graphs[0][1]
    cache = network._kv_caches()[0]
    buffers = cache.static_buffers
    key_param = buffers.key
    assert key_param.dtype == ms.int8
    assert key_param.shape[2] == min(STATIC_CACHE_BLOCK, config.max_position_embeddings)
    for t in range(5, 9):
        network.decode_step(ids[:, t])
    assert network._graphs[0][1] is step            # one graph for every token
    assert cache.static_buffers is buffers and buffers.key is key_param
    assert cache.cached_length() == 9
    stored = key_param.asnumpy()
    assert np.any(stored[:, :, 8] != 0) and not np.any(stored[:, :, 9:])
    names = [name for name, _ in network.parameters_and_names()]
    assert not any("static" in name for name in names)   # never part of a checkpoint


def test_static_cache_grows_past_its_capacity(config):
    config.max_position_embeddings = STATIC_CACHE_BLOCK + 8
    network = _network(config, "fp32")
    ids = np.random.RandomState(9).randint(0, config.vocab_size, (1, STATIC_CACHE_BLOCK + 3))
    prompt = STATIC_CACHE_BLOCK - 2
    compiled = _decode(network, ids, prompt, compiled=True)
    full = network(ids).asnumpy()[:, prompt - 1:].transpose(1, 0, 2)
    _assert_close(compiled, full, "across the capacity boundary")


def test_compiled_generate_with_left_padding(config):
    network = _network(config, "a8w8-dynamic")
    ids = np.random.RandomState(10).randint(1, config.vocab_size, (2, 8))
    ids[1, :3] = 0
    mask = (np.arange(8)[None] >= np.array([[0], [3]])).astype(np.int64)
    generated = {}
    network.compile_min_new_tokens = 0
    for compiled in (True, False):
        network.set_compiled(compiled)
        generated[compiled] = network.generate(ids, max_new_tokens=5, attention_mask=mask, pad_token_id=0,
                                               eos_token_id=None)
    for row in range(2):
        np.testing.assert_array_equal(generated[True][row], generated[False][row])


def test_compiled_decode_sees_new_weights(config):
    network = _network(config, "fp32")
    ids = np.random.RandomState(11).randint(0, config.vocab_size, (2, 6))
    # A compiled step packs its matmul weights: new storage (set_data, checkpoint loading) rebuilds
    # it by itself; values assigned into the old storage need set_compiled.
    w2 = network.model.layers[0].feed_forward.w2.weight
    before = _decode(network, ids, 4, compiled=True)
    w2.set_data(ms.Tensor(w2.asnumpy() * 3))
    after = _decode(network, ids, 4, compiled=True)
    assert not np.allclose(before, after)
    _assert_close(after, _decode(network, ids, 4, compiled=False), "after set_data")
    ms.ops.assign(w2, ms.Tensor(w2.asnumpy() / 3))
    network.set_compiled(True)
    _assert_close(_decode(network, ids, 4, compiled=True), before, "after assign and set_compiled")


def test_prompts_one_after_another_reuse_the_graph(config):
    network = _network(config, "a16w8-c8")
    rng = np.random.RandomState(12)
    for batch, length in [(2, 9), (1, 8), (2, 7)]:
        ids = rng.randint(0, config.vocab_size, (batch, length))
        compiled = _decode(network, ids, 4, compiled=True)
        _assert_close(compiled, network(ids).asnumpy()[:, 3:].transpose(1, 0, 2), f"prompt {batch}x{length}")


def test_compiled_prefill_then_eager_decode(config):
    network = _network(config, "c8")
    ids = np.random.RandomState(13).randint(0, config.vocab_size, (2, 9))
    mixed = _decode(network, ids, 4, compiled=False, forward=True)
    _assert_close(mixed, network(ids).asnumpy()[:, 3:].transpose(1, 0, 2), "compiled prefill, eager decode")


def test_short_generations_decode_eagerly_unless_a_graph_exists(config):
    network = _network(config, "fp32")
    ids = np.random.RandomState(14).randint(0, config.vocab_size, (1, 6))
    network.compile_min_new_tokens = 10
    short = network.generate(ids, max_new_tokens=4, eos_token_id=None)[0]
    assert not network._decode_shapes                      # 3 decode steps: not worth a compile
    long = network.generate(ids, max_new_tokens=12, eos_token_id=None)[0]
    assert network._decode_shapes                          # compiled for (batch 1, this capacity)
    network.prefill(ids, new_tokens=3)
    assert network._compiled_session                       # the graph exists now: reused
    np.testing.assert_array_equal(long[:10], short)


@pytest.mark.parametrize("forward", [False, True])
def test_a_graph_that_fails_to_compile_falls_back_to_eager(config, monkeypatch, forward):
    from golden_ptq.networks import compiled
    network = _network(config, "fp32")
    ids = np.random.RandomState(15).randint(0, config.vocab_size, (1, 7))
    eager = _decode(network, ids, 3, compiled=False)

    def broken(self, *inputs):
        raise TypeError("The parameters number of the function is 2, but the number of provided arguments is 9.")

    monkeypatch.setattr(compiled.CompiledDecodeStep, "construct", broken)
    monkeypatch.setattr(compiled.CompiledForward, "construct", broken)
    network.set_compiled(decode=True, forward=forward)
    got = _decode(network, ids, 3, compiled=True, forward=forward)
    _assert_close(got, eager, "after falling back")
    assert not network.compiled_decode and not network.compiled_forward


@pytest.mark.parametrize("scheme", ["c8", "c8-token-values"])
def test_compiled_c8_decoding_with_replicated_kv_heads(config, scheme):
    """The layout of a TP rank that keeps every KV head (``num_kv_heads % tp != 0``, SmolLM2's 3 on 2
    ranks): each query head reads its KV head through a gather, the int8 cache's folded factors
    (``write_static_codes``) too. Forced here on one process: query head h reads KV head h // group."""
    network = _network(config, scheme)
    ids = np.random.RandomState(12).randint(0, config.vocab_size, (2, 9))
    expected = _decode(network, ids, 4, compiled=False)
    group = config.num_heads // config.num_kv_heads
    for layer in network.model.layers:
        layer.attention._kv_index = ms.Tensor(np.arange(config.num_heads, dtype=np.int32) // group)
        layer.attention._core_kv_heads = config.num_heads
    network.tp_layout = SimpleNamespace(local_heads=config.num_heads, local_kv_heads=config.num_kv_heads,
                                        kv_split=False)   # masks shaped per query head
    _assert_close(_decode(network, ids, 4, compiled=True), expected, f"{scheme} replicated KV heads, compiled")
    assert network.compiled_decode, "the compiled decode step failed and fell back to eager"
    _assert_close(_decode(network, ids, 4, compiled=False), expected, f"{scheme} replicated KV heads, eager")


def test_repeated_graph_calls_leave_the_sub_cells_alone(config):
    """MindSpore sets the compile phase on every graph call; walking the ~800 sub-cells of a real
    network each time cost a tenth of a decode step. Only a new phase (a compile) reaches them."""
    network = _network(config, "fp32")
    ids = np.random.RandomState(2).randint(0, config.vocab_size, (1, 6))
    _decode(network, ids, 3, compiled=True)
    step = network._graphs[0][1]
    leaf = network.model.layers[0].attention.wq
    assert leaf.compile_phase == step.compile_phase   # the first (compiling) call reached the leaves
    leaf._compile_phase = "untouched"
    _decode(network, ids, 3, compiled=True)
    assert leaf.compile_phase == "untouched"
    step.compile_phase = "another phase"
    assert leaf.compile_phase == "another phase"
