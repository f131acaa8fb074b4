"""The float Cells PTQ keeps beside their quantized Cells, and swapping layers between the two.

Calibration keeps the (smoothed) float Cell of each quantized layer while it measures output
errors or may roll layers back; ``PTQ.roll_back`` / ``PTQ.restore`` / the rollback search swap
through this set without recalibrating.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Sequence, Tuple, Union

from mindspore import nn

from golden_ptq.algorithm.report import LayerRecord
from golden_ptq.algorithm.swap import cell_at, replace_cell
from golden_ptq.config import PTQMode
from golden_ptq.networks.llama import sync_parameter_names
from golden_ptq.quant_cells import LayerQuantSpec, QuantCell

SIGNALS = ("range_parm", "output_error")


def sensitivity_ranking(range_parms: Dict[str, float], output_errors: Dict[str, float],
                        signal: str = "range_parm") -> List[str]:
    """Measured Linear layers, most sensitive first by ``signal`` (ties by name)."""
    if signal not in SIGNALS:
        raise ValueError(f"PTQ.sensitivity_ranking: signal {signal!r} not allowed; allowed: "
                         f"['range_parm', 'output_error']")
    values = range_parms if signal == "range_parm" else output_errors
    if signal == "output_error" and not values and range_parms:
        raise ValueError("PTQ.sensitivity_ranking: no output errors were measured; create "
                         "PTQ(config, measure_sensitivity=True) (or keep_float_cells=True)")
    return sorted(values, key=lambda n: (-values[n], n))


class RollbackSet:
    """Float Cells by full layer name, and the quantized Cells (with their records) of rolled-back layers."""

    def __init__(self) -> None:
        self.float_cells: Dict[str, nn.Cell] = {}
        self.rolled_quant: Dict[str, Tuple[QuantCell, LayerRecord]] = {}
        self.converted = False

    def clear(self) -> None:
        self.float_cells = {}
        self.rolled_quant = {}

    def roll_back(self, network: nn.Cell, names: Sequence[str], reason: Union[str, Mapping[str, str]],
                  records: List[LayerRecord], rolled_back: List[str], mode: PTQMode) -> List[str]:
        """See ``PTQ.roll_back``; ``records`` and ``rolled_back`` are updated in place."""
        names = self.check_swappable(network, names, "PTQ.roll_back", records, mode)
        done = []
        for name in names:
            if name in self.rolled_quant:
                continue
            cell = cell_at(network, name)
            index = _record_index(records, name)
            self.rolled_quant[name] = (cell, records[index])
            replace_cell(network, name, self.float_cells[name])
            text = reason if isinstance(reason, str) else reason[name]
            records[index] = LayerRecord(name, records[index].layer_type, LayerQuantSpec(skip_reason=text))
            rolled_back.append(name)
            done.append(name)
        if done:
            sync_parameter_names(network)
        return done

    def restore(self, network: nn.Cell, names: Sequence[str], records: List[LayerRecord],
                rolled_back: List[str], mode: PTQMode) -> List[str]:
        """See ``PTQ.restore``; ``records`` and ``rolled_back`` are updated in place."""
        names = self.check_swappable(network, names, "PTQ.restore", records, mode)
        done = []
        for name in names:
            if name not in self.rolled_quant:
                continue
            cell, record = self.rolled_quant.pop(name)
            replace_cell(network, name, cell)
            records[_record_index(records, name)] = record
            rolled_back.remove(name)
            done.append(name)
        if done:
            sync_parameter_names(network)
        return done

    def check_swappable(self, network: nn.Cell, names: Sequence[str], what: str, records: List[LayerRecord],
                        mode: PTQMode) -> List[str]:
        """The names as a list, after checking that their float and quantized Cells are both at hand
        (``what`` names the caller in the errors)."""
        if isinstance(names, str):
            raise TypeError(f"{what}: names must be a list of layer names, got the string {names!r}")
        names = list(names)
        if self.converted:
            raise RuntimeError(f"{what}: convert() has run and dropped the float cells; roll layers back "
                               f"(or search) between apply() and convert()")
        if mode is PTQMode.DEPLOY:
            raise RuntimeError(f"{what}: a DEPLOY network has no float cells; list the layers in "
                               f"PTQConfig.disable_names instead")
        if not self.float_cells:
            if not records:
                raise RuntimeError(f"{what}: apply(network, helper, datasets) has not run yet")
            raise RuntimeError(f"{what}: the float cells were dropped after calibration; create "
                               f"PTQ(config, keep_float_cells=True) to roll layers back after apply()")
        for name in names:
            if name not in self.float_cells:
                record = next((r for r in records if r.name == name), None)
                why = (f"it was never quantized ({record.spec.skip_reason})" if record is not None
                       else "it is not the name of a quantized layer")
                examples = ", ".join(list(self.float_cells)[:4])
                raise ValueError(f"{what}: cannot swap '{name}': {why}; quantized layers look like: {examples}")
            current = cell_at(network, name)
            rolled = name in self.rolled_quant
            if not (current is self.float_cells[name] if rolled else isinstance(current, QuantCell)):
                raise RuntimeError(f"{what}: '{name}' in this network is not the cell this PTQ calibrated; "
                                   f"pass the network given to apply()")
        return names


def _record_index(records: List[LayerRecord], name: str) -> int:
    return next(i for i, r in enumerate(records) if r.name == name)
