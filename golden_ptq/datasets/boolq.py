"""BoolQ loader (the official ``train.jsonl`` / ``dev.jsonl``: one json object per
line with ``question``, ``title``, ``passage`` and a boolean ``answer``).

Prompt, as in the msModelSlim precision tool::

    {title} -- {passage}
    Question:{question}?
    Answer:

Both modes yield the prompt alone (calibration does not need the answer
text) plus the ``answer`` column (1 = yes, 0 = no).
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np

from .base import (BatchDataset, DatasetFormatError, TokenizerLike, bos_ids, fit_prompt,
                   left_pad, pad_id_of, read_jsonl, require, select)


def boolq_prompt_parts(title: str, passage: str, question: str) -> tuple:
    """Return the prompt as ``(head, passage, tail)`` strings; their concatenation is the prompt."""
    return f"{title} --", f" {passage}", f"\nQuestion:{question}?\nAnswer:"


def read_boolq(path: str) -> List[dict]:
    """Read the jsonl; errors name the file, the 1-based line and the field."""
    records = []
    for lineno, rec in read_jsonl(path):
        where = f"line {lineno}"
        row = {field: require(rec, field, path, where, str)
               for field in ("question", "title", "passage")}
        answer = require(rec, "answer", path, where, None)
        if not isinstance(answer, bool):
            raise DatasetFormatError(f"{path}: {where}: field 'answer' should be true or false, "
                                     f"got {answer!r}")
        row["answer"] = answer
        records.append(row)
    return records


def build_boolq(path: str, mode: str, batch_size: int, seq_length: int, max_decode_length: int,
                tokenizer: TokenizerLike, ignore_token_id: int, repeat: int, shuffle: bool,
                n_samples: Optional[int], seed: int, add_bos: Optional[bool] = None) -> BatchDataset:
    """Build the BoolQ dataset; ``mode``, ``max_decode_length`` and
    ``ignore_token_id`` do not change the columns (kept for the common signature)."""
    del mode, max_decode_length, ignore_token_id
    records = select(read_boolq(path), n_samples, shuffle, seed)
    pad = pad_id_of(tokenizer)
    bos = bos_ids(tokenizer, add_bos)
    samples = []
    for index, rec in enumerate(records):
        head, passage, tail = boolq_prompt_parts(rec["title"], rec["passage"], rec["question"])
        ids = fit_prompt(bos + tokenizer.encode(head), tokenizer.encode(passage),
                         tokenizer.encode(tail), seq_length)
        input_ids, mask = left_pad(ids, seq_length, pad)
        samples.append({"input_ids": input_ids, "attention_mask": mask,
                        "answer": np.int32(rec["answer"]), "sample_index": np.int32(index)})
    return BatchDataset(samples, batch_size, repeat, shuffle, seed, name="boolq",
                        references=[rec["answer"] for rec in records])
