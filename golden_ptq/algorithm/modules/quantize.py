"""The Quantize module: turn every calibrated quant cell of a layer into its integer form."""
from golden_ptq.algorithm.modules.base import AlgoModule, LayerContext


class QuantizeModule(AlgoModule):
    """Round-to-nearest weights; static activation / KV-cache ranges from the min-max observers."""

    name = "quantize"

    def process(self, ctx: LayerContext) -> None:
        for cell in ctx.quant_cells.values():
            if not cell.quantized:
                cell.quantize()
