"""``golden-ptq tune`` on a tiny random network: trial log, resume after an interrupt, best model on
disk, report, one-line errors, and the evaluation count against msModelSlim's standing_high."""
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from golden_ptq.algorithm.rollback import smallest_passing_level
from golden_ptq.cli import main
from golden_ptq.commands import tune as tune_module
from golden_ptq.commands.tune_trials import FULL, LOG_FILE, TrialLog, standing_high_evaluations

# the random network's ratios are 0.9995 (nothing float) to 1.0 (all float): target 1.0 is met at
# once, target 0.5 never, so the search walks 0, 1, 2, 4, 8, 12 float Linears
ORIGINAL_RATIO = tune_module.TuneJob.ratio
ARGS = ["--quant-config", "a8w8_smooth", "--calib-samples", "2", "--eval-windows", "3",
        "--screen-windows", "1", "--seq-length", "32", "--batch-size", "3", "--quiet"]


@pytest.fixture(scope="module")
def tiny_network_yaml(tmp_path_factory, smollm2_gguf):
    config = {"model": {"source": "random", "seed": 0, "tokenizer": "default",
                        "config": dict(vocab_size=49152, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                                       intermediate_size=48, max_position_embeddings=64)}}
    folder = tmp_path_factory.mktemp("net")
    path = folder / "net.yaml"
    path.write_text(yaml.safe_dump(config))
    from golden_ptq.eval.corpus import corpus_text
    (folder / "text.txt").write_text(corpus_text()[:6000], encoding="utf-8")  # enough windows, fast to tokenize
    return str(path)


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory, tiny_network_yaml):
    """One uninterrupted run that never reaches its target: (output folder, printed lines, ratio calls)."""
    import contextlib
    import io
    out = tmp_path_factory.mktemp("whole") / "tuned"
    calls = []

    def ratio(job, network, screen):
        calls.append("screen" if screen else "full")
        return ORIGINAL_RATIO(job, network, screen)

    tune_module.TuneJob.ratio = ratio
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            assert tune(tiny_network_yaml, out) == 0
    finally:
        tune_module.TuneJob.ratio = ORIGINAL_RATIO
    return out, printed.getvalue(), calls, tiny_network_yaml


def tune(net_yaml, out, *extra, target="0.5"):
    text = os.path.join(os.path.dirname(net_yaml), "text.txt")
    return main(["tune", "--network-config", net_yaml, "--output", str(out), "--target", target, "--text", text,
                 *ARGS, *extra])


def read_log(out):
    return json.loads((out / LOG_FILE).read_text())


class CountingRatio:
    """Counts TuneJob.ratio calls (full and screen); raises KeyboardInterrupt at call ``stop_at``."""

    def __init__(self, monkeypatch, stop_at=None):
        self.calls, self.stop_at = [], stop_at
        def ratio(job, network, screen):
            if self.stop_at is not None and len(self.calls) + 1 == self.stop_at:
                raise KeyboardInterrupt
            self.calls.append("screen" if screen else "full")
            return ORIGINAL_RATIO(job, network, screen)

        monkeypatch.setattr(tune_module.TuneJob, "ratio", ratio)


def test_resume_after_an_interrupt_redoes_no_trial(tmp_path, tiny_network_yaml, whole_run, monkeypatch, capsys):
    whole, _, whole_calls, _ = whole_run
    reference = read_log(whole)
    assert len(reference["trials"]) >= 3 and len(whole_calls) >= 4

    out = tmp_path / "interrupted"
    stopper = CountingRatio(monkeypatch, stop_at=4)   # interrupted in the middle of the third trial or so
    assert tune(tiny_network_yaml, out) == 130
    done = read_log(out)["trials"]
    assert 0 < len(done) < len(reference["trials"])
    resumed = CountingRatio(monkeypatch)
    assert tune(tiny_network_yaml, out) == 0
    assert "resumed from the log" in capsys.readouterr().out
    log = read_log(out)
    keys = [(t["variant"], t["level"]) for t in log["trials"]]
    assert len(keys) == len(set(keys))                       # no trial scored twice
    assert log["trials"][:len(done)] == done                 # the finished ones kept as they were
    assert len(stopper.calls) + len(resumed.calls) - len(whole_calls) <= 1   # at most the cut-off trial's screen
    assert log["trials"] == reference["trials"] and log["best"] == reference["best"]


