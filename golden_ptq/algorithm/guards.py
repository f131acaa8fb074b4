"""Checks PTQ.apply makes before it touches a network, and the guards it keeps while calibrating.

Everything that can be known up front (the config's mode, the calibration token ids, group sizes,
finite weights) is checked before the first quantized Cell is swapped in, so such an error leaves
the network untouched. What can only be seen while calibrating (non-finite activations, a scale
that is not finite) raises naming the layer, and the half-calibrated network's quantized Cells
are then marked failed so that running it raises instead of returning garbage.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
from mindspore import nn

from golden_ptq.config import PTQConfig, PTQMode
from golden_ptq.networks.token_ids import check_token_ids
from golden_ptq.quant_cells import QuantCell
from golden_ptq.quant_math import NonFiniteError


def check_mode(config: PTQConfig, datasets) -> None:
    """QUANTIZE needs calibration data; a DEPLOY config with calibration data is a mistake (it would
    build zero placeholders for a checkpoint that is never loaded)."""
    if config.mode is PTQMode.DEPLOY and datasets is not None:
        raise ValueError("PTQ.apply: this PTQConfig has mode DEPLOY (the config save_quantized writes next to a "
                         "quantized checkpoint, for load_quantized) but calibration data was given; to quantize, "
                         "set 'mode: QUANTIZE' in the yaml (or dataclasses.replace(config, mode=PTQMode.QUANTIZE)); "
                         "to load a saved model use load_quantized(folder)")


def check_calibration_rows(rows: List[np.ndarray], vocab_size: int, max_length: Optional[int] = None) -> None:
    """Every calibration token id must be in ``[0, vocab_size)``, and no row longer than ``max_length``
    (the network's max_position_embeddings)."""
    for index, row in enumerate(rows):
        check_token_ids(row, vocab_size, what=f"calibration row {index}")
        if max_length is not None and row.size > max_length:
            raise ValueError(f"calibration row {index}: {row.size} tokens exceed the network's "
                             f"max_position_embeddings {max_length}; cut the calibration text into shorter rows")


def float_weight(cell: nn.Cell):
    """The float weight a quantizable cell holds before quantization (None for a KV cache)."""
    for attr in ("weight", "embedding_weight"):
        param = getattr(cell, attr, None)
        if param is not None:
            return param
    return None


def check_weight(name: str, cell: nn.Cell) -> None:
    """The float weight of layer ``name`` is finite (any group size fits: a ragged last group is
    allowed)."""
    param = float_weight(cell)
    if param is None:
        return
    values = param.asnumpy()
    if not np.isfinite(values).all():
        bad = np.argwhere(~np.isfinite(values))
        first = tuple(int(i) for i in bad[0])
        raise NonFiniteError(f"layer '{name}': its weight holds {len(bad)} non-finite value(s) (NaN/Inf), first "
                             f"{values[first]} at {first}; fix the float checkpoint before quantizing")


def check_observed(full_name: str, cell: QuantCell) -> None:
    """The activations observed for ``cell`` (min/max per channel) are finite."""
    observers: Dict[str, object] = {}
    if getattr(cell, "input_observer", None) is not None:
        observers["input"] = cell.input_observer
    observers.update(getattr(cell, "observers", None) or {})
    for kind, observer in observers.items():
        lo, hi = getattr(observer, "minimum", None), getattr(observer, "maximum", None)
        if lo is None:
            continue
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            count = int((~np.isfinite(lo)).sum() + (~np.isfinite(hi)).sum())
            raise NonFiniteError(f"layer '{full_name}': its calibration {kind} activations hold NaN/Inf "
                                 f"({count} channel bound(s) not finite); check the calibration data and the "
                                 f"float weights of the layers before it")


def check_scales(full_name: str, cell: QuantCell) -> None:
    """Every float parameter a just-quantized cell holds (scales, zero points, biases) is finite, and
    every scale is > 0."""
    for local, param in cell.parameters_and_names(expand=False):
        values = param.asnumpy()
        if not np.issubdtype(values.dtype, np.floating):
            continue
        bad = ~np.isfinite(values)
        if local.endswith("scale"):
            bad |= values <= 0
        if bad.any():
            raise NonFiniteError(f"layer '{full_name}': quantization produced {int(bad.sum())} invalid value(s) in "
                                 f"'{local}' (NaN, Inf or a scale <= 0); the layer's weights or calibration "
                                 f"activations are out of float32 range")


def mark_failed(network: nn.Cell, reason: str) -> None:
    """Make every quantized Cell of ``network`` raise when run: calibration stopped half way."""
    for _, cell in network.cells_and_names():
        if isinstance(cell, QuantCell):
            cell.failure = reason
