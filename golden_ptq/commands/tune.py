"""``golden-ptq tune``: the fewest float Linears (and, if need be, another outlier method) for a
score-ratio target, resumable, best model always on disk. A trial is scored by the perplexity
ratio on the validation split (quantized / FP32), or with ``--task`` by a precision test on the
user's file (FP32 / quantized BoolQ accuracy or SQuAD F1): either way lower is better and 1 is float.

Per method variant (the config as given, then each of ``--methods`` while the target is not
reached): calibrate once with the float cells kept, rank the Linears by sensitivity, and search the
smallest rollback level L (the L most sensitive Linears float) by doubling then bisection
(:func:`golden_ptq.algorithm.rollback.smallest_passing_level`: 0, 1, 2, 4, ... so a small answer
costs few trials). A trial first scores ``--screen-windows`` windows; a ratio above
``--reject-above`` there is a garbled candidate, rejected without the full score. After every
trial the log (``tune_log.json``) is rewritten, and a new best model replaces ``best/`` (an atomic
folder set) before the log names it. Rerunning the same command continues from the log.
"""
from __future__ import annotations

import math
import os
from typing import Dict, List, Optional, Tuple

from golden_ptq.commands.common import (OUTPUT_ROOT, Stopwatch, load_quant_config, network_helper, quant_config_name,
                                        split_windows)
from golden_ptq.commands.tune_trials import (FULL, REJECTED, Trial, TrialLog, outcome_of,
                                             standing_high_evaluations)

BEST_DIR = "best"
BASE_VARIANT = "config"
#: the PrecisionTest result each --task is scored by (higher is better)
TASK_METRICS = {"boolq": "accuracy", "squad1.1": "f1"}


def default_reject_above(target: float) -> float:
    """Screen ratio above which a candidate counts as garbled: 3x the target's distance from 1."""
    return 1.0 + 3.0 * max(target - 1.0, 0.005)


