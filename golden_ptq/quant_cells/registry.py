"""Which quantized Cell replaces which float layer type: a registry owned by each PTQ instance."""
from __future__ import annotations

from typing import Dict, Optional, Type

from mindspore import nn

from golden_ptq.quant_cells.base import QuantCell


class QuantCellRegistry:
    """Maps float Cell types to :class:`QuantCell` classes (``cls(float_cell, spec)``).

    Lookup follows the float cell's MRO, so a subclass of ``Linear`` is quantized like a
    ``Linear`` unless it has its own entry. Each :class:`~golden_ptq.PTQ` has its own registry:
    registering for one run never changes another.
    """

    def __init__(self) -> None:
        self._entries: Dict[type, Dict[str, object]] = {}

    def register(self, float_type: Type[nn.Cell], quant_type: Type[QuantCell], kind: str = "linear") -> None:
        """``kind``: ``"linear"`` (weights/activations), ``"kvcache"`` or ``"embedding"``."""
        if not (isinstance(float_type, type) and issubclass(float_type, nn.Cell)):
            raise TypeError(f"register: float_type must be a mindspore.nn.Cell subclass, got {float_type!r}")
        if not (isinstance(quant_type, type) and issubclass(quant_type, QuantCell)):
            raise TypeError(f"register: quant_type must be a golden_ptq QuantCell subclass, got {quant_type!r}")
        if kind not in ("linear", "kvcache", "embedding"):
            raise ValueError(f"register: kind {kind!r} is not one of ['linear', 'kvcache', 'embedding']")
        self._entries[float_type] = {"quant_type": quant_type, "kind": kind}

    def lookup(self, cell: nn.Cell) -> Optional[Dict[str, object]]:
        if isinstance(cell, QuantCell):
            return None
        for klass in type(cell).__mro__:
            if klass in self._entries:
                return self._entries[klass]
        return None

    def registered(self) -> Dict[type, type]:
        return {k: v["quant_type"] for k, v in self._entries.items()}


def default_registry() -> QuantCellRegistry:
    """A new registry with golden_ptq's own layers: Linear, KVCache, Embedding."""
    from golden_ptq.networks.layers import Embedding, KVCache, Linear
    from golden_ptq.quant_cells.embedding import QuantEmbedding
    from golden_ptq.quant_cells.kvcache import QuantKVCache
    from golden_ptq.quant_cells.linear import QuantLinear
    registry = QuantCellRegistry()
    registry.register(Linear, QuantLinear, "linear")
    registry.register(KVCache, QuantKVCache, "kvcache")
    registry.register(Embedding, QuantEmbedding, "embedding")
    return registry
