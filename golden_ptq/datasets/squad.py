"""SQuAD v1.1 loader (the official ``train-v1.1.json`` / ``dev-v1.1.json``).

Prompt format (``eval`` mode; the model continues after "Answer:")::

    Context: {context}
    Question: {question}
    Answer:

``train`` mode (calibration) appends `` {first answer}`` to that prompt, so
calibration sees the same distribution the evaluation produces.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np

from .base import (BatchDataset, DatasetFormatError, TokenizerLike, bos_ids, fit_prompt,
                   left_pad, pad_id_of, read_json, require, right_pad, select)

PROMPT_HEAD = "Context:"
PROMPT_TAIL = "\nQuestion: {question}\nAnswer:"


def read_squad(path: str) -> List[dict]:
    """Flatten the official json into ``{"id", "context", "question", "answers"}`` records.

    Raises ``DatasetFormatError`` naming the file, the record path
    (e.g. ``data[0].paragraphs[2].qas[1]``) and the missing field.
    """
    root = read_json(path)
    articles = require(root, "data", path, "top level", list)
    records = []
    for a, article in enumerate(articles):
        paragraphs = require(article, "paragraphs", path, f"data[{a}]", list)
        for p, paragraph in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{p}]"
            context = require(paragraph, "context", path, where, str)
            for q, qa in enumerate(require(paragraph, "qas", path, where, list)):
                qwhere = f"{where}.qas[{q}]"
                question = require(qa, "question", path, qwhere, str)
                answers = require(qa, "answers", path, qwhere, list)
                if not answers:
                    raise DatasetFormatError(f"{path}: {qwhere}: field 'answers' is empty")
                texts = [require(ans, "text", path, f"{qwhere}.answers[{i}]", str)
                         for i, ans in enumerate(answers)]
                records.append({"id": str(qa.get("id", qwhere)), "context": context,
                                "question": question, "answers": texts})
    return records


def build_squad(path: str, mode: str, batch_size: int, seq_length: int, max_decode_length: int,
                tokenizer: TokenizerLike, ignore_token_id: int, repeat: int, shuffle: bool,
                n_samples: Optional[int], seed: int, add_bos: Optional[bool] = None) -> BatchDataset:
    """Build the SQuAD dataset; see ``golden_ptq.datasets.get_datasets`` for the columns."""
    if max_decode_length < 1:
        raise ValueError(f"max_decode_length must be >= 1, got {max_decode_length}")
    records = select(read_squad(path), n_samples, shuffle, seed)
    pad = pad_id_of(tokenizer)
    head = bos_ids(tokenizer, add_bos) + tokenizer.encode(PROMPT_HEAD)
    samples = []
    for index, rec in enumerate(records):
        context = tokenizer.encode(" " + rec["context"])
        tail = tokenizer.encode(PROMPT_TAIL.format(question=rec["question"].strip()))
        labels = None
        if mode == "train":
            answer = tokenizer.encode(" " + rec["answers"][0].strip())[:max_decode_length]
            budget = seq_length - len(answer)
            if budget < 1:  # absurdly short seq_length: keep the prompt's end only
                answer, budget = answer[:seq_length - 1], 1
            ids = fit_prompt(head, context, tail, budget) + answer
        else:
            ids = fit_prompt(head, context, tail, seq_length)
            labels = right_pad(tokenizer.encode(rec["answers"][0].strip()),
                               max_decode_length, ignore_token_id)
        input_ids, mask = left_pad(ids, seq_length, pad)
        sample = {"input_ids": input_ids, "attention_mask": mask}
        if labels is not None:
            sample["labels"] = labels
        sample["sample_index"] = np.int32(index)
        samples.append(sample)
    # references: all gold answers per sample (the labels column holds only the
    # first one); look them up with the ``sample_index`` column.
    return BatchDataset(samples, batch_size, repeat, shuffle, seed, name="squad1.1",
                        references=[rec["answers"] for rec in records],
                        ids=[rec["id"] for rec in records])
