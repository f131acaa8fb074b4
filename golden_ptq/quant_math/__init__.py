"""Pure quantization math in numpy: ranges, scales, zero points, rounding, observers.

Conventions (int8, ``qmin=-128, qmax=127``):
  * symmetric: ``q = clip(round(x / scale), -127, 127)``, ``x ~ q * scale``;
  * asymmetric: ``q = clip(round(x / scale) + zp, -128, 127)``, ``x ~ (q - zp) * scale``.
``round`` is round-half-to-even, as numpy's and MindSpore's ``round`` both do.
"""
from golden_ptq.quant_math.functions import (QMAX, QMIN, asymmetric_params, dequantize, quantize,
                                             quantize_weight, symmetric_scale)
from golden_ptq.quant_math.observers import MinMaxObserver

__all__ = ["QMAX", "QMIN", "MinMaxObserver", "asymmetric_params", "dequantize", "quantize", "quantize_weight",
           "symmetric_scale"]
