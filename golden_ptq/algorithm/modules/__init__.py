"""Algorithm modules assembled into PTQ's pipeline, and the registry of the accuracy methods."""
from golden_ptq.algorithm.modules.base import AlgoModule, InputRecorder, LayerContext, MethodDeclaration
from golden_ptq.algorithm.modules.quantize import QuantizeModule
from golden_ptq.algorithm.modules.smooth import SmoothModule
from golden_ptq.algorithm.modules.smooth_search import (FlexSmoothModule, OutlierSuppressionPlusModule,
                                                        SmoothSearchModule)
from golden_ptq.algorithm.modules.awq import AWQModule
from golden_ptq.algorithm.modules.gptq import GPTQModule, gptq_quantize
from golden_ptq.algorithm.modules.registry import (MethodRegistry, build_anti_outlier_module,
                                                   build_precision_recovery_module, default_method_registry)

__all__ = ["AWQModule", "AlgoModule", "FlexSmoothModule", "GPTQModule", "InputRecorder", "LayerContext",
           "MethodDeclaration", "MethodRegistry", "OutlierSuppressionPlusModule", "QuantizeModule", "SmoothModule",
           "SmoothSearchModule", "build_anti_outlier_module", "build_precision_recovery_module",
           "default_method_registry", "gptq_quantize"]