def test_best_model_on_disk_matches_the_report(whole_run):
    from golden_ptq.deploy import load_quantized
    from golden_ptq.eval.corpus import corpus_windows
    from golden_ptq.eval.perplexity import perplexity
    out, printed, _, _ = whole_run
    assert "target perplexity ratio 0.5 NOT reached (the best model tried is saved)" in printed
    log = read_log(out)
    best = next(t for t in log["trials"] if [t["variant"], t["level"]] == log["best"])
    network, ptq = load_quantized(str(out / "best"))
    assert sorted(ptq.config.disable_names) == sorted(best["names"])
    val = corpus_windows(_tokenizer(out), "validation", 32, 3, os.path.join(os.path.dirname(whole_run[3]), "text.txt"))
    ratio = perplexity(network, val.reshape(-1), 32, batch_size=3) / log["reference"]["fp32_score"]
    assert ratio == pytest.approx(best["score"], rel=1e-6)
    assert f"ratio {best['score']:.4f} with {best['floats']} float Linear layer(s)" in printed
    assert "msModelSlim standing_high on the same outcomes" in printed

    report = (out / "tune_report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == len(log["trials"])
    assert sum("**best (saved)**" in row for row in rows) == 1
    full = sum(t["kind"] == FULL for t in log["trials"])
    assert f"full evaluations: {full} " in report
    png = (out / "tune_trials.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def _tokenizer(out):
    from golden_ptq.networks.helper import NetworkHelper
    return NetworkHelper(str(out / "best" / "network.yaml")).create_tokenizer()


def test_a_changed_setting_is_refused_naming_it(whole_run, tiny_network_yaml, capsys):
    out = whole_run[0]
    before = (out / LOG_FILE).read_text()
    assert tune(tiny_network_yaml, out, "--max-float", "2") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "max_float: None there, 2 now" in err and "another --output" in err
    assert tune(tiny_network_yaml, out, target="0.6") == 2
    assert "target: 0.5 there, 0.6 now" in capsys.readouterr().err
    assert (out / LOG_FILE).read_text() == before


@pytest.mark.parametrize("value, message", [
    ("nan", "argument --target: 'nan' must be a finite number > 0"),
    ("-1", "argument --target: '-1' must be a finite number > 0"),
    ("one", "argument --target: 'one' is not a number"),
])
def test_bad_targets_are_refused_by_the_parser(tmp_path, tiny_network_yaml, capsys, value, message):
    with pytest.raises(SystemExit) as exit_info:
        tune(tiny_network_yaml, tmp_path / "x", target=value)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("extra, message", [
    (["--screen-windows", "3"], "--screen-windows 3 must be smaller than --eval-windows 3"),
    (["--reject-above", "0.4"], "--reject-above 0.4 must be larger than --target 0.5"),
    (["--methods", "m9"], "'m9'"),
])
def test_bad_settings_are_one_line_errors(tmp_path, tiny_network_yaml, capsys, extra, message):
    assert tune(tiny_network_yaml, tmp_path / "x", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x" / LOG_FILE).exists()


def test_garbled_candidates_are_rejected_and_capped_runs_cycle_methods(tmp_path, tiny_network_yaml, monkeypatch,
                                                                       capsys):
    """Every screen ratio here is about 1.0, so --reject-above 0.9 rejects every candidate on one
    window (no full evaluation, no model saved); with at most 1 float Linear the config misses the
    target, so the search goes on with m2."""
    counter = CountingRatio(monkeypatch)
    out = tmp_path / "tuned"
    assert tune(tiny_network_yaml, out, "--reject-above", "0.9", "--max-float", "1", "--methods", "m2") == 0
    log = read_log(out)
    assert [(t["variant"], t["level"]) for t in log["trials"]] == [("config", 0), ("config", 1),
                                                                   ("anti_method=m2", 0), ("anti_method=m2", 1)]
    assert all(t["kind"] == "rejected" and t["score"] is None for t in log["trials"])
    assert counter.calls == ["screen"] * 4
    assert log["best"] is None and not (out / "best").exists()
    assert "full evaluations: 0 (plus 4 candidate(s) rejected" in capsys.readouterr().out
    assert "methods tried: config, anti_method=m2" in (out / "tune_report.md").read_text()


class FakeJob:
    """What VariantSearch needs from a TuneJob, with the ratio of a level given by ``curve``."""

    def __init__(self, folder, curve, target, limit):
        self.args = SimpleNamespace(target=target, max_float=None, signal="output_error", quiet=True)
        self.log = TrialLog(str(folder), {"target": target})
        self.log.rankings["config"] = [f"layer{i}" for i in range(limit)]
        self.screen = np.zeros(1)            # screening on
        self.reject_above = tune_module.default_reject_above(target)
        self.curve, self.search = curve, None

    def ratio(self, network, screen):
        return self.curve(self.search.level)

    def save_best(self, search):
        self.log.save()

    def trial_done(self, trial):
        pass


class FakePTQ:
    def roll_back(self, network, names, reason):
        pass

    def restore(self, network, names):
        pass


@pytest.mark.parametrize("answer", [0, 1, 3, 6, 17, 60, 150])
def test_tune_search_needs_fewer_full_evaluations_than_standing_high(tmp_path, answer):
    """On 210 ranked Linears (SmolLM2's) with a ratio falling 0.004 per float Linear down to the
    target 1.01 at ``answer``: the real VariantSearch (screen, then full score) finds the same
    level as standing_high with fewer full evaluations."""
    target = 1.01

    def curve(level):
        return 1.009 + 0.004 * max(answer - level, 0) - (0.0001 if level >= answer else 0.0)

    job = FakeJob(tmp_path, curve, target, 210)
    search = tune_module.VariantSearch("config", None, job)
    search.ptq, search.network, job.search = FakePTQ(), None, search
    level, reached = smallest_passing_level(search.passes, search.limit())
    standing, found = standing_high_evaluations(210, lambda lv: curve(lv) <= target)
    assert reached and level == found == answer
    ours = job.log.full_evaluations
    assert ours < standing if answer else ours == standing == 1
    assert all(t.meets == (curve(t.level) <= target) for t in job.log.trials if t.kind == FULL)


def test_standing_high_count_by_hand():
    # level 0 fails; [1, 10]: 5 passes, 2 fails, 3 fails, 4 fails -> 5 evaluations, found 5
    assert standing_high_evaluations(10, lambda lv: lv >= 5) == (5, 5)
    assert standing_high_evaluations(10, lambda lv: True) == (1, 0)
    assert standing_high_evaluations(4, lambda lv: False) == (4, None)   # 0, then 2, 3, 4
    assert np.isfinite(tune_module.default_reject_above(1.01))


def test_a_precision_test_target_scores_trials_on_the_task(tmp_path, tiny_network_yaml, monkeypatch):
    """--task boolq: the reference and every trial are BoolQ accuracies on the user's file (ratio FP32 /
    quantized), screened on the first quarter of the questions; the log and report say so."""
    from golden_ptq.eval import precision_test
    rows = [{"question": f"is {w} a word", "title": w, "passage": f"{w} is a word.", "answer": i % 3 != 0}
            for i, w in enumerate("sea ship whale sail rope deck mast oar".split())]
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    seen = []
    original = precision_test.PrecisionTest.test

    def test(self):
        result = original(self)
        seen.append((self.dataset, self.n_samples, result["count"], result["accuracy"]))
        return result

    monkeypatch.setattr(precision_test.PrecisionTest, "test", test)
    out = tmp_path / "tuned"
    assert tune(tiny_network_yaml, out, "--task", "boolq", "--dataset-path", str(data), "--task-samples", "8",
                "--max-float", "1", target="1.0") == 0
    log = read_log(out)
    assert {s[0] for s in seen} == {"boolq"} and {s[1] for s in seen} == {8, 2}
    assert log["reference"]["fp32_score"] == seen[0][3] and log["settings"]["task"] == "boolq"
    full = [t for t in log["trials"] if t["kind"] == FULL]
    assert full, log["trials"]
    for trial in full:   # FP32 / quantized accuracy, the calls after the two reference ones
        quantized = [s[3] for s in seen[2:] if s[1] == 8]
        assert any(trial["score"] == pytest.approx(seen[0][3] / q) for q in quantized if q > 0)
    report = (out / "tune_report.md").read_text()
    assert "boolq accuracy ratio" in report and "rejected on 2 screen question(s)" in report


def test_task_settings_are_checked(tmp_path, tiny_network_yaml, capsys):
    assert tune(tiny_network_yaml, tmp_path / "t", "--task", "boolq") == 2
    assert "--task boolq needs --dataset-path" in capsys.readouterr().err
