"""The accuracy methods PTQ can put into its pipeline, by name or msModelSlim alias.

Each method is one AlgoModule class carrying its :class:`MethodDeclaration` (``method``) and a
``from_config`` constructor; a :class:`MethodRegistry` is an ordinary object holding such classes
(``default_method_registry()`` builds a fresh one with the built-in methods, nothing global is
filled at import time). PTQ asks it for the pipeline of a config; the TP check reads each
module's declaration.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Type

from golden_ptq.algorithm.modules.awq import AWQModule
from golden_ptq.algorithm.modules.base import AlgoModule, MethodDeclaration
from golden_ptq.algorithm.modules.gptq import GPTQModule
from golden_ptq.algorithm.modules.rotation import RotationModule
from golden_ptq.algorithm.modules.smooth import SmoothModule
from golden_ptq.algorithm.modules.smooth_search import (FlexSmoothModule, OutlierSuppressionPlusModule,
                                                        SmoothSearchModule)
from golden_ptq.config.method_names import ANTI_OUTLIER, PRECISION_RECOVERY, normalize_method

BUILT_IN_METHODS = (SmoothModule, SmoothSearchModule, AWQModule, OutlierSuppressionPlusModule, FlexSmoothModule,
                    GPTQModule, RotationModule)


class MethodRegistry:
    """Accuracy-method module classes by name and alias."""

    def __init__(self, modules: Iterable[Type[AlgoModule]] = ()):
        self._modules: Dict[str, Type[AlgoModule]] = {}
        for module in modules:
            self.register(module)

    def register(self, module: Type[AlgoModule]) -> None:
        """Add ``module`` (a class with a ``method`` declaration); its name and alias must be new."""
        decl = getattr(module, "method", None)
        if not isinstance(decl, MethodDeclaration):
            raise TypeError(f"MethodRegistry.register: {getattr(module, '__name__', module)!r} has no "
                            f"MethodDeclaration in its 'method' attribute")
        taken = [key for key in (decl.name, decl.alias) if key and key in self._modules]
        if taken:
            raise ValueError(f"MethodRegistry.register: {module.__name__} reuses {taken} of "
                             f"{self._modules[taken[0]].__name__}")
        for key in (decl.name, decl.alias):
            if key:
                self._modules[key] = module

    def declarations(self) -> List[MethodDeclaration]:
        """Every registered method's declaration, in registration order."""
        seen: Dict[str, MethodDeclaration] = {}
        for module in self._modules.values():
            seen.setdefault(module.method.name, module.method)
        return list(seen.values())

    def module_type(self, name: str) -> Type[AlgoModule]:
        """The class of the method called ``name`` (name or alias, any case)."""
        key = str(name).strip().lower()
        if key not in self._modules:
            raise ValueError(f"MethodRegistry: no method {name!r}; registered: "
                             + ", ".join(d.label for d in self.declarations()))
        return self._modules[key]

    def build(self, name: str, config=None) -> AlgoModule:
        """An instance of method ``name`` sized by ``config.algo_args`` (defaults without config)."""
        return self.module_type(name).from_config(config)

    def pipeline(self, config) -> List[AlgoModule]:
        """The accuracy modules ``config`` asks for, in the order they run: its ``rotation`` (an
        equivalent float network, before calibration), its ``anti_method`` (outlier suppression
        changes the float weights), then its ``precision_recovery`` (chooses the rounding of those
        weights). The Quantize module is PTQ's to add."""
        names: List[Optional[str]] = [config.rotation_method, config.effective_anti_method,
                                      config.precision_recovery_method]
        return [self.build(name, config) for name in names if name is not None]


def default_method_registry() -> MethodRegistry:
    """A new registry of the built-in methods."""
    return MethodRegistry(BUILT_IN_METHODS)


def build_anti_outlier_module(method: str, config=None) -> AlgoModule:
    """The outlier-suppression module of ``method`` (``"m2"`` or ``"smooth_search"``, ...).

    m5 (CBQ) raises NotImplementedError; unknown methods raise ValueError naming the allowed ones.
    """
    return default_method_registry().build(normalize_method(method, ANTI_OUTLIER, "anti_method"), config)


def build_precision_recovery_module(method: str, config=None) -> AlgoModule:
    """The precision-recovery module of ``method`` (``"gptq"``)."""
    return default_method_registry().build(normalize_method(method, PRECISION_RECOVERY, "precision_recovery"), config)
