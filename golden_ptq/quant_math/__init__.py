"""Pure quantization math in numpy: ranges, scales, zero points, rounding, observers.

Conventions (int8, ``qmin=-128, qmax=127``):
  * symmetric: ``q = clip(round(x / scale), -127, 127)``, ``x ~ q * scale``;
  * asymmetric: ``q = clip(round(x / scale) + zp, -128, 127)``, ``x ~ (q - zp) * scale``.
``round`` is round-half-to-even, as numpy's and MindSpore's ``round`` both do.
"""
from golden_ptq.quant_math.functions import (QMAX, QMIN, NonFiniteError, asymmetric_params, dequantize, fake_quantize_act,
                                             fake_quantize_per_token, fake_quantize_weight, quantize,
                                             quantize_weight, symmetric_scale, weight_qrange)
from golden_ptq.quant_math.observers import (ACT_METHODS, HistogramObserver, HybridObserver, MinMaxObserver,
                                             make_act_observer, range_parm)

__all__ = ["ACT_METHODS", "QMAX", "QMIN", "NonFiniteError", "HistogramObserver", "HybridObserver", "MinMaxObserver",
           "asymmetric_params", "dequantize", "fake_quantize_act", "fake_quantize_per_token", "fake_quantize_weight",
           "make_act_observer", "quantize", "quantize_weight", "range_parm", "symmetric_scale", "weight_qrange"]
