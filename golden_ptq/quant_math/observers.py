"""Running statistics of activations gathered during calibration."""
from __future__ import annotations

from typing import Optional

import numpy as np

from golden_ptq.quant_math.input_sharing import shared


class MinMaxObserver:
    """Per-channel running min / max over every row seen (the last axis is the channel).

    Per-tensor ranges derive from the per-channel ones, and a per-channel rescale (what smoothing
    does to a layer's input) can be applied to the statistics exactly, without running data again.

    ``shards``: when the observed tensor's channels are split over tensor-parallel ranks (the input
    of a row-parallel layer), an object with ``min/max/sum/concat`` collectives (e.g.
    ``golden_ptq.parallel.ChannelShards``); per-tensor results then describe the whole tensor and
    are the same on every rank. Per-channel statistics stay this rank's.
    """

    name = "minmax"
    exact_rescale = True   # scale_channels/shift_channels keep the statistics exact

    def __init__(self) -> None:
        self.minimum: Optional[np.ndarray] = None
        self.maximum: Optional[np.ndarray] = None
        self.rows = 0
        self.shards = None
        self.stale = False   # the observed tensor changed in a way the statistics cannot follow

    def reset(self) -> None:
        """Forget everything seen (before observing the same layer again)."""
        self.minimum, self.maximum, self.rows, self.stale = None, None, 0, False

    def invalidate(self) -> None:
        """The observed tensor changed in a way no per-channel rescale describes (e.g. a fold through
        an orthogonal transform): the layer must be observed again (PTQ does it after the module)."""
        self.stale = True

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32)
        flat = x.reshape(-1, x.shape[-1])
        lo, hi = shared(x, "channel range", lambda: (flat.min(axis=0), flat.max(axis=0)))
        if self.minimum is None:
            self.minimum, self.maximum = lo.copy(), hi.copy()   # copies: other observers may hold the shared pair
        else:
            self.minimum = np.minimum(self.minimum, lo)
            self.maximum = np.maximum(self.maximum, hi)
        self.rows += flat.shape[0]

    @property
    def calibrated(self) -> bool:
        return self.minimum is not None

    def absmax(self) -> np.ndarray:
        """Per-channel ``max |x|``."""
        self._require()
        return np.maximum(np.abs(self.minimum), np.abs(self.maximum))

    def whole_absmax(self) -> np.ndarray:
        """Per-channel ``max |x|`` of every channel of the tensor (all ranks' channels, in order)."""
        absmax = self.absmax()
        return absmax if self.shards is None else self.shards.concat(absmax)

    def tensor_range(self):
        self._require()
        if self.stale:
            raise RuntimeError(f"{type(self).__name__}: the observed tensor changed since it was observed; "
                               f"observe the layer again")
        lo, hi = float(self.minimum.min()), float(self.maximum.max())
        if self.shards is not None:
            lo, hi = float(self.shards.min(np.array([lo]))[0]), float(self.shards.max(np.array([hi]))[0])
        return lo, hi

    def scale_channels(self, factor: np.ndarray) -> None:
        """The observed tensor is now ``x * factor`` (``factor > 0`` per channel): update the stats."""
        self._require()
        factor = np.asarray(factor, dtype=np.float32)
        if np.any(factor <= 0):
            raise ValueError("scale_channels needs positive factors")
        self.minimum = self.minimum * factor
        self.maximum = self.maximum * factor

    def shift_channels(self, shift: np.ndarray) -> None:
        """The observed tensor is now ``x - shift`` per channel: update the stats."""
        self._require()
        shift = np.asarray(shift, dtype=np.float32)
        self.minimum = self.minimum - shift
        self.maximum = self.maximum - shift

    def _require(self) -> None:
        if self.minimum is None:
            raise RuntimeError("observer has seen no data; was the layer run during calibration?")


