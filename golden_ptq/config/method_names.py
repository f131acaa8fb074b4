"""The names of the accuracy methods, as the configuration layer knows them.

One row per method: its name, its msModelSlim ``anti_method`` alias (m1-m6) if it has one, its
role (a ``rotation`` turns the whole float network into an equivalent one with fewer outliers
before calibration; an ``anti_method`` suppresses outliers before rounding; a
``precision_recovery`` method chooses the rounding), and the schemes it works on. The
configuration validates against this table without importing the algorithms; each algorithm module declares the same facts next to
its code (``golden_ptq.algorithm.methods``), and a test checks the two agree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from golden_ptq.config.validation import ConfigError

ANTI_OUTLIER = "anti_method"
PRECISION_RECOVERY = "precision_recovery"
ROTATION = "rotation"
W8A8 = "w8a8"                # int8 weights and activations (static per tensor or dynamic per token)
WEIGHT_ONLY = "weight_only"  # int8 / int4 weights, float activations (per channel or per group)
SCHEMES = (W8A8, WEIGHT_ONLY)


@dataclass(frozen=True)
class MethodName:
    name: str
    alias: Optional[str]
    role: str
    schemes: Tuple[str, ...]
    summary: str
    implemented: bool = True

    @property
    def label(self) -> str:
        return f"{self.alias} ({self.name})" if self.alias else self.name


METHOD_NAMES = (
    MethodName("smooth", "m1", ANTI_OUTLIER, (W8A8,), "SmoothQuant, fixed alpha"),
    MethodName("smooth_search", "m2", ANTI_OUTLIER, (W8A8,),
               "SmoothQuant with a per-mapping alpha search on the balance layers' output error"),
    MethodName("awq", "m3", ANTI_OUTLIER, (WEIGHT_ONLY,),
               "AWQ: activation-aware weight scaling with scale and clip search (W8A16, W4A16)"),
    MethodName("os_plus", "m4", ANTI_OUTLIER, (W8A8,), "Outlier Suppression+: channel shift and scale (alpha searched)"),
    MethodName("cbq", "m5", ANTI_OUTLIER, (W8A8,), "CBQ: cross-block reconstruction", implemented=False),
    MethodName("flex_smooth", "m6", ANTI_OUTLIER, (W8A8,),
               "flexible smoothing: search of alpha and the activation/weight balance"),
    MethodName("gptq", None, PRECISION_RECOVERY, (WEIGHT_ONLY, W8A8),
               "GPTQ: column-by-column rounding with Hessian-based error compensation"),
    MethodName("hadamard", None, ROTATION, (WEIGHT_ONLY, W8A8),
               "QuaRot-style rotation: a randomised Hadamard of the residual stream and of each value head "
               "folded into the weights, and an online block Hadamard before feed_forward.w2"),
)
NO_ROTATION = "none"


def method_names(role: Optional[str] = None) -> Tuple[MethodName, ...]:
    """The table's rows, all or of one ``role``."""
    return tuple(m for m in METHOD_NAMES if role is None or m.role == role)


def find_method(value: str, role: Optional[str] = None) -> Optional[MethodName]:
    """The row whose name or alias is ``value`` (case-insensitive), or None."""
    key = str(value).strip().lower()
    return next((m for m in method_names(role) if key in (m.name, m.alias)), None)


def _choices(role: str) -> str:
    return ", ".join(m.label for m in method_names(role))


def normalize_method(value: Optional[str], role: str, owner: str) -> Optional[str]:
    """The canonical spelling of a method of ``role``: the alias if it has one (``"m2"`` for
    ``"M2"`` or ``"smooth_search"``), else the name; None stays None.

    Raises ValueError for unknown values and NotImplementedError for listed but unimplemented ones (m5).
    """
    if value is None:
        return None
    method = find_method(value, role)
    if method is None:
        what = "outlier-suppression" if role == ANTI_OUTLIER else "precision-recovery"
        raise ConfigError(f"{owner}: {value!r} is not a known {what} method; allowed: {_choices(role)}")
    if not method.implemented:
        raise NotImplementedError(f"{owner}: {value!r} ({method.summary}) is not implemented yet in golden_ptq; "
                                  f"use one of " + ", ".join(m.label for m in method_names(role) if m.implemented))
    return method.alias or method.name


def normalize_anti_method(value: Optional[str], owner: str = "PTQConfig.anti_method") -> Optional[str]:
    """``"m2"``, ``"M2"`` or ``"smooth_search"`` -> ``"m2"``; None stays None."""
    return normalize_method(value, ANTI_OUTLIER, owner)


def rotation_choices() -> Tuple[str, ...]:
    """The allowed values of ``PTQConfig.rotation``: ``"none"`` and every rotation method."""
    return (NO_ROTATION,) + tuple(m.name for m in method_names(ROTATION))


def normalize_rotation(value: Optional[str], owner: str = "PTQConfig.rotation") -> str:
    """``"Hadamard"`` -> ``"hadamard"``; None and ``"none"`` -> ``"none"``; anything else is a ConfigError."""
    if value is None:
        return NO_ROTATION
    key = value.strip().lower() if isinstance(value, str) else None
    if key not in rotation_choices():
        raise ConfigError(f"{owner}: {value!r} is not allowed; allowed: {list(rotation_choices())}")
    return key


def check_scheme(code: str, scheme: str, owner: str) -> None:
    """ConfigError when method ``code`` does not work on ``scheme`` (:data:`SCHEMES`)."""
    method = find_method(code)
    if scheme in method.schemes:
        return
    if scheme == WEIGHT_ONLY:
        others = [m.label for m in METHOD_NAMES if m.role == method.role and WEIGHT_ONLY in m.schemes]
        raise ConfigError(f"{owner} {code!r} ({method.name}) works on quantized activations and needs "
                         f"act_quant_dtype=int8; for weight-only use {' or '.join(others)}")
    raise ConfigError(f"{owner} {code!r} ({method.name}) is for weight-only W8A16/W4A16: needs "
                     f"weight_quant_dtype=int8 and act_quant_dtype=None")
