"""Plain text and jsonl loaders: a token stream cut into ``seq_length`` windows.

* ``text``: the whole file is one document.
* ``jsonl``: every line is a json object; ``field`` (default ``"text"``) holds
  the document. Documents are joined with ``eos_token_id`` between them.

Windows do not overlap. The last, partial window is dropped, unless the whole
stream is shorter than ``seq_length`` (then it is one left-padded window).
With ``add_bos`` the tokenizer's BOS starts every document, not every window.
Columns: ``input_ids``, ``attention_mask`` and ``labels`` (= ``input_ids``
with ``ignore_token_id`` on padding), the same in both modes.
"""
from __future__ import annotations

from typing import Iterator, List, Optional

import numpy as np

from golden_ptq.datasets.windows import window_starts

from .base import (BatchDataset, TokenizerLike, bos_ids, left_pad, pad_id_of, read_jsonl,
                   require, select)

_CHUNK_CHARS = 1 << 16


def _text_documents(path: str) -> Iterator[List[str]]:
    """One document: the file, handed out in chunks cut at line ends."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    chunks, start = [], 0
    while start < len(text):
        end = text.find("\n", start + _CHUNK_CHARS)
        end = len(text) if end < 0 else end + 1
        chunks.append(text[start:end])
        start = end
    yield chunks


def _jsonl_documents(path: str, field: str) -> Iterator[List[str]]:
    for lineno, rec in read_jsonl(path):
        yield [require(rec, field, path, f"line {lineno}", str)]


def token_stream(path: str, tokenizer: TokenizerLike, fmt: str, field: str = "text",
                 add_bos: Optional[bool] = None, max_tokens: Optional[int] = None) -> np.ndarray:
    """Tokenize a text (``fmt="text"``) or jsonl (``fmt="jsonl"``) file into one id stream.

    Stops early once ``max_tokens`` tokens are collected (the result may be longer).
    """
    docs = _text_documents(path) if fmt == "text" else _jsonl_documents(path, field)
    eos = getattr(tokenizer, "eos_token_id", None)
    ids: List[int] = []
    for d, chunks in enumerate(docs):
        if d and eos is not None:
            ids.append(int(eos))
        ids.extend(bos_ids(tokenizer, add_bos))
        for chunk in chunks:
            ids.extend(tokenizer.encode(chunk))
            if max_tokens is not None and len(ids) >= max_tokens:
                return np.asarray(ids, dtype=np.int32)
    if not ids:
        raise ValueError(f"{path}: no text found")
    return np.asarray(ids, dtype=np.int32)


def build_text(path: str, mode: str, batch_size: int, seq_length: int, max_decode_length: int,
               tokenizer: TokenizerLike, ignore_token_id: int, repeat: int, shuffle: bool,
               n_samples: Optional[int], seed: int, add_bos: Optional[bool] = None, fmt: str = "text",
               field: str = "text") -> BatchDataset:
    """Build a windowed language-modelling dataset (see the module docstring)."""
    del mode, max_decode_length
    limit = None if shuffle or n_samples is None else n_samples * seq_length
    stream = token_stream(path, tokenizer, fmt, field, add_bos, limit)
    starts = window_starts(len(stream), seq_length)
    windows = [stream[s:s + seq_length] for s in starts] if starts else [stream]
    windows = select(windows, n_samples, shuffle, seed)
    pad = pad_id_of(tokenizer)
    samples = []
    for window in windows:
        input_ids, mask = left_pad(window, seq_length, pad)
        labels = np.where(mask == 1, input_ids, ignore_token_id).astype(np.int32)
        samples.append({"input_ids": input_ids, "attention_mask": mask, "labels": labels})
    return BatchDataset(samples, batch_size, repeat, shuffle, seed, name=fmt)
