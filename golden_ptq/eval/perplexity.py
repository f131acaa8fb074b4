"""Perplexity over a token stream cut into windows."""
from __future__ import annotations

from typing import Optional

import numpy as np
from tqdm import tqdm

from golden_ptq.datasets.windows import window_starts


def log_softmax_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of ``targets`` ``[..., T]`` under ``logits`` ``[..., T, V]`` (float64)."""
    logits = logits.astype(np.float64)
    top = logits.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(logits - top).sum(axis=-1)) + top[..., 0]
    picked = np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return log_norm - picked


def perplexity(network, token_ids: np.ndarray, seq_length: int, stride: Optional[int] = None,
               batch_size: int = 1, max_windows: Optional[int] = None, progress: bool = False,
               desc: str = "perplexity") -> float:
    """exp(mean NLL) of ``token_ids`` under ``network``.

    Non-overlapping windows (``stride=None`` or ``stride == seq_length``): each window of
    ``seq_length`` tokens predicts its own tokens 2..L, so each window's first token is conditioned
    on nothing. Strided windows (``stride < seq_length``): windows start every ``stride`` tokens and
    only the last ``stride`` predictions of each window after the first are scored, so every scored
    token sees at least ``seq_length - stride`` tokens of context. A tail shorter than a window is
    dropped, so every forward has the same shape.
    """
    tokens = np.asarray(token_ids, dtype=np.int64).reshape(-1)
    stride = stride or seq_length
    starts = window_starts(tokens.size, seq_length, stride, max_windows)
    if not starts:
        raise ValueError(f"need at least seq_length={seq_length} tokens, got {tokens.size}")
    total_nll, total_count = 0.0, 0
    for first in tqdm(range(0, len(starts), batch_size), desc=desc, unit="batch", disable=not progress,
                      leave=False, dynamic_ncols=True):
        chunk = starts[first:first + batch_size]
        windows = np.stack([tokens[s:s + seq_length] for s in chunk])
        logits = network(windows).asnumpy()
        # one row at a time in float64: [T, V] at a time instead of [B, T, V]
        nll = [log_softmax_nll(logits[row, :-1], windows[row, 1:]) for row in range(len(chunk))]
        del logits
        for row, start in enumerate(chunk):
            keep = seq_length - 1 if (start == 0 or stride == seq_length) else stride
            total_nll += float(nll[row][-keep:].sum())
            total_count += keep
    return float(np.exp(total_nll / total_count))
