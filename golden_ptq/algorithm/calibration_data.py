"""Turning whatever the user calibrates with into unpadded token rows, batched by length."""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, List

import numpy as np


def _to_numpy(value) -> np.ndarray:
    return np.asarray(value.asnumpy() if hasattr(value, "asnumpy") else value)


def token_rows(datasets) -> List[np.ndarray]:
    """Unpadded 1-D token arrays from a dataset.

    Accepts a Golden Stick style dataset (``create_dict_iterator()`` of dicts with ``input_ids``
    and optionally ``attention_mask``), an iterable of such dicts, or an iterable of token arrays
    (``[T]`` or ``[B, T]``). Padding is dropped using ``attention_mask`` (0 = pad).
    """
    if datasets is None:
        raise ValueError("PTQ.apply in QUANTIZE mode needs calibration data (datasets=...)")
    items: Iterable = datasets.create_dict_iterator() if hasattr(datasets, "create_dict_iterator") else datasets
    rows: List[np.ndarray] = []
    for index, item in enumerate(items):
        if isinstance(item, dict):
            if "input_ids" not in item:
                raise ValueError(f"calibration item {index} has no 'input_ids' (keys: {sorted(item)})")
            ids = _to_numpy(item["input_ids"])
            mask = _to_numpy(item["attention_mask"]) if "attention_mask" in item else None
        else:
            ids, mask = _to_numpy(item), None
        if ids.ndim == 1:
            ids = ids[None]
            mask = None if mask is None else mask[None]
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"calibration item {index}: input_ids must be integer [T] or [B, T], got "
                             f"{ids.dtype} {ids.shape}")
        for row in range(ids.shape[0]):
            tokens = ids[row] if mask is None else ids[row][mask[row] > 0]
            if tokens.size:
                rows.append(tokens.astype(np.int64))
    if not rows:
        raise ValueError("calibration data is empty: no token rows were found")
    return rows


def length_batches(rows: List[np.ndarray], batch_size: int) -> List[np.ndarray]:
    """Rows of equal length stacked into ``[B, T]`` batches (order kept within a length)."""
    by_length: "OrderedDict[int, List[np.ndarray]]" = OrderedDict()
    for row in rows:
        by_length.setdefault(row.size, []).append(row)
    batches = []
    for same in by_length.values():
        for start in range(0, len(same), batch_size):
            batches.append(np.stack(same[start:start + batch_size]))
    return batches
