"""benchmarks/speed.py's measuring order: side by side, neither runner always first."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("speed_benchmark", os.path.join(ROOT, "benchmarks", "speed.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeRunner:
    """Records which runner ran what, in order, and the token ids it was given."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def prefill(self, ids):
        self.log.append((self.name, "prefill", ids.shape, int(ids.sum())))

    def decode(self, ids, steps):
        self.log.append((self.name, "decode", ids.shape, int(ids.sum())))
        return 0.5


def test_rounds_alternate_which_runner_goes_first_column_by_column(speed):
    log = []
    runners = {"fp32": FakeRunner("fp32", log), "form": FakeRunner("form", log)}
    samples = speed.interleaved_rounds(runners, repeats=2, vocab=100, decode_steps=4)
    per_round = len(speed.COLUMNS) * 2
    assert len(log) == 2 * per_round
    for round_index, first in ((0, "fp32"), (1, "form")):
        calls = log[round_index * per_round:(round_index + 1) * per_round]
        pairs = [calls[i:i + 2] for i in range(0, per_round, 2)]
        for a, b in pairs:
            assert a[0] == first and b[0] != first        # reversed order every other round
            assert a[1:] == b[1:]                          # same column, same token ids, back to back
    assert [len(samples[n]) for n in runners] == [2, 2]
    assert samples["form"][0]["decode b8"] == pytest.approx(8 * 4 / 0.5)
    assert list(samples["fp32"][0]) == speed.COLUMNS


def test_transformers_and_fp32_alone_alternate_which_process_goes_first(speed):
    assert speed.alternating_order(3) == [speed.ALONE_FP32, speed.ALONE_TF, speed.ALONE_TF, speed.ALONE_FP32,
                                          speed.ALONE_FP32, speed.ALONE_TF]


def test_apart_rounds_are_pooled_per_framework(speed, monkeypatch):
    def fake_worker(flags, partner):
        name = "fp32" if partner == speed.ALONE_FP32 else "transformers"
        rate = 100.0 if name == "fp32" else 200.0
        return {"samples": {name: [{c: rate for c in speed.COLUMNS}]}, "warmup_s": {name: 1.0},
                "peak_rss_gb": 3.0 if name == "fp32" else 5.0, "kernels": "avx2"}

    monkeypatch.setattr(speed, "_run_worker", fake_worker)
    combined = speed._transformers_apart([], 2)
    assert [len(combined["samples"][n]) for n in ("fp32", "transformers")] == [2, 2]
    assert combined["peak_rss_gb"] == 3.0 and combined["apart"]   # golden_ptq's process, not torch's
    monkeypatch.setattr(speed, "_run_worker", lambda flags, partner: None)
    assert speed._transformers_apart([], 2) is None
