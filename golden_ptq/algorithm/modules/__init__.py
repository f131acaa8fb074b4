"""Algorithm modules assembled into PTQ's pipeline."""
from golden_ptq.algorithm.modules.base import AlgoModule, LayerContext
from golden_ptq.algorithm.modules.quantize import QuantizeModule
from golden_ptq.algorithm.modules.smooth import SmoothModule

__all__ = ["AlgoModule", "LayerContext", "QuantizeModule", "SmoothModule"]
