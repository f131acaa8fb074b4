"""Algorithm modules assembled into PTQ's pipeline."""
from golden_ptq.algorithm.modules.base import AlgoModule, InputRecorder, LayerContext
from golden_ptq.algorithm.modules.quantize import QuantizeModule
from golden_ptq.algorithm.modules.smooth import SmoothModule
from golden_ptq.algorithm.modules.smooth_search import (FlexSmoothModule, OutlierSuppressionPlusModule,
                                                        SmoothSearchModule)
from golden_ptq.algorithm.modules.awq import AWQModule
from golden_ptq.algorithm.modules.anti_outlier import build_anti_outlier_module

__all__ = ["AWQModule", "AlgoModule", "FlexSmoothModule", "InputRecorder", "LayerContext",
           "OutlierSuppressionPlusModule", "QuantizeModule", "SmoothModule", "SmoothSearchModule",
           "build_anti_outlier_module"]
