"""The Quantize module: turn every calibrated quant cell of a layer into its integer form."""
import logging

from golden_ptq.algorithm.modules.base import AlgoModule, LayerContext, config_arg
from golden_ptq.quant_cells.linear import QuantLinear
from golden_ptq.quant_math import range_parm

LOGGER = logging.getLogger("golden_ptq")


class QuantizeModule(AlgoModule):
    """Round-to-nearest weights; static activation / KV-cache ranges from the observers.

    Before quantizing a Linear whose input was observed, its ``range_parm`` (see
    :func:`golden_ptq.quant_math.range_parm`) goes into ``ctx.range_parms`` under the full layer
    name; activation quantizers also log it, as msModelSlim does:
    ``use <observer> observer:<layer>.quant_input, range_parm:<value>`` (logger ``golden_ptq``).
    """

    name = "quantize"

    def process(self, ctx: LayerContext) -> None:
        for rel, cell in ctx.quant_cells.items():
            if cell.quantized:
                continue
            if isinstance(cell, QuantLinear) and cell.input_observer is not None and cell.input_observer.calibrated:
                full = ctx.full_name(rel)
                value = range_parm(cell.input_observer)
                ctx.range_parms[full] = value
                if cell.spec.act:
                    kind = "per_token" if cell.spec.act_dynamic else cell.input_observer.name
                    LOGGER.info("use %s observer:%s.quant_input, range_parm:%s", kind, full, f"{value:.6g}")
            if isinstance(cell, QuantLinear):
                cell.act_scale_dtype = config_arg(ctx.config, "static_scale_dtype")
            cell.quantize()
