"""The report of ``golden-ptq tune``: a markdown table of every trial and a PNG of score vs float Linears."""
from __future__ import annotations

import os
from typing import Dict, List

from golden_ptq.commands.tune_trials import FULL, Trial, TrialLog

REPORT_FILE = "tune_report.md"
CHART_FILE = "tune_trials.png"


def _fmt(value) -> str:
    return "" if value is None else f"{value:.6g}"


#: the chart's axis label for a perplexity target (``golden-ptq tune --task`` gives its own)
PERPLEXITY_LABEL = "perplexity ratio to FP32 (validation)"


def write_tune_report(folder: str, log: TrialLog, facts: List[str], png: bool = True,
                      score_label: str = PERPLEXITY_LABEL) -> Dict[str, str]:
    """Write ``tune_report.md`` (facts, then one row per trial in the order they ran) and, with
    ``png``, ``tune_trials.png``. Returns the written paths by kind."""
    from golden_ptq.io.atomic import atomic_write, atomic_write_text
    target = float(log.settings["target"])
    lines = ["# golden-ptq tune", "", *[f"- {fact}" for fact in facts], "",
             "| # | method | float Linears | screen ratio | full ratio | result |", "|---|---|---|---|---|---|"]
    for number, trial in enumerate(log.trials, 1):
        if trial.kind != FULL:
            result = "rejected on the screen"
        else:
            result = ("meets" if trial.meets else "misses") + (" · **best (saved)**" if trial is log.best else "")
        lines.append(f"| {number} | {trial.variant} | {trial.floats} | {_fmt(trial.screen)} | {_fmt(trial.score)} | "
                     f"{result} |")
    lines += ["", f"target: ratio <= {target:g}"]
    paths = {"markdown": os.path.join(folder, REPORT_FILE)}
    atomic_write_text(paths["markdown"], "\n".join(lines) + "\n")
    if png:
        paths["png"] = os.path.join(folder, CHART_FILE)
        atomic_write(paths["png"], lambda tmp: trial_chart(log.trials, log.best, target, tmp, score_label))
    return paths


def trial_chart(trials: List[Trial], best, target: float, path: str, score_label: str = PERPLEXITY_LABEL) -> None:
    """Each trial's ratio against its number of float Linears (full score; a rejected trial at its
    screen score, hollow), the target as a line, the saved best ringed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("the tune chart needs matplotlib: pip install matplotlib (or golden_ptq[report])") from err
    fig, axis = plt.subplots(figsize=(7, 4.5))
    variants = sorted({t.variant for t in trials}, key=[t.variant for t in trials].index)
    for index, variant in enumerate(variants):
        color = f"C{index % 10}"
        full = [t for t in trials if t.variant == variant and t.kind == FULL]
        rejected = [t for t in trials if t.variant == variant and t.kind != FULL]
        axis.scatter([t.floats for t in full], [t.score for t in full], color=color, label=variant, zorder=3)
        if rejected:
            axis.scatter([t.floats for t in rejected], [t.screen for t in rejected], facecolors="none",
                         edgecolors=color, label=f"{variant} (rejected on the screen)", zorder=3)
    if best is not None:
        axis.scatter([best.floats], [best.score], s=220, facecolors="none", edgecolors="black", label="best (saved)")
    axis.axhline(target, color="gray", linestyle="--", label=f"target {target:g}")
    axis.set_xlabel("float Linear layers")
    axis.set_ylabel(score_label)
    axis.set_title("golden-ptq tune: each trial")
    axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
