"""Search for the fewest Linear layers to roll back to float so that a metric reaches a target.

msModelSlim's ``disable_level='Lx'`` rolls back the x most sensitive Linear layers and leaves x to
the user's guess. :func:`search_rollback` answers "roll back as few layers as needed for
``score(network) <= target``" instead, with one calibration: after ``PTQ.apply`` every quantized
Cell is already in its deployed (integer) form, and ``PTQ(config, keep_float_cells=True)`` keeps
the float Cells, so a trial only swaps Cells (``PTQ.roll_back`` / ``PTQ.restore``) and calls the
user's ``score`` once. ``score`` is the loop the user controls (perplexity, task accuracy
negated, ...); lower is better.

Strategy: L = 0, then L = 1, 2, 4, 8, ... layers in sensitivity order until the score meets the
target (or every ranked layer is float), then bisection between the last failing and the first
passing L. When rolling back more layers never makes the score worse this finds the smallest
passing L in about ``2 * log2(L)`` score calls; when it can, the answer is the smallest passing L
of the bracket it searched.
"""
from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

from mindspore import nn

from golden_ptq.algorithm.ptq import PTQ

LOGGER = logging.getLogger("golden_ptq")
SIGNALS = ("range_parm", "output_error")


@dataclass(frozen=True)
class RollbackTrial:
    """One evaluated candidate: ``level`` layers rolled back by the search (``names``), and its score."""
    level: int
    names: Tuple[str, ...]
    score: float


@dataclass
class RollbackSearchResult:
    """What :func:`search_rollback` tried and chose; the chosen set is left applied to the network.

    ``level`` / ``names``: the layers the search rolled back, the first ``level`` of ``ranking``
    (the layers that were not float before the search, most sensitive first by ``signal``).
    ``already_rolled_back``: layers that were float before the search (``disable_level``, or an
    earlier ``PTQ.roll_back``); they stay float. ``reached`` is False when no tried set met
    ``target``; the lowest-scoring tried set is then applied. ``disable_level``: the equivalent
    ``PTQConfig(disable_level=..., rollback_signal=signal)`` when all float layers are a prefix of
    the signal's ranking, else None.
    """
    signal: str
    target: float
    ranking: List[str]
    already_rolled_back: List[str]
    level: int
    names: List[str]
    score: float
    reached: bool
    trials: List[RollbackTrial]
    disable_level: Optional[str]

    @property
    def rolled_back(self) -> List[str]:
        """Every layer left float by rollback: those before the search, then the search's."""
        return self.already_rolled_back + self.names

    def summary(self) -> str:
        """A few lines for a log: every trial, then the choice."""
        lines = [f"rollback search by {self.signal}, target {self.target:.6g}, "
                 f"{len(self.ranking)} candidate layers, {len(self.already_rolled_back)} already float"]
        for trial in self.trials:
            mark = "meets" if trial.score <= self.target else "misses"
            lines.append(f"  L{trial.level:<4} score {trial.score:.6g}  {mark} the target")
        verdict = "reached" if self.reached else "NOT reached (best tried set applied)"
        lines.append(f"chosen L{self.level} ({verdict}), score {self.score:.6g}: {', '.join(self.names) or '-'}")
        return "\n".join(lines)


