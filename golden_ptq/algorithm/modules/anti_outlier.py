"""Outlier-suppression modules by msModelSlim ``anti_method`` code (m1-m6) or name."""
from __future__ import annotations

from golden_ptq.algorithm.modules.awq import AWQModule
from golden_ptq.algorithm.modules.base import AlgoModule
from golden_ptq.algorithm.modules.smooth import SmoothModule
from golden_ptq.algorithm.modules.smooth_search import (FlexSmoothModule, OutlierSuppressionPlusModule,
                                                        SmoothSearchModule)
from golden_ptq.config.anti_methods import normalize_anti_method


def build_anti_outlier_module(method: str, config=None) -> AlgoModule:
    """The module of ``method`` (``"m2"`` or ``"smooth_search"``, ...), sized by ``config.algo_args``.

    m5 (CBQ) raises NotImplementedError; unknown methods raise ValueError naming the allowed ones.
    """
    code = normalize_anti_method(method, owner="anti_method")

    def arg(name: str):
        from golden_ptq.config.ptq_config import ALGO_ARGS
        return config.arg(name) if config is not None else ALGO_ARGS[name]

    if code == "m1":
        return SmoothModule(alpha=float(arg("smooth_alpha")))
    if code == "m2":
        return SmoothSearchModule(alpha_grid=int(arg("alpha_grid")))
    if code == "m3":
        return AWQModule(scale_grid=int(arg("awq_grid")), clip_grid=int(arg("awq_clip_grid")))
    if code == "m4":
        return OutlierSuppressionPlusModule(alpha_grid=int(arg("alpha_grid")))
    if code == "m6":
        return FlexSmoothModule(alpha_grid=int(arg("alpha_grid")), beta_grid=int(arg("beta_grid")))
    raise AssertionError(f"unhandled anti_method {code}")  # normalize_anti_method admits only the codes above
