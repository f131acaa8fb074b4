"""Token-by-token decoding through the KV cache: greedy and top-k / top-p sampling, left-padded batches."""
from __future__ import annotations

import numbers
from typing import List, Optional

import numpy as np

from golden_ptq.networks.token_ids import check_token_ids


def _filter_top_k_top_p(logits: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    logits = logits.astype(np.float64).copy()
    if top_k and top_k > 0 and top_k < logits.shape[-1]:
        kth = np.sort(logits, axis=-1)[:, -top_k][:, None]
        logits[logits < kth] = -np.inf
    if top_p < 1.0:
        order = np.argsort(-logits, axis=-1)
        sorted_logits = np.take_along_axis(logits, order, axis=-1)
        probs = np.exp(sorted_logits - sorted_logits[:, :1])
        probs /= probs.sum(axis=-1, keepdims=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop_sorted = (np.cumsum(probs, axis=-1) - probs) >= top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        logits[drop] = -np.inf
    return logits


def generate(network, input_ids, do_sample: bool = False, max_length: Optional[int] = None, top_p: float = 1.0,
             top_k: int = 0, max_new_tokens: Optional[int] = None, pad_token_id: Optional[int] = None,
             eos_token_id: Optional[int] = None, temperature: float = 1.0, seed: Optional[int] = None,
             attention_mask=None) -> List[np.ndarray]:
    """Continue each row of ``input_ids`` ``[B, T]`` (left-padded with ``pad_token_id``).

    Returns one array per row: the row as given followed by its new tokens, ending at the first
    ``eos_token_id`` (included). ``max_new_tokens`` wins over ``max_length`` (total length) when both
    are given. Sampling draws from ``numpy.random.default_rng(seed)``, so a seed repeats a run.
    """
    if max_new_tokens is not None and (isinstance(max_new_tokens, bool)
                                       or not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 0):
        raise ValueError(f"generate: max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if do_sample and not 0.0 < top_p <= 1.0:
        raise ValueError(f"generate: top_p must be in (0, 1], got {top_p!r}")
    if do_sample and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 0):
        raise ValueError(f"generate: top_k must be an integer >= 0 (0: no top-k filter), got {top_k!r}")
    ids = check_token_ids(input_ids, network.config.vocab_size).astype(np.int64)
    if ids.ndim == 1:
        ids = ids[None]
    config = network.config
    pad = config.pad_token_id if pad_token_id is None else pad_token_id
    eos = config.eos_token_id if eos_token_id is None else eos_token_id
    if attention_mask is not None:
        mask = np.asarray(attention_mask.asnumpy() if hasattr(attention_mask, "asnumpy") else attention_mask)
    elif pad is not None:
        mask = _left_pad_mask(ids, pad)
    else:
        mask = np.ones_like(ids)
    if max_new_tokens is None:
        max_new_tokens = (max_length - ids.shape[1]) if max_length is not None else 32
    if max_new_tokens <= 0:
        return [row.copy() for row in ids]
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    rng = np.random.default_rng(seed)
    logits = network.prefill(ids, mask, new_tokens=max_new_tokens - 1).asnumpy()
    new_tokens: List[List[int]] = [[] for _ in range(ids.shape[0])]
    finished = np.zeros(ids.shape[0], dtype=bool)
    for step in range(max_new_tokens):
        if do_sample:
            filtered = _filter_top_k_top_p(logits / temperature, top_k, top_p)
            probs = np.exp(filtered - filtered.max(axis=-1, keepdims=True))
            probs /= probs.sum(axis=-1, keepdims=True)
            nxt = np.array([rng.choice(probs.shape[-1], p=p) for p in probs])
        else:
            nxt = logits.argmax(axis=-1)
        for row, token in enumerate(nxt):
            if not finished[row]:
                new_tokens[row].append(int(token))
                finished[row] = eos is not None and int(token) == eos
        if finished.all() or step == max_new_tokens - 1:
            break
        feed = np.where(finished, pad if pad is not None else 0, nxt)
        logits = network.decode_step(feed).asnumpy()
    network.reset_cache()
    return [np.concatenate([ids[row], np.asarray(new_tokens[row], dtype=ids.dtype)]) for row in range(ids.shape[0])]


def _left_pad_mask(ids: np.ndarray, pad: int) -> np.ndarray:
    """1 from each row's first non-pad token on (pads inside or after the text stay visible)."""
    is_token = ids != pad
    return (np.cumsum(is_token, axis=1) > 0).astype(np.int64)
