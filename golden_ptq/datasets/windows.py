"""The one place a token stream is cut into fixed-length windows (calibration, perplexity, datasets)."""
from __future__ import annotations

from typing import List, Optional

import numpy as np


def window_starts(num_tokens: int, seq_length: int, stride: Optional[int] = None,
                  max_windows: Optional[int] = None) -> List[int]:
    """Start offsets of the full windows of ``seq_length`` tokens, every ``stride`` (default: no overlap).

    A tail shorter than a window is dropped, so every window has the same shape.
    """
    if seq_length < 1:
        raise ValueError(f"seq_length must be >= 1, got {seq_length}")
    stride = stride or seq_length
    if not 0 < stride <= seq_length:
        raise ValueError(f"stride must be in 1..seq_length ({seq_length}), got {stride}")
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"max_windows must be >= 1 (or None for all), got {max_windows}")
    starts = list(range(0, num_tokens - seq_length + 1, stride))
    return starts[:max_windows] if max_windows is not None else starts


def token_windows(tokens, seq_length: int, max_windows: Optional[int] = None,
                  stride: Optional[int] = None) -> np.ndarray:
    """``[n, seq_length]`` int64 windows of ``tokens`` (see :func:`window_starts`); an error if there are none."""
    stream = np.asarray(tokens, dtype=np.int64).reshape(-1)
    starts = window_starts(stream.size, seq_length, stride, max_windows)
    if not starts:
        raise ValueError(f"need at least seq_length={seq_length} tokens for one window, got {stream.size}")
    return np.stack([stream[s:s + seq_length] for s in starts])
