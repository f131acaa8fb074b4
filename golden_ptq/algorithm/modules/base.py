"""Algorithm modules: the steps PTQ runs, in order, on every decoder layer."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

from mindspore import nn

from golden_ptq.quant_cells.base import QuantCell


@dataclass
class LayerContext:
    """One unit of layer-wise calibration: a decoder layer (or a lone cell such as ``lm_head``).

    ``quant_cells`` maps names relative to ``layer`` to the quantized cells inside it, whose
    observers hold the statistics of the calibration pass just run.
    """

    name: str
    layer: Optional[nn.Cell]
    quant_cells: Dict[str, QuantCell]
    structure: object = None
    network: object = None
    log: list = field(default_factory=list)

    def find(self, relative: str) -> nn.Cell:
        """The cell at ``relative`` inside the layer (``"attention.wq"``); a clear error if absent."""
        cell = self.layer
        for part in relative.split("."):
            child = cell._cells.get(part) if cell is not None else None  # pylint: disable=protected-access
            if child is None:
                raise KeyError(f"{self.name}: no sub-cell '{relative}' (stopped at '{part}'); check the "
                               f"structure's mappings against the network")
            cell = child
        return cell


class AlgoModule:
    """A step of the PTQ pipeline.

    ``process(ctx)`` runs after the layer's calibration pass (observers filled) and before the
    layer's quantized outputs are computed for the next layer. Modules run in pipeline order;
    subclass and insert into ``PTQ.pipeline`` to add one without touching PTQ.
    """

    name = "module"

    def process(self, ctx: LayerContext) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
