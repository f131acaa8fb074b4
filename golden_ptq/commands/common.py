"""What the jobs of the command line share: the network, the text windows, the report, the summary."""
from __future__ import annotations

import os
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

DEFAULT_QUANT_CONFIG = "a8w8_dynamic"
OUTPUT_ROOT = "golden_ptq_out"


def network_helper(path: Optional[str]):
    from golden_ptq.deploy import default_network_config
    from golden_ptq.networks.helper import NetworkHelper
    return NetworkHelper(path or default_network_config())


def load_quant_config(args):
    """``(path, PTQConfig)`` of ``--quant-config`` (a shipped name or a yaml), with ``--calibration-inputs``
    applied when given."""
    from golden_ptq import PTQConfig
    from golden_ptq.deploy import packaged_quant_config
    path = packaged_quant_config(args.quant_config)
    config = PTQConfig.load(path)
    if getattr(args, "calibration_inputs", None):
        config = config.with_algo_args(calibration_inputs=args.calibration_inputs)
    return path, config


def quant_config_name(name: str) -> str:
    """``a8w8_dynamic`` for ``a8w8_dynamic``, ``configs/ptq/a8w8_dynamic.yaml`` or any path."""
    base = os.path.basename(name)
    return base[:-5] if base.endswith(".yaml") else base


def split_windows(tokenizer, split: str, seq_length: int, max_windows: Optional[int], text: Optional[str]) -> np.ndarray:
    from golden_ptq.eval.corpus import corpus_windows
    return corpus_windows(tokenizer, split, seq_length, max_windows or None, text)


def scheme_line(counts: Dict[str, int]) -> str:
    """``W8A8-dynamic 180 · FLOAT 31 · C8 30``: most common first."""
    return " · ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def human_bytes(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000.0
    return f"{count:.1f} GB"


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names)


def report_writers(ptq, title: str, facts: List[str]) -> Dict[str, object]:
    """Writers of ``report.md`` (facts, the per-layer table, the sensitivity table) and, with
    matplotlib installed, ``report.png`` (per-layer output error / range_parm)."""
    from golden_ptq.algorithm.sensitivity import sensitivity_rows

    rows = sensitivity_rows(ptq, "output_error") if (ptq.range_parms or ptq.output_errors) else []

    def markdown(path: str) -> None:
        lines = [f"# {title}", "", *[f"- {fact}" for fact in facts], "", "## What every layer became", "", "```",
                 ptq.summary(), "```", ""]
        if rows:
            lines += ["## Sensitivity (most sensitive first)", "",
                      "| rank | layer | output error (rel. MSE) | range_parm | kept float by |", "|---|---|---|---|---|"]
            lines += [f"| {r['rank']} | `{r['layer']}` | {_fmt(r['output_error'])} | {_fmt(r['range_parm'])} | "
                      f"{r['float']} |" for r in rows]
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")

    writers: Dict[str, object] = {"report.md": markdown}
    if rows and _has_matplotlib():
        from golden_ptq.algorithm.sensitivity import bar_chart
        writers["report.png"] = lambda path: bar_chart(rows, path, "output_error")
    return writers


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4g}"


def _has_matplotlib() -> bool:
    import importlib.util
    return importlib.util.find_spec("matplotlib") is not None


class Stopwatch:
    """Wall time since it was made, and of each stage ended with :meth:`lap`."""

    def __init__(self) -> None:
        self.start = time.time()
        self._mark = self.start
        self.laps: List[Tuple[str, float]] = []

    def seconds(self) -> float:
        return time.time() - self.start

    def lap(self, stage: str) -> None:
        """The stage that began at the previous lap (or at the start) ends now."""
        now = time.time()
        self.laps.append((stage, now - self._mark))
        self._mark = now

    def breakdown(self) -> str:
        """``load 4 s · FP32 eval 12 s · ...`` (each stage rounded to 0.1 s below 10 s)."""
        return " · ".join(f"{stage} {seconds:.1f} s" if seconds < 10 else f"{stage} {seconds:.0f} s"
                          for stage, seconds in self.laps)
