"""Quantized-Cell adapters that let golden_ptq's PTQ quantize MindFormers' own network in place.

* ``mindformers.modules.layers.Linear`` -> :class:`MFQuantLinear`: golden_ptq's ``QuantLinear``
  over MindFormers' ``weight`` ``[out_channels, in_channels]`` and ``bias``, followed by the
  Linear's fused activation (MindFormers fuses SiLU into the gate projection ``w1``).
* KV cache: the golden_ptq ``KVCache`` that :func:`~golden_ptq.mindformers.shims.attach_kv_caches`
  puts into each attention -> ``QuantKVCache`` (C8).
* ``LlamaRMSNorm`` is not quantized; smoothing folds into it through
  :attr:`~golden_ptq.mindformers.structure.MFLlamaStructure.norm_types`.
"""
from __future__ import annotations

from golden_ptq.networks.layers import KVCache
from golden_ptq.quant_cells.kvcache import QuantKVCache
from golden_ptq.quant_cells.linear import QuantLinear
from golden_ptq.quant_cells.registry import QuantCellRegistry
from golden_ptq.quant_cells.spec import LayerQuantSpec


class _LinearView:
    """MindFormers' Linear seen through golden_ptq's Linear attributes (its Parameters, not copies)."""

    parallel = None
    tp = None

    def __init__(self, linear):
        if getattr(linear, "expert_flag", False) or not getattr(linear, "transpose_b", True):
            raise NotImplementedError(f"MFQuantLinear: MindFormers Linear with experts or transpose_b=False is "
                                      f"not supported (expert_num={getattr(linear, 'expert_num', 1)}, "
                                      f"transpose_b={getattr(linear, 'transpose_b', True)})")
        self.in_features, self.out_features = linear.in_channels, linear.out_channels
        self.weight = linear.weight
        self.bias = linear.bias if linear.has_bias else None


class MFQuantLinear(QuantLinear):
    """The quantized form of ``mindformers.modules.layers.Linear`` (same parameters as ``QuantLinear``)."""

    def __init__(self, linear, spec: LayerQuantSpec):
        super().__init__(_LinearView(linear), spec)
        self.activation = linear.activation if linear.activation_flag else None

    def construct(self, x):
        y = super().construct(x)
        return y if self.activation is None else self.activation(y)


def register_mindformers(registry: QuantCellRegistry) -> QuantCellRegistry:
    """Register the MindFormers adapters in ``registry`` (e.g. ``ptq.registry``); returns it."""
    from golden_ptq.mindformers.shims import import_mindformers
    import_mindformers()
    from mindformers.modules.layers import Linear as MFLinear
    registry.register(MFLinear, MFQuantLinear, "linear")
    registry.register(KVCache, QuantKVCache, "kvcache")
    return registry
