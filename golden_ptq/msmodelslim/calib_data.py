"""msModelSlim calibration data (torch / numpy / MindSpore tensors) as rows golden_ptq reads."""
from __future__ import annotations

from typing import List

import numpy as np


def as_calibration_items(calib_data) -> List:
    """msModelSlim calibration data (``[[input_ids, attention_mask], ...]``, torch / numpy /
    MindSpore tensors) as items :func:`golden_ptq.algorithm.calibration_data.token_rows` reads."""
    if calib_data is None:
        raise ValueError("calib_data is required: a list of [input_ids, attention_mask] (or [input_ids]) items")
    items = []
    for index, item in enumerate(calib_data):
        if isinstance(item, (list, tuple)):
            if len(item) not in (1, 2):
                raise ValueError(f"calib_data[{index}] must be [input_ids] or [input_ids, attention_mask], "
                                 f"got {len(item)} entries")
            entry = {"input_ids": _numpy(item[0])}
            if len(item) == 2 and item[1] is not None:
                entry["attention_mask"] = _numpy(item[1])
            items.append(entry)
        elif isinstance(item, dict):
            items.append({k: _numpy(v) for k, v in item.items()})
        else:
            items.append(_numpy(item))
    return items


def _numpy(value) -> np.ndarray:
    if hasattr(value, "asnumpy"):
        return value.asnumpy()
    if hasattr(value, "detach"):  # torch tensors, without importing torch
        return value.detach().cpu().numpy()
    return np.asarray(value)