def search_rollback(ptq: PTQ, network: nn.Cell, score: Callable[[nn.Cell], float], target: float, *,
                    signal: str = "range_parm", max_layers: Optional[int] = None) -> RollbackSearchResult:
    """Roll back the fewest layers, in ``signal`` order, for ``score(network) <= target``, so that
    users state the accuracy they need instead of guessing ``disable_level``.

    ``ptq`` must have calibrated ``network`` with ``PTQ(config, keep_float_cells=True)`` and not yet
    converted it. ``score(network)`` is called once per trial on the network with that trial's
    layers float (lower is better; NaN counts as missing the target). ``max_layers`` caps how many
    layers the search may roll back. The chosen set is left applied, ``ptq.rolled_back`` and
    ``ptq.records`` say so (``save_quantized`` then writes it into DEPLOY's ``disable_names``).
    If ``score`` raises, the network is put back as it was before the search.
    """
    if not isinstance(ptq, PTQ):
        raise TypeError(f"search_rollback: ptq must be the PTQ that calibrated the network, got {type(ptq).__name__}")
    if not callable(score):
        raise TypeError(f"search_rollback: score must be a callable score(network) -> float, got {type(score).__name__}")
    if signal not in SIGNALS:
        raise ValueError(f"search_rollback: signal {signal!r} not allowed; allowed: {list(SIGNALS)}")
    if isinstance(target, bool) or not isinstance(target, numbers.Real) or math.isnan(target):
        raise ValueError(f"search_rollback: target must be a number (the score to reach), got {target!r}")
    if max_layers is not None and (isinstance(max_layers, bool) or not isinstance(max_layers, numbers.Integral)
                                   or max_layers < 0):
        raise ValueError(f"search_rollback: max_layers must be None or an int >= 0, got {max_layers!r}")
    ptq._check_swappable(network, [], "search_rollback")  # pylint: disable=protected-access
    full = ptq.sensitivity_ranking(signal)
    if not full:
        raise ValueError(f"search_rollback: no quantized Linear layer has a {signal} to rank it by; the config "
                         f"quantizes no Linear, so there is nothing to roll back")
    already = list(ptq.rolled_back)
    ranking = [name for name in full if name not in set(already)]  # disable_names layers are never ranked
    limit = len(ranking) if max_layers is None else min(int(max_layers), len(ranking))
    scores: Dict[int, float] = {}
    trials: List[RollbackTrial] = []
    state = {"level": 0}

    def set_level(level: int, reason: Union[str, Mapping[str, str], None] = None) -> None:
        current = state["level"]
        if level < current:
            ptq.restore(network, ranking[level:current])
        elif level > current:
            ptq.roll_back(network, ranking[current:level], reason or f"rollback search trial L{level}")
        state["level"] = level

    def passes(level: int) -> bool:
        if level not in scores:
            set_level(level)
            value = score(network)
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise TypeError(f"search_rollback: score(network) must return a number, got {value!r}") from None
            scores[level] = value
            trials.append(RollbackTrial(level, tuple(ranking[:level]), value))
            LOGGER.info("rollback search: L%d score %.6g (target %.6g)", level, value, target)
        return scores[level] <= target  # NaN: False

    try:
        chosen, reached = smallest_passing_level(passes, limit)
        if not reached:  # the lowest score tried, fewest layers on a tie
            chosen = min(scores, key=lambda lv: (math.inf if math.isnan(scores[lv]) else scores[lv], lv))
        values = ptq.range_parms if signal == "range_parm" else ptq.output_errors
        verdict = "<=" if reached else ">"
        set_level(0)
        set_level(chosen, {name: f"rollback search L{chosen} ({signal} {values[name]:.4g}; score "
                                 f"{scores[chosen]:.6g} {verdict} target {target:.6g})" for name in ranking[:chosen]})
    except BaseException:
        set_level(0)  # the network as before the search
        raise
    floats = already + ranking[:chosen]
    equivalent = f"L{len(floats)}" if floats == full[:len(floats)] else None
    LOGGER.info("rollback search: chose L%d of %d by %s in %d trials, score %.6g, target %s: %s", chosen,
                len(ranking), signal, len(trials), scores[chosen], "reached" if reached else "NOT reached",
                ", ".join(ranking[:chosen]))
    return RollbackSearchResult(signal, float(target), ranking, already, chosen, ranking[:chosen], scores[chosen],
                                reached, trials, equivalent)


def smallest_passing_level(passes: Callable[[int], bool], limit: int) -> Tuple[int, bool]:
    """Smallest passing level in 0..limit by doubling then bisection: (level, True), or (limit, False).
    Levels are tried 0, 1, 2, 4, ... so a small answer costs few calls whatever ``limit`` is."""
    if passes(0):
        return 0, True
    failing, step = 0, 1
    while failing < limit:
        level = min(step, limit)
        if passes(level):
            passing = level
            while passing - failing > 1:
                middle = (failing + passing) // 2
                if passes(middle):
                    passing = middle
                else:
                    failing = middle
            return passing, True
        failing, step = level, step * 2
    return limit, False
