"""Outlier-suppression methods by msModelSlim's ``anti_method`` code and by name."""
from __future__ import annotations

from typing import Optional

#: code -> (name, what it is)
ANTI_METHODS = {
    "m1": ("smooth", "SmoothQuant, fixed alpha"),
    "m2": ("smooth_search", "SmoothQuant with a per-mapping alpha search on the balance layers' output error"),
    "m3": ("awq", "AWQ: activation-aware weight scaling with scale and clip search (W8A16, W4A16)"),
    "m4": ("os_plus", "Outlier Suppression+: channel shift and scale (alpha searched)"),
    "m5": ("cbq", "CBQ: cross-block reconstruction"),
    "m6": ("flex_smooth", "flexible smoothing: search of alpha and the activation/weight balance"),
}
NOT_IMPLEMENTED = {"m5"}
WEIGHT_ONLY = {"m3"}                  # need act_quant_dtype=None
NEED_ACTIVATIONS = {"m1", "m2", "m4", "m6"}


def _choices() -> str:
    return ", ".join(f"{code} ({name})" for code, (name, _) in ANTI_METHODS.items())


def normalize_anti_method(value: Optional[str], owner: str = "PTQConfig.anti_method") -> Optional[str]:
    """``"m2"``, ``"M2"`` or ``"smooth_search"`` -> ``"m2"``; None stays None.

    Raises ValueError for unknown values and NotImplementedError for m5 (CBQ).
    """
    if value is None:
        return None
    key = str(value).strip().lower()
    code = key if key in ANTI_METHODS else next((c for c, (n, _) in ANTI_METHODS.items() if n == key), None)
    if code is None:
        raise ValueError(f"{owner}: {value!r} is not a known outlier-suppression method; allowed: {_choices()}")
    if code in NOT_IMPLEMENTED:
        raise NotImplementedError(f"{owner}: {value!r} ({ANTI_METHODS[code][1]}) is not implemented yet in "
                                  f"golden_ptq; use one of "
                                  + ", ".join(f"{c} ({ANTI_METHODS[c][0]})" for c in ANTI_METHODS
                                              if c not in NOT_IMPLEMENTED))
    return code
