"""The text golden_ptq calibrates and evaluates on by default, and its fixed split.

The default is *Moby-Dick* (public domain), shipped gzipped inside the package
(``golden_ptq/data/moby-dick.txt.gz``), so nothing outside the installed package is needed.
Any UTF-8 text file can take its place (``path=``, the CLI's ``--text``). The split is by
characters: the first half calibrates, the middle 30% is held out for tuning (validation),
the last fifth is reported (evaluation); the three never overlap.
"""
from __future__ import annotations

import gzip
from importlib import resources
from typing import Optional

import numpy as np

from golden_ptq.datasets.windows import token_windows

SPLITS = ("calibration", "validation", "evaluation")
PACKAGED_TEXT = "moby-dick.txt.gz"


def corpus_text(path: Optional[str] = None) -> str:
    """The whole text: the file at ``path``, or the packaged default."""
    if path is None:
        return gzip.decompress(resources.files("golden_ptq").joinpath("data", PACKAGED_TEXT).read_bytes()).decode("utf-8")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"text file {path!r} does not exist") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"text file {path!r} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not text.strip():
        raise ValueError(f"text file {path!r} is empty")
    return text


def split_text(text: str, split: str) -> str:
    """One of :data:`SPLITS` of ``text``: first half, middle 30%, or last fifth (by characters)."""
    n = len(text)
    bounds = {"calibration": (0, n // 2), "validation": (n // 2, n - n // 5), "evaluation": (n - n // 5, n)}
    if split not in bounds:
        raise ValueError(f"split {split!r} is not one of {list(SPLITS)}")
    start, end = bounds[split]
    return text[start:end]


def corpus_split(split: str, path: Optional[str] = None) -> str:
    """``split_text(corpus_text(path), split)``."""
    return split_text(corpus_text(path), split)


def corpus_windows(tokenizer, split: str, seq_length: int, max_windows: Optional[int] = None,
                   path: Optional[str] = None) -> np.ndarray:
    """The first ``max_windows`` (default all) non-overlapping ``seq_length``-token windows of a split."""
    return token_windows(tokenizer.encode(corpus_split(split, path)), seq_length, max_windows)
