"""BoolQ accuracy by log-likelihood: the model answers "yes" when the total
log-probability of the tokens of " yes" after the prompt is higher than that
of " no" (ties count as "no").

One forward per batch: the batch is repeated once per candidate, the
candidate tokens are appended on the right (shorter candidates right-padded,
masked out and never scored) and the leading columns that are padding in
every row are trimmed first, which cannot change the result because
positions count from the first real token. The kept width is rounded up to a
multiple of ``bucket`` so that graph mode compiles few distinct shapes.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from .metrics import accuracy

YES, NO = " yes", " no"


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def continuation_logprobs(network, input_ids: np.ndarray, attention_mask: np.ndarray,
                          continuations: Sequence[Sequence[int]], pad_token_id: int,
                          bucket: int = 64) -> np.ndarray:
    """Total log-probability of each continuation after each left-padded prompt.

    Args:
        network: callable ``(input_ids Tensor [N,T], attention_mask Tensor [N,T]) -> logits [N,T,V]``.
        input_ids, attention_mask: int arrays [B, T], prompts left-padded.
        continuations: C token lists, each non-empty.
        pad_token_id: filler for shorter continuations.
        bucket: trimmed prompt width is a multiple of this (1 = trim all padding).

    Returns:
        float64 array [B, C].
    """
    import mindspore as ms

    input_ids = np.asarray(input_ids, dtype=np.int32)
    attention_mask = np.asarray(attention_mask, dtype=np.int32)
    if not continuations or any(len(c) == 0 for c in continuations):
        raise ValueError("every continuation needs at least one token")
    real_cols = np.flatnonzero(attention_mask.any(axis=0))
    full = input_ids.shape[1]
    needed = full - int(real_cols[0]) if real_cols.size else full
    start = full - min(full, -(-needed // max(1, bucket)) * max(1, bucket))
    input_ids, attention_mask = input_ids[:, start:], attention_mask[:, start:]
    batch, width = input_ids.shape
    n_cont = len(continuations)
    longest = max(len(c) for c in continuations)

    ids = np.full((n_cont, batch, width + longest), pad_token_id, dtype=np.int32)
    mask = np.zeros_like(ids)
    ids[:, :, :width] = input_ids
    mask[:, :, :width] = attention_mask
    for c, cont in enumerate(continuations):
        ids[c, :, width:width + len(cont)] = cont
        mask[c, :, width:width + len(cont)] = 1
    ids = ids.reshape(n_cont * batch, -1)
    mask = mask.reshape(n_cont * batch, -1)

    logits = network(ms.Tensor(ids), ms.Tensor(mask))
    logits = logits.asnumpy() if hasattr(logits, "asnumpy") else np.asarray(logits)
    # logits at position t predict token t + 1: the k-th continuation token
    # is scored by the logits at width - 1 + k.
    logp = _log_softmax(logits[:, width - 1:width - 1 + longest, :])
    logp = logp.reshape(n_cont, batch, longest, -1)
    scores = np.zeros((batch, n_cont))
    for c, cont in enumerate(continuations):
        picked = logp[c][:, np.arange(len(cont)), np.asarray(cont)]  # [B, len(cont)]
        scores[:, c] = picked.sum(axis=1)
    return scores


def score_boolq_batch(network, tokenizer, input_ids: np.ndarray, attention_mask: np.ndarray,
                      pad_token_id: Optional[int] = None, bucket: int = 64) -> np.ndarray:
    """Predicted answers (1 yes / 0 no) for one left-padded batch of BoolQ prompts."""
    if pad_token_id is None:
        pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
            else tokenizer.eos_token_id
    conts = [tokenizer.encode(YES), tokenizer.encode(NO)]
    scores = continuation_logprobs(network, input_ids, attention_mask, conts, int(pad_token_id),
                                   bucket)
    return (scores[:, 0] > scores[:, 1]).astype(np.int32)


def _generated_answer(text: str) -> int:
    """1 / 0 when the generated text starts with yes / no, -1 otherwise."""
    words = text.strip().lower().split()
    first = words[0].strip(".,!:;\"'") if words else ""
    return {"yes": 1, "true": 1, "no": 0, "false": 0}.get(first, -1)


def evaluate_boolq(network, tokenizer, dataset: Iterable, with_generation: bool = False,
                   max_new_tokens: int = 3, log_every: int = 0, bucket: int = 64
                   ) -> Dict[str, float]:
    """BoolQ accuracy of ``network`` over a ``get_datasets("boolq", ...)`` dataset.

    Returns ``{"accuracy", "count"}``; with ``with_generation`` also
    ``"generation_accuracy"`` from greedy decoding of a few tokens (answers
    that start with neither yes nor no count as wrong). ``bucket``: see
    :func:`continuation_logprobs`.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    preds: List[int] = []
    gen_preds: List[int] = []
    golds: List[int] = []
    batches = dataset.create_dict_iterator(output_numpy=True)
    total = dataset.get_dataset_size() if hasattr(dataset, "get_dataset_size") else None
    for step, batch in enumerate(batches, start=1):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        preds.extend(score_boolq_batch(network, tokenizer, ids, mask, pad, bucket).tolist())
        golds.extend(np.asarray(batch["answer"]).astype(int).tolist())
        if with_generation:
            outputs = network.generate(ids, do_sample=False, max_new_tokens=max_new_tokens,
                                       pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
            new = [list(np.asarray(out)[ids.shape[1]:]) for out in outputs]
            texts = tokenizer.decode(new, skip_special_tokens=True)
            gen_preds.extend(_generated_answer(t) for t in texts)
        if log_every and step % log_every == 0:
            print(f"boolq batch {step}/{total}: accuracy so far {accuracy(preds, golds):.4f}",
                  flush=True)
    result = {"accuracy": accuracy(preds, golds), "count": len(golds)}
    if with_generation:
        result["generation_accuracy"] = accuracy(gen_preds, golds)
    return result
