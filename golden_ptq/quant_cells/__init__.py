"""Quantized Cells and the registry that maps float layer types to them."""
from golden_ptq.quant_cells.base import QuantCell
from golden_ptq.quant_cells.embedding import QuantEmbedding
from golden_ptq.quant_cells.kvcache import QuantKVCache
from golden_ptq.quant_cells.linear import QuantLinear
from golden_ptq.quant_cells.registry import QuantCellRegistry, default_registry
from golden_ptq.quant_cells.spec import LayerQuantSpec

__all__ = ["LayerQuantSpec", "QuantCell", "QuantCellRegistry", "QuantEmbedding", "QuantKVCache", "QuantLinear",
           "default_registry"]