class HistogramObserver(MinMaxObserver):
    """Per-tensor histogram (plus the per-channel min/max) that picks the clip range of least MSE.

    The histogram spans the running ``[min, max]`` with ``bins`` bins; when a batch widens the range,
    the old counts move to the new bins by their centres. ``tensor_range`` searches shrink factors
    ``c`` in ``(0, 1]`` of the min-max range (``[c*lo, c*hi]``, or ``[-c*A, c*A]`` symmetric) and
    keeps the one minimising the expected int8 error over the histogram: ``step^2 / 12`` for the
    mass inside the range (uniform rounding error) plus ``(x - edge)^2`` for the clipped mass.

    A per-channel rescale or shift cannot be applied to a per-tensor histogram: after one the
    observer is ``stale`` and the layer must be observed again (PTQ does this automatically).
    """

    name = "histogram"
    exact_rescale = False

    def __init__(self, symmetric: bool = False, bins: int = 2048, candidates: int = 200) -> None:
        super().__init__()
        if bins < 16 or candidates < 2:
            raise ValueError(f"HistogramObserver: bins >= 16 and candidates >= 2 needed, got {bins}, {candidates}")
        self.symmetric, self.bins, self.candidates = symmetric, bins, candidates
        self.counts: Optional[np.ndarray] = None
        self.edges = (0.0, 0.0)

    def reset(self) -> None:
        super().reset()
        self.counts, self.edges = None, (0.0, 0.0)

    def update(self, x: np.ndarray) -> None:
        super().update(x)
        flat = np.asarray(x, dtype=np.float32).reshape(-1)
        lo, hi = float(min(flat.min(), 0.0)), float(max(flat.max(), 0.0))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            return  # NaN/Inf: the min/max statistics now hold it, and PTQ names the layer before using them
        if self.shards is not None:  # every rank bins its channels into the whole tensor's bins
            lo, hi = float(self.shards.min(np.array([lo]))[0]), float(self.shards.max(np.array([hi]))[0])
        if self.symmetric:
            top = max(-lo, hi)
            lo, hi = -top, top
        if self.counts is None:
            self.edges = (lo, max(hi, lo + 1e-12))
            self.counts = np.zeros(self.bins, np.float64)
        elif lo < self.edges[0] or hi > self.edges[1]:
            old_lo, old_hi = self.edges
            centres = old_lo + (np.arange(self.bins) + 0.5) * (old_hi - old_lo) / self.bins
            self.edges = (min(lo, old_lo), max(hi, old_hi))
            self.counts, _ = np.histogram(centres, bins=self.bins, range=self.edges, weights=self.counts)
        added, _ = np.histogram(flat, bins=self.bins, range=self.edges)
        self.counts = self.counts + added

    def scale_channels(self, factor: np.ndarray) -> None:
        super().scale_channels(factor)
        self.stale = True

    def shift_channels(self, shift: np.ndarray) -> None:
        super().shift_channels(shift)
        self.stale = True

    def histogram_range(self):
        """The ``(lo, hi)`` of least expected quantization MSE over the histogram."""
        self._require()
        if self.stale:
            raise RuntimeError("HistogramObserver: statistics were rescaled per channel; observe the layer again")
        lo, hi = self.edges
        counts = self.counts if self.shards is None else self.shards.sum(self.counts)
        centres = lo + (np.arange(self.bins) + 0.5) * (hi - lo) / self.bins
        best, best_err = (lo, hi), np.inf
        for c in np.linspace(1.0 / self.candidates, 1.0, self.candidates):
            c_lo, c_hi = c * min(lo, 0.0), c * max(hi, 0.0)
            step = (c_hi - c_lo) / (254.0 if self.symmetric else 255.0)
            inside = (centres >= c_lo) & (centres <= c_hi)
            clipped = np.where(centres < c_lo, c_lo - centres, np.where(centres > c_hi, centres - c_hi, 0.0))
            err = float(counts[inside].sum() * step * step / 12.0 + (counts * clipped ** 2).sum())
            if err < best_err:  # ties keep the smaller range (searched first)
                best, best_err = (float(c_lo), float(c_hi)), err
        return best

    def tensor_range(self):
        return self.histogram_range()


class HybridObserver(HistogramObserver):
    """``act_method=3``: the midpoint of the min-max range and the histogram's MSE-optimal range.

    Rule: ``lo = (lo_minmax + lo_hist) / 2``, ``hi = (hi_minmax + hi_hist) / 2``. The histogram
    search alone clips rare outliers that LLM activations need (they carry meaning); min-max alone
    spends the int8 grid on them. The midpoint keeps outliers partly representable while giving
    the bulk of the distribution finer steps.
    """

    name = "hybrid"

    def tensor_range(self):
        h_lo, h_hi = self.histogram_range()
        m_lo, m_hi = MinMaxObserver.tensor_range(self)
        if self.symmetric:
            top = max(-m_lo, m_hi)
            m_lo, m_hi = -top, top
        return (m_lo + h_lo) / 2.0, (m_hi + h_hi) / 2.0


ACT_METHODS = {1: "minmax", 2: "histogram", 3: "hybrid"}


def make_act_observer(act_method: int, symmetric: bool = False, bins: int = 2048) -> MinMaxObserver:
    """The activation observer of msModelSlim's ``act_method``: 1 min-max, 2 histogram, 3 hybrid."""
    if act_method == 1:
        return MinMaxObserver()
    if act_method == 2:
        return HistogramObserver(symmetric=symmetric, bins=bins)
    if act_method == 3:
        return HybridObserver(symmetric=symmetric, bins=bins)
    raise ValueError(f"act_method {act_method!r} is not supported; allowed: {sorted(ACT_METHODS)} ({ACT_METHODS})")


def range_parm(observer: MinMaxObserver) -> float:
    """Sensitivity of a per-tensor activation quantizer: ``max(|lo|, |hi|) / median_j max|x_j|``.

    ``[lo, hi]`` is the range the quantizer actually uses (after the observer's clipping) and the
    denominator is the typical channel's range, so the value says how many typical channel
    ranges the int8 grid must span: 1-3 for well-behaved inputs, tens with outlier channels.
    """
    lo, hi = observer.tensor_range()
    typical = float(np.median(observer.whole_absmax()))
    return float(max(-lo, hi) / max(typical, 1e-12))