def default_screen_windows(eval_windows: int) -> int:
    """A quarter of the full score's windows, at most 2 (0, no screen, below 4 windows)."""
    return min(2, eval_windows // 4)


def check_tune_args(args) -> None:
    """One-line errors for settings that make no sense together (argparse checked each alone);
    fills in ``args.screen_windows`` when it was not given."""
    if args.screen_windows is None:
        args.screen_windows = default_screen_windows(args.eval_windows)
    if not math.isfinite(args.target) or args.target <= 0:
        raise ValueError(f"tune: --target {args.target} must be a finite score ratio > 0")
    if args.task != "perplexity" and args.dataset_path is None:
        raise ValueError(f"tune: --task {args.task} needs --dataset-path (the test's file; nothing is downloaded)")
    if args.task == "perplexity" and args.dataset_path is not None:
        raise ValueError("tune: --dataset-path is for --task boolq or squad1.1; perplexity is scored on --text")
    if args.eval_windows < 1:
        raise ValueError("tune: --eval-windows must be >= 1 (the full score needs windows)")
    if args.screen_windows >= args.eval_windows:
        raise ValueError(f"tune: --screen-windows {args.screen_windows} must be smaller than --eval-windows "
                         f"{args.eval_windows} (0 turns screening off)")
    if args.reject_above is not None and args.reject_above <= args.target:
        raise ValueError(f"tune: --reject-above {args.reject_above} must be larger than --target {args.target}")


def method_variants(config, methods: List[str]) -> List[Tuple[str, object]]:
    """(label, PTQConfig) of the config as given, then with each anti_method of ``methods``."""
    from golden_ptq import PTQConfig
    from golden_ptq.config.method_names import normalize_anti_method
    out = [(BASE_VARIANT, config)]
    for method in methods:
        code = normalize_anti_method(method, "tune --methods")
        if code == config.effective_anti_method or any(label == f"anti_method={code}" for label, _ in out):
            continue
        values = dict(config.to_dict(), anti_method=code, outliers_suppression="NONE")
        out.append((f"anti_method={code}", PTQConfig.from_dict(values)))
    return out


class VariantSearch:
    """The rollback-level search of one method variant; calibrates only when a trial is not logged."""

    def __init__(self, label: str, config, job: "TuneJob"):
        self.label, self.config, self.job = label, config, job
        self.ptq = self.network = None
        self.level = 0
        self.already: List[str] = []

    @property
    def ranking(self) -> Optional[List[str]]:
        return self.job.log.rankings.get(self.label)

    def limit(self) -> int:
        if self.ranking is None:
            self.calibrate()
        cap = self.job.args.max_float
        return len(self.ranking) if cap is None else max(0, min(len(self.ranking), cap - len(self.already_logged())))

    def already_logged(self) -> List[str]:
        return self.job.log.reference.get(f"already:{self.label}", []) if self.ptq is None else self.already

    def calibrate(self) -> None:
        from golden_ptq import PTQ
        job = self.job
        job.stage(f"calibrate {self.label}")
        self.network = job.float_network()
        self.ptq = PTQ(self.config, keep_float_cells=True, progress=not job.args.quiet)
        self.ptq.apply(self.network, None, job.calib)
        self.already = list(self.ptq.rolled_back)
        ranking = [n for n in self.ptq.sensitivity_ranking(job.args.signal) if n not in set(self.already)]
        if self.ranking is not None and self.ranking != ranking:
            raise RuntimeError(f"tune: calibrating {self.label} again ranked the layers differently from "
                               f"{job.log.path}; the calibration is not reproducible here, use another --output")
        job.log.rankings[self.label] = ranking
        job.log.reference[f"already:{self.label}"] = self.already
        job.log.save()

    def set_level(self, level: int) -> None:
        ranking = self.ranking
        if level < self.level:
            self.ptq.restore(self.network, ranking[level:self.level])
        elif level > self.level:
            self.ptq.roll_back(self.network, ranking[self.level:level], f"tune {self.label} L{level}")
        self.level = level

    def passes(self, level: int) -> bool:
        job = self.job
        logged = job.log.find(self.label, level)
        if logged is not None:
            return logged.meets
        if self.ptq is None:
            self.calibrate()
        self.set_level(level)
        names = self.ranking[:level]
        floats = len(self.already) + level
        screen = job.ratio(self.network, screen=True) if job.screen is not None else math.nan
        if job.screen is not None and not screen <= job.reject_above:   # NaN: garbled too
            trial = Trial(self.label, level, floats, REJECTED, screen, None, False, names)
        else:
            score = job.ratio(self.network, screen=False)
            trial = Trial(self.label, level, floats, FULL, screen, score, score <= job.args.target, names)
        if job.log.add(trial):
            job.save_best(self)
        job.trial_done(trial)
        return trial.meets


class TuneJob:
    """Settings, data and shared state of one ``golden-ptq tune`` run."""

    def __init__(self, args, stages):
        check_tune_args(args)
        self.args, self.stages = args, stages
        self.config_path, self.config = load_quant_config(args)
        self.variants = method_variants(self.config, args.methods)
        self.name = quant_config_name(self.config_path) + "-tuned"
        self.output = args.output or os.path.join(OUTPUT_ROOT, self.name)
        self.reject_above = args.reject_above if args.reject_above is not None else default_reject_above(args.target)
        self.task = args.task
        self.task_samples = args.task_samples if self.task != "perplexity" else None
        settings = {"quant_config": self.config.to_dict(), "network_config": _file_text(args.network_config),
                    "text": _file_text(args.text), "target": args.target, "signal": args.signal,
                    "calib_samples": args.calib_samples, "seq_length": args.seq_length,
                    "eval_windows": args.eval_windows, "screen_windows": args.screen_windows,
                    "reject_above": self.reject_above, "max_float": args.max_float, "task": self.task,
                    "dataset": _file_text(args.dataset_path), "task_samples": self.task_samples,
                    "methods": [label for label, _ in self.variants]}
        os.makedirs(self.output, exist_ok=True)
        self.log = TrialLog(self.output, settings)
        self.helper = network_helper(args.network_config)
        self.tokenizer = self.helper.create_tokenizer()
        self.calib = list(split_windows(self.tokenizer, "calibration", args.seq_length, args.calib_samples, args.text))
        val = split_windows(self.tokenizer, "validation", args.seq_length, args.eval_windows, args.text)
        self.val_tokens = val.reshape(-1)
        #: what a candidate is screened on (None: no screen): the first validation windows' tokens, or with
        #: --task the number of questions (the first quarter; none with --screen-windows 0)
        if self.task == "perplexity":
            self.screen = val[:args.screen_windows].reshape(-1) if args.screen_windows else None
        else:
            screen = self.task_samples // 4 if args.screen_windows else 0
            self.screen = screen or None
        self.scored_now = 0

    def stage(self, text: str) -> None:
        self.stages.set_description(text[:22])

    @property
    def score_name(self) -> str:
        return "perplexity" if self.task == "perplexity" else f"{self.task} {TASK_METRICS[self.task]}"

    def float_network(self):
        network = self.helper.create_network()
        if "fp32_score" not in self.log.reference:   # the reference scores, once per output folder
            self.stage(f"FP32 {self.score_name}"[:22])
            self.log.reference["fp32_score"] = self._score(network, screen=False)
            if self.screen is not None:
                self.log.reference["fp32_screen_score"] = self._score(network, screen=True)
            self.log.save()
        return network

    def _score(self, network, screen: bool) -> float:
        """Perplexity of the validation windows, or the precision test's metric (the screen: its first part)."""
        if self.task == "perplexity":
            from golden_ptq.eval.perplexity import perplexity
            tokens = self.screen if screen else self.val_tokens
            return perplexity(network, tokens, self.args.seq_length, batch_size=self.args.batch_size)
        from golden_ptq.eval.precision_test import PrecisionTest
        samples = self.screen if screen else self.task_samples
        result = PrecisionTest(network, self.tokenizer, self.task, batch_size=self.args.batch_size,
                               dataset_path=self.args.dataset_path, n_samples=samples,
                               seq_length=self.args.seq_length, verbose=False).test()
        return float(result[TASK_METRICS[self.task]])

    def ratio(self, network, screen: bool) -> float:
        """The trial's score against FP32's: lower is better, 1 is the float model."""
        reference = self.log.reference["fp32_screen_score" if screen else "fp32_score"]
        score = self._score(network, screen)
        if self.task == "perplexity":
            return score / reference
        return reference / score if score > 0 else math.inf   # accuracy / F1: higher is better

    def save_best(self, search: VariantSearch) -> None:
        from golden_ptq.commands.common import report_writers
        from golden_ptq.deploy import save_quantized
        best = self.log.best
        facts = [f"golden-ptq tune: {best.variant}, {best.floats} float Linear(s), {self.score_name} ratio "
                 f"{best.score:.6g} (target {self.args.target:g})"]
        report = report_writers(search.ptq, f"golden-ptq tune: {self.name}", facts)["report.md"]  # no chart: every trial
        save_quantized(search.network, search.ptq, os.path.join(self.output, BEST_DIR), tokenizer=self.tokenizer,
                       runtime={"seq_length": self.args.seq_length}, extra_files={"report.md": report})
        self.log.save()

    def trial_done(self, trial: Trial) -> None:
        self.scored_now += 1
        self.stage(f"tune trial {len(self.log.trials)}")

    def run(self) -> List[str]:
        from golden_ptq.algorithm.rollback import smallest_passing_level
        clock = Stopwatch()
        found: Dict[str, Optional[int]] = {}
        for label, config in self.variants:
            search = VariantSearch(label, config, self)
            level, reached = smallest_passing_level(search.passes, search.limit())
            found[label] = level if reached else None
            if reached:
                break
        self.stages.update()
        ours, standing = self.log.full_evaluations, 0
        for label in found:
            count, _ = standing_high_evaluations(self._limit(label), outcome_of(self.log.trials, label, found[label]))
            standing += count
        return self.finish(found, ours, standing, clock)

    def _limit(self, label: str) -> int:
        ranking = self.log.rankings[label]
        already = self.log.reference.get(f"already:{label}", [])
        cap = self.args.max_float
        return len(ranking) if cap is None else max(0, min(len(ranking), cap - len(already)))

    def finish(self, found, ours: int, standing: int, clock: Stopwatch) -> List[str]:
        import importlib.util
        from golden_ptq.commands.tune_report import PERPLEXITY_LABEL, write_tune_report
        best = self.log.best
        reached = best is not None and best.meets
        verdict = "reached" if reached else "NOT reached (the best model tried is saved)"
        screens = sum(t.kind == REJECTED for t in self.log.trials)
        screened_on = (f"{self.args.screen_windows} screen window(s)" if self.task == "perplexity"
                       else f"{self.screen or 0} screen question(s)")
        comparison = (f"full evaluations: {ours} (plus {screens} candidate(s) rejected on {screened_on}); "
                      f"msModelSlim standing_high on the same outcomes: {standing}")
        scored_on = (f"{self.val_tokens.size} validation tokens" if self.task == "perplexity"
                     else f"{self.task_samples} questions of {self.args.dataset_path}")
        facts = [f"target {self.score_name} ratio {self.args.target:g} on {scored_on} "
                 f"(FP32 {self.score_name} {self.log.reference.get('fp32_score', float('nan')):.4f}): {verdict}",
                 comparison,
                 "standing_high: level 0, then a binary search of the rollback level over the ranked Linears, "
                 "one full evaluation each, per method tried; its pass/fail at a level this run did not score is "
                 "inferred from the smallest passing level found (more float layers never hurt)",
                 f"methods tried: {', '.join(found)}; screen rejects above ratio {self.reject_above:g}"]
        if best is not None:
            facts.append(f"best: {best.variant}, {best.floats} float Linear(s), ratio {best.score:.6g}: "
                         f"{', '.join(best.names) or '-'}")
        png = importlib.util.find_spec("matplotlib") is not None
        label = PERPLEXITY_LABEL if self.task == "perplexity" else f"FP32 / quantized {self.score_name}"
        paths = write_tune_report(self.output, self.log, facts, png=png, score_label=label)
        lines = [f"tuned {quant_config_name(self.config_path)}: target {self.score_name} ratio {self.args.target:g} "
                 f"{verdict}"]
        if best is not None:
            lines.append(f"best: {best.variant}, ratio {best.score:.4f} with {best.floats} float Linear layer(s)")
        lines += [comparison, f"trials: {len(self.log.trials)} ({self.scored_now} scored in this run"
                              f"{', resumed from the log' if self.log.resumed else ''})",
                  f"time: {clock.seconds():.0f} s", f"model: {os.path.join(self.output, BEST_DIR)}",
                  f"report: {', '.join(sorted(paths.values()))}"]
        return lines


def _file_text(path: Optional[str]) -> Optional[str]:
    """A settings value that changes when the file does: its path and size."""
    return None if path is None else f"{os.path.abspath(path)} ({os.path.getsize(path)} bytes)"


def run_tune(args, stages) -> List[str]:
    """The job behind ``golden-ptq tune`` (see the module docstring)."""
    return TuneJob(args, stages).run()
