"""NetworkHelper settings and errors; perplexity windows; CLI wiring."""
import numpy as np
import pytest

from golden_ptq import kernels
from golden_ptq.eval.perplexity import log_softmax_nll, numpy_log_softmax_nll, perplexity
from golden_ptq.kernels.native import nll_rows
from golden_ptq.networks.helper import NetworkHelper

RANDOM_MODEL = {"source": "random", "seed": 0, "tokenizer": None,
                "config": dict(vocab_size=97, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                               intermediate_size=48, max_position_embeddings=64)}


def test_get_spec_defaults_and_overrides():
    helper = NetworkHelper({"model": RANDOM_MODEL, "runtime": {"seq_length": 128, "top_k": 3}})
    assert helper.get_spec("seq_length") == 128
    assert helper.get_spec("top_k") == 3
    assert helper.get_spec("batch_size") == 1
    for name in ("max_decode_length", "ignore_token_id", "top_p", "do_sample"):
        helper.get_spec(name)
    with pytest.raises(KeyError, match="unknown spec 'seq_len'.*seq_length"):
        helper.get_spec("seq_len")


def test_random_network_is_deterministic():
    helper = NetworkHelper({"model": RANDOM_MODEL})
    a, b = helper.create_network(), helper.create_network()
    assert a is not b
    np.testing.assert_array_equal(a.model.norm_out.weight.asnumpy(), b.model.norm_out.weight.asnumpy())


@pytest.mark.parametrize("config, message", [
    ({"model": {"source": "onnx"}}, "model.source: 'onnx' is not allowed"),
    ({"model": RANDOM_MODEL, "runtime": {"seq_len": 3}}, r"runtime: unknown key 'seq_len' \(did you mean 'seq_length'\?\)"),
    ({"network": {}}, "unknown section 'network'"),
    ({"model": {"source": "gguf", "path": "/no/such.gguf"}}, "does not exist"),
])
def test_bad_network_config(config, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        NetworkHelper(config).create_network()


class UniformNet:
    """Logits that give every token probability 1/V: perplexity must be exactly V."""

    def __init__(self, vocab):
        self.vocab, self.calls = vocab, []

    def __call__(self, ids):
        import mindspore as ms
        self.calls.append(ids.shape)
        return ms.Tensor(np.zeros(ids.shape + (self.vocab,), np.float32))


def test_perplexity_of_uniform_model_is_vocab_size():
    net = UniformNet(50)
    tokens = np.arange(100) % 50
    assert perplexity(net, tokens, seq_length=16, batch_size=4) == pytest.approx(50.0)
    assert net.calls[0] == (4, 16) and len(net.calls) == 2  # 6 full windows, tail dropped
    assert perplexity(UniformNet(50), tokens, seq_length=16, stride=8) == pytest.approx(50.0)


def test_perplexity_scores_each_token_once_with_stride(tiny_config):
    from golden_ptq.networks.llama import LlamaForCausalLM
    net = LlamaForCausalLM(tiny_config, seed=0)
    tokens = np.random.RandomState(0).randint(0, tiny_config.vocab_size, 48)
    # stride == seq_length equals the non-overlapping default
    assert perplexity(net, tokens, 16, stride=16) == pytest.approx(perplexity(net, tokens, 16))
    # by hand: windows [0:16), [8:24) ... score 15 then 8 tokens each
    logits = [net(tokens[None, s:s + 16]).asnumpy()[0] for s in range(0, 33, 8)]
    nll = [log_softmax_nll(l[:-1], tokens[s + 1:s + 16]) for l, s in zip(logits, range(0, 33, 8))]
    expected = np.exp(np.concatenate([nll[0]] + [n[-8:] for n in nll[1:]]).mean())
    assert perplexity(net, tokens, 16, stride=8) == pytest.approx(expected, rel=1e-6)


def test_perplexity_rejects_bad_windows():
    with pytest.raises(ValueError, match="stride"):
        perplexity(UniformNet(5), np.arange(20), 8, stride=9)
    with pytest.raises(ValueError, match="at least seq_length"):
        perplexity(UniformNet(5), np.arange(4), 8)


def test_log_softmax_nll_in_chunks_equals_the_whole_array_at_once():
    from golden_ptq.eval.perplexity import NLL_ROWS
    rng = np.random.RandomState(0)
    logits = (rng.randn(2, 2 * NLL_ROWS + 5, 300) * 4).astype(np.float32)   # a ragged last chunk
    targets = rng.randint(0, 300, logits.shape[:-1])
    wide = logits.astype(np.float64)
    top = wide.max(axis=-1, keepdims=True)
    expected = (np.log(np.exp(wide - top).sum(axis=-1)) + top[..., 0]
                - np.take_along_axis(wide, targets[..., None], axis=-1)[..., 0])
    got = numpy_log_softmax_nll(logits, targets)
    assert got.shape == targets.shape and got.dtype == np.float64
    np.testing.assert_array_equal(got, expected)


@pytest.mark.skipif(nll_rows() is None, reason="needs the native kernels (g++ and an x86-64 CPU)")
def test_native_nll_agrees_with_numpy_and_leaves_it_what_it_refuses():
    rng = np.random.RandomState(1)
    logits = (rng.randn(3, 37, 1001) * 6).astype(np.float32)   # a vocabulary that is no multiple of 8
    logits[0, 0, :] = -3e38                                     # every term but the largest underflows
    logits[0, 0, 5] = 80.0
    logits[1, 2, :] = 7.0                                       # all equal: log(V)
    targets = rng.randint(0, 1001, logits.shape[:-1])
    got = log_softmax_nll(logits, targets)
    np.testing.assert_allclose(got, numpy_log_softmax_nll(logits, targets), rtol=1e-13, atol=1e-13)
    assert got[1, 2] == pytest.approx(np.log(1001), rel=1e-15)
    for isa in ("avx2", "portable"):   # the narrower vector paths too
        kernels.set_kernel_isa(isa)
        try:
            np.testing.assert_allclose(log_softmax_nll(logits, targets), got, rtol=1e-13, atol=1e-13)
        finally:
            kernels.set_kernel_isa(None)
    with pytest.raises(IndexError):   # a target out of range: numpy's own error
        log_softmax_nll(logits, np.full(targets.shape, 1001))
    logits[2, 3, 4] = np.nan          # a non-finite row: numpy's NaN, not the kernel's
    assert np.isnan(log_softmax_nll(logits, targets)[2, 3])
