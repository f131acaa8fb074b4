"""The trial log of ``golden-ptq tune``: what was tried, what it scored, which model is the best so far.

The log (``tune_log.json`` in the output folder) is rewritten atomically after every trial. It
starts with the run's settings; a rerun with the same settings continues from it without scoring
a finished trial again, and a rerun with different settings is refused, naming what differs.

``standing_high_evaluations`` counts the full evaluations msModelSlim's ``standing_high`` tuning
would spend on the same outcomes: evaluate with nothing rolled back, then a binary search of the
rollback level over ``[1, limit]``, one full evaluation (a calibration and a full score) per level.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from golden_ptq.io.atomic import atomic_write_text

LOG_FILE = "tune_log.json"
LOG_VERSION = 1
FULL, REJECTED = "full", "rejected"


class TuneLogMismatch(ValueError):
    """The output folder holds the log of a tune run with other settings."""


@dataclass
class Trial:
    """One candidate: ``variant`` (the method settings), ``level`` layers rolled back by the search
    (``floats`` float Linears in all), its screening score on a few windows and, unless it was
    rejected there (``kind == "rejected"``), its full score; ``meets`` the target or not."""
    variant: str
    level: int
    floats: int
    kind: str
    screen: float
    score: Optional[float]
    meets: bool
    names: List[str] = field(default_factory=list)

    @property
    def key(self) -> Tuple[str, int]:
        return self.variant, self.level


def better(a: Trial, b: Optional[Trial]) -> bool:
    """Is ``a`` a better model to keep than ``b``: meeting the target with fewer float Linears
    (then a lower score); when neither meets it, a lower score. Rejected trials never are."""
    if a.kind != FULL or a.score is None or math.isnan(a.score):
        return False
    if b is None:
        return True
    if a.meets != b.meets:
        return a.meets
    if a.meets:
        return (a.floats, a.score) < (b.floats, b.score)
    return a.score < b.score


class TrialLog:
    """``tune_log.json`` of one output folder: settings, reference scores, rankings, trials, best."""

    def __init__(self, folder: str, settings: Dict[str, object]):
        self.path = os.path.join(folder, LOG_FILE)
        self.settings = json.loads(json.dumps(settings))   # plain json values, as they are stored
        self.reference: Dict[str, float] = {}
        self.rankings: Dict[str, List[str]] = {}
        self.trials: List[Trial] = []
        self.best: Optional[Trial] = None
        self.resumed = False
        if os.path.exists(self.path):
            self._resume()

    def _resume(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError) as err:
            raise TuneLogMismatch(f"tune: {self.path} is not a readable trial log ({err}); remove it or use "
                                  f"another --output") from None
        if data.get("version") != LOG_VERSION:
            raise TuneLogMismatch(f"tune: {self.path} has log version {data.get('version')!r}, this golden_ptq "
                                  f"writes {LOG_VERSION}; remove it or use another --output")
        old = data.get("settings", {})
        differ = [k for k in sorted(set(old) | set(self.settings)) if old.get(k) != self.settings.get(k)]
        if differ:
            shown = "; ".join(f"{k}: {old.get(k)!r} there, {self.settings.get(k)!r} now" for k in differ[:3])
            raise TuneLogMismatch(f"tune: {self.path} was written by a run with other settings ({shown}); rerun "
                                  f"with the same settings to resume, or use another --output")
        self.reference = dict(data.get("reference", {}))
        self.rankings = {k: list(v) for k, v in data.get("rankings", {}).items()}
        self.trials = [Trial(**t) for t in data.get("trials", [])]
        best = data.get("best")
        self.best = next((t for t in self.trials if best is not None and list(t.key) == best), None)
        self.resumed = True

    def find(self, variant: str, level: int) -> Optional[Trial]:
        return next((t for t in self.trials if t.key == (variant, level)), None)

    def add(self, trial: Trial) -> bool:
        """Record ``trial``; True when it is the new best (the caller then saves its model first
        and calls :meth:`save`, so the log never names a best that is not on disk)."""
        self.trials.append(trial)
        if better(trial, self.best):
            self.best = trial
            return True
        self.save()
        return False

    def save(self) -> None:
        data = {"version": LOG_VERSION, "settings": self.settings, "reference": self.reference,
                "rankings": self.rankings, "trials": [asdict(t) for t in self.trials],
                "best": list(self.best.key) if self.best is not None else None}
        atomic_write_text(self.path, json.dumps(data, indent=1) + "\n")

    @property
    def full_evaluations(self) -> int:
        return sum(t.kind == FULL for t in self.trials)

    @property
    def screens(self) -> int:
        return len(self.trials)


def standing_high_evaluations(limit: int, passes: Callable[[int], bool]) -> Tuple[int, Optional[int]]:
    """(full evaluations, level found or None) of msModelSlim's standing_high search on one method:
    level 0, then a binary search of the smallest passing level in ``[1, limit]``."""
    count = 1
    if passes(0):
        return count, 0
    low, high, found = 1, limit, None
    while low <= high:
        middle = (low + high) // 2
        count += 1
        if passes(middle):
            found, high = middle, middle - 1
        else:
            low = middle + 1
    return count, found


def outcome_of(trials: List[Trial], variant: str, found: Optional[int]) -> Callable[[int], bool]:
    """Whether a level passes, as this run saw it: a scored level's own result; any other level by
    monotonicity from the smallest passing level found (None: nothing passed)."""
    seen = {t.level: t.meets for t in trials if t.variant == variant}
    return lambda level: seen[level] if level in seen else (found is not None and level >= found)
