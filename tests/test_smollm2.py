"""The real default model: numerics against a numpy forward, and a sanity completion."""
import numpy as np
import pytest

import reference
from golden_ptq.eval.corpus import corpus_split
from golden_ptq.eval.perplexity import log_softmax_nll, perplexity

pytestmark = pytest.mark.slow
SEQ, WINDOWS = 256, 2  # the first 2 windows of 256 tokens of the evaluation split (last fifth)


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    from golden_ptq.networks.loaders import load_gguf
    return load_gguf(smollm2_gguf, max_position_embeddings=1024)


def test_perplexity_matches_numpy_reference(smollm2):
    network, tokenizer = smollm2
    eval_text = corpus_split("evaluation")
    tokens = np.asarray(tokenizer.encode(eval_text[:8000]))[: SEQ * WINDOWS]
    ours = perplexity(network, tokens, SEQ)
    weights = reference.network_weights(network)
    cfg = reference.cfg_dict(network.config)
    nll = [log_softmax_nll(reference.forward(weights, cfg, w)[:-1], w[1:]) for w in tokens.reshape(WINDOWS, SEQ)]
    ref = float(np.exp(np.concatenate(nll).mean()))
    assert abs(ours / ref - 1) < 0.005, (ours, ref)
    assert 5 < ours < 200  # an intact model on English prose; a broken rope/permutation gives thousands


def test_greedy_completion_knows_paris(smollm2):
    network, tokenizer = smollm2
    ids = np.array([tokenizer.encode("The capital of France is")])
    out = network.generate(ids, max_new_tokens=6, eos_token_id=tokenizer.eos_token_id)[0]
    assert "Paris" in tokenizer.decode(out[ids.shape[1]:].tolist())


def test_tokenizer_roundtrip(smollm2):
    _, tokenizer = smollm2
    text = "Call me Ishmael. Some years ago—never mind how long precisely—1851."
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.encode("2024") == [tokenizer.backend.token_to_id(d) for d in "2024"]  # digits split
