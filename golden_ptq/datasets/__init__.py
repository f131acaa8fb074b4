"""Calibration and evaluation datasets read from the files users download.

``get_datasets`` follows the argument order of Golden Stick's
``mindspore_gs.datasets.get_datasets``::

    ds = get_datasets("squad1.1", "squad/dev-v1.1.json", "eval", batch_size, seq_length,
                      max_decode_length, tokenizer, ignore_token_id, 1, False, n_samples=1000)
    for item in ds.create_dict_iterator():
        item["input_ids"]  # mindspore.Tensor int32 [B, seq_length], left-padded
"""
from __future__ import annotations

from typing import Optional

from .base import BatchDataset, DatasetFormatError, TokenizerLike, fit_prompt
from .boolq import build_boolq, read_boolq
from .squad import build_squad, read_squad
from .text import build_text, token_stream

DATASETS = ("squad1.1", "boolq", "text", "jsonl")
MODES = ("train", "eval")

__all__ = ["get_datasets", "BatchDataset", "DatasetFormatError", "DATASETS", "MODES",
           "read_squad", "read_boolq", "token_stream", "fit_prompt"]


def get_datasets(name: str, path: str, mode: str, batch_size: int, seq_length: int,
                 max_decode_length: int, tokenizer: TokenizerLike, ignore_token_id: int = -100,
                 repeat: int = 1, shuffle: bool = False, n_samples: Optional[int] = None,
                 seed: int = 0, *, field: str = "text", add_bos: Optional[bool] = None) -> BatchDataset:
    """Load a dataset file as batches for calibration (``mode="train"``) or evaluation (``"eval"``).

    Args:
        name: ``"squad1.1"`` (official json), ``"boolq"`` (official jsonl),
            ``"text"`` (any text file) or ``"jsonl"`` (the ``field`` of every line).
        path: the dataset file.
        mode: ``"train"`` or ``"eval"``.
        batch_size: samples per batch; the last batch may be smaller.
        seq_length: width of ``input_ids``. Prompts are LEFT-padded with
            ``tokenizer.pad_token_id`` (eos when there is none).
        max_decode_length: width of the squad ``labels`` column and the cap on
            the answer tokens appended in squad ``train`` mode.
        tokenizer: anything with ``encode(str) -> list[int]`` and
            ``pad_token_id`` / ``eos_token_id`` / ``bos_token_id``.
        ignore_token_id: fill value of ``labels`` outside real tokens.
        repeat: passes over the data.
        shuffle: shuffle (and subsample with ``n_samples``) with ``seed``; the
            result is the same for the same seed.
        n_samples: keep only this many samples (windows for text/jsonl).
        seed: seed for ``shuffle``.
        field: jsonl field holding the text (``"jsonl"`` only).
        add_bos: put ``tokenizer.bos_token_id`` (when it has one) at the start
            of every prompt / document; ``None`` follows the tokenizer's
            ``add_bos_token`` attribute if it has one, else adds it.

    Columns (int32): all have ``input_ids`` [B, seq_length] and
    ``attention_mask`` (1 real token, 0 padding). squad1.1 ``eval`` adds
    ``labels`` [B, max_decode_length] (first gold answer, right-padded with
    ``ignore_token_id``); squad1.1 and boolq add ``sample_index`` [B], which
    indexes ``ds.references`` (all gold answers / the boolean answer); boolq
    adds ``answer`` [B] (1 yes, 0 no); text/jsonl add ``labels`` [B, seq_length].

    Prompts longer than ``seq_length`` (squad: minus the answer in ``train``
    mode) are cut from the LEFT of the context / passage, so the question and
    "Answer:" always stay. Malformed files raise ``DatasetFormatError`` (a
    ``ValueError``) naming the file, the line or record and the field.
    """
    key = str(name).lower()
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if seq_length < 1:
        raise ValueError(f"seq_length must be >= 1, got {seq_length}")
    args = (path, mode, batch_size, seq_length, max_decode_length, tokenizer, ignore_token_id,
            repeat, shuffle, n_samples, seed)
    if key == "squad1.1":
        return build_squad(*args, add_bos=add_bos)
    if key == "boolq":
        return build_boolq(*args, add_bos=add_bos)
    return build_text(*args, add_bos=add_bos, fmt=key, field=field)
