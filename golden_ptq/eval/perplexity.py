"""Perplexity over a token stream cut into windows."""
from __future__ import annotations

import ctypes
from typing import Optional

import numpy as np
from tqdm import tqdm

from golden_ptq.datasets.windows import window_starts
from golden_ptq.kernels.native import nll_rows


NLL_ROWS = 32   # positions whose float64 logits are worked on at once: a few MB that stay in cache


def log_softmax_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of ``targets`` ``[..., T]`` under ``logits`` ``[..., T, V]`` (float64).

    float32 logits go to the native kernel (``kernels/nll.cc``: parallel over positions, each row read
    once; agrees with numpy to ~1e-15) when it is available; otherwise, or when it refuses the input
    (a target out of range, a non-finite row), :func:`numpy_log_softmax_nll`."""
    logits = np.asarray(logits)
    fn = nll_rows() if logits.dtype == np.float32 and logits.ndim >= 1 and logits.shape[-1] > 0 else None
    if fn is not None:
        flat = np.ascontiguousarray(logits).reshape(-1, logits.shape[-1])
        picks = np.ascontiguousarray(np.asarray(targets).reshape(-1), np.int64)
        if picks.size == flat.shape[0]:
            out = np.empty(flat.shape[0], np.float64)
            status = fn(flat.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                        picks.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)), flat.shape[0], flat.shape[1],
                        out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)))
            if status == 0:
                return out.reshape(logits.shape[:-1])
    return numpy_log_softmax_nll(logits, targets)


def numpy_log_softmax_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """:func:`log_softmax_nll` in numpy (the reference): ``NLL_ROWS`` positions at a time, so every
    reduction runs along one position's row and the values are those of the whole array at once, at a
    fraction of the memory traffic."""
    logits = np.asarray(logits)
    flat = logits.reshape(-1, logits.shape[-1])
    picks = np.asarray(targets).reshape(-1)
    out = np.empty(flat.shape[0], np.float64)
    for first in range(0, flat.shape[0], NLL_ROWS):
        rows = flat[first:first + NLL_ROWS].astype(np.float64)
        top = rows.max(axis=-1, keepdims=True)
        picked = np.take_along_axis(rows, picks[first:first + NLL_ROWS, None], axis=-1)[:, 0]
        rows -= top
        np.exp(rows, out=rows)
        out[first:first + NLL_ROWS] = np.log(rows.sum(axis=-1)) + top[:, 0] - picked
    return out.reshape(logits.shape[:-1])


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
        # one window at a time (each a contiguous [T, V]; log_softmax_nll works through it in chunks)
        nll = [log_softmax_nll(logits[row, :-1], windows[row, 1:]) for row in range(len(chunk))]
        del logits
        for row, start in enumerate(chunk):
            keep = seq_length - 1 if (start == 0 or stride == seq_length) else stride
            total_nll += float(nll[row][-keep:].sum())
            total_count += keep
    return float(np.exp(total_nll / total_count))
