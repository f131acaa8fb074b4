"""The float network: names, numerics against numpy, caching, padding, generation."""
import numpy as np
import pytest

from golden_ptq.config.model_config import LlamaConfig
from golden_ptq.networks.generation import _filter_top_k_top_p
from golden_ptq.networks.layers import KVCache, Linear
from golden_ptq.networks.llama import LlamaForCausalLM
import reference


def test_parameter_names_follow_mindformers(tiny_config):
    net = LlamaForCausalLM(tiny_config, seed=0)
    names = set(net.parameters_dict())
    for expected in ("model.tok_embeddings.embedding_weight", "model.layers.1.attention.wq.weight",
                     "model.layers.0.attention.wo.weight", "model.layers.0.feed_forward.w1.weight",
                     "model.layers.0.feed_forward.w2.weight", "model.layers.0.feed_forward.w3.weight",
                     "model.layers.0.attention_norm.weight", "model.layers.0.ffn_norm.weight",
                     "model.norm_out.weight", "lm_head.weight"):
        assert expected in names
    linears = [n for n, c in net.cells_and_names() if isinstance(c, Linear)]
    assert len(linears) == 2 * 7 + 1
    assert sum(isinstance(c, KVCache) for _, c in net.cells_and_names()) == 2


def test_tied_embeddings_share_one_parameter(tiny_config):
    tiny_config.tie_word_embeddings = True
    net = LlamaForCausalLM(tiny_config, seed=0)
    assert net.lm_head.weight is net.model.tok_embeddings.embedding_weight
    assert "lm_head.weight" not in net.parameters_dict()


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_forward_matches_numpy_reference(tiny_config, rng, qkv_bias):
    tiny_config.qkv_bias = qkv_bias
    net = LlamaForCausalLM(tiny_config, seed=3)
    ids = rng.randint(0, tiny_config.vocab_size, size=20)
    logits = net(ids[None]).asnumpy()[0]
    weights = reference.network_weights(net)
    if qkv_bias:  # the reference has no bias: check that the bias is used at all, then zero it
        for name, param in net.parameters_and_names():
            if name.endswith(".bias"):
                param.set_data(param * 0)
        assert not np.allclose(net(ids[None]).asnumpy()[0], logits)
        logits = net(ids[None]).asnumpy()[0]
    expected = reference.forward(weights, reference.cfg_dict(tiny_config), ids)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_incremental_decoding_matches_full_recompute(tiny_config, rng):
    net = LlamaForCausalLM(tiny_config, seed=1)
    ids = rng.randint(0, tiny_config.vocab_size, size=(2, 12))
    full = net(ids).asnumpy()
    step = net.prefill(ids[:, :5]).asnumpy()
    np.testing.assert_allclose(step, full[:, 4], atol=1e-5)
    for t in range(5, 12):
        step = net.decode_step(ids[:, t]).asnumpy()
        np.testing.assert_allclose(step, full[:, t], atol=1e-5)  # tolerance: float32 summation order


def test_left_padding_gives_unpadded_logits(tiny_config, rng):
    net = LlamaForCausalLM(tiny_config, seed=2)
    short = rng.randint(3, tiny_config.vocab_size, size=6)
    longer = rng.randint(3, tiny_config.vocab_size, size=9)
    batch = np.zeros((2, 9), dtype=np.int64)
    batch[0, 3:], batch[1] = short, longer
    mask = (np.arange(9)[None] >= np.array([[3], [0]])).astype(np.int64)
    logits = net(batch, mask).asnumpy()
    np.testing.assert_allclose(logits[0, 3:], net(short[None]).asnumpy()[0], atol=1e-5)
    np.testing.assert_allclose(logits[1], net(longer[None]).asnumpy()[0], atol=1e-5)


def test_greedy_generate_batch_equals_single_rows(tiny_config, rng):
    tiny_config.pad_token_id, tiny_config.eos_token_id = 0, None
    net = LlamaForCausalLM(tiny_config, seed=4)
    a = rng.randint(3, tiny_config.vocab_size, size=4)
    b = rng.randint(3, tiny_config.vocab_size, size=7)
    batch = np.zeros((2, 7), dtype=np.int64)
    batch[0, 3:], batch[1] = a, b
    out = net.generate(batch, max_new_tokens=6)
    alone_a = net.generate(a[None], max_new_tokens=6)[0]
    alone_b = net.generate(b[None], max_new_tokens=6)[0]
    np.testing.assert_array_equal(out[0][7:], alone_a[4:])
    np.testing.assert_array_equal(out[1][7:], alone_b[7:])
    np.testing.assert_array_equal(out[0][:7], batch[0])
    # greedy tokens are the argmax of a full recompute
    full = net(alone_b[None, :-1]).asnumpy()[0]
    np.testing.assert_array_equal(full[6:].argmax(-1), alone_b[7:])


def test_generation_stops_at_eos(tiny_config, rng):
    net = LlamaForCausalLM(tiny_config, seed=4)
    ids = rng.randint(3, tiny_config.vocab_size, size=(1, 5))
    first = int(net(ids).asnumpy()[0, -1].argmax())
    out = net.generate(ids, max_new_tokens=5, eos_token_id=first)[0]
    assert out.tolist() == ids[0].tolist() + [first]


def test_sampling_is_seeded_and_respects_top_k(tiny_config, rng):
    net = LlamaForCausalLM(tiny_config, seed=5)
    ids = rng.randint(3, tiny_config.vocab_size, size=(1, 5))
    one = net.generate(ids, do_sample=True, top_k=5, seed=7, max_new_tokens=6, eos_token_id=-1)[0]
    two = net.generate(ids, do_sample=True, top_k=5, seed=7, max_new_tokens=6, eos_token_id=-1)[0]
    np.testing.assert_array_equal(one, two)
    top5 = np.argsort(-net(ids).asnumpy()[0, -1])[:5]
    assert one[5] in top5


def test_top_k_top_p_filter():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    kept = np.isfinite(_filter_top_k_top_p(logits, 0, 0.7))
    assert kept.tolist() == [[True, True, False, False]]
    kept = np.isfinite(_filter_top_k_top_p(logits, 3, 0.99))
    assert kept.tolist() == [[True, True, True, False]]
    kept = np.isfinite(_filter_top_k_top_p(logits, 1, 1.0))
    assert kept.tolist() == [[True, False, False, False]]


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="num_kv_heads"):
        LlamaConfig(vocab_size=10, hidden_size=64, num_layers=1, num_heads=4, num_kv_heads=3, intermediate_size=8)
    with pytest.raises(ValueError, match="unknown LlamaConfig field"):
        LlamaConfig.from_dict({"hidden": 3})


def test_too_long_input_is_rejected(tiny_config):
    net = LlamaForCausalLM(tiny_config, seed=0)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        net(np.zeros((1, tiny_config.max_position_embeddings + 1), dtype=np.int64))
