"""Answer-quality metrics: SQuAD v1.1 exact match / F1 and plain accuracy.

The normalization and the F1 follow the official SQuAD v1.1 evaluation
script: lowercase, drop ASCII punctuation, drop the articles a/an/the, collapse
whitespace; F1 is over normalized whitespace tokens (bag of words), and both
scores take the best over the gold answers of a question. As in v1.1, F1 is 0
whenever no token is shared, even if both strings normalize to empty.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Dict, List, Sequence, Union

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(pred: str, gold: str) -> float:
    """1.0 when the normalized strings are equal, else 0.0."""
    return float(normalize_answer(pred) == normalize_answer(gold))


def f1_score(pred: str, gold: str) -> float:
    """Token-level F1 between the normalized strings, in [0, 1]."""
    pred_tokens = normalize_answer(pred).split()
    gold_tokens = normalize_answer(gold).split()
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred_tokens)
    recall = common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _golds(label: Union[str, Sequence[str]]) -> List[str]:
    golds = [label] if isinstance(label, str) else list(label)
    if not golds:
        raise ValueError("a label needs at least one gold answer")
    return golds


class EmF1Metric:
    """Accumulates SQuAD exact match and F1 over batches (the MindFormers interface).

    >>> m = EmF1Metric(); m.update(["the Eiffel Tower"], [["Eiffel Tower", "tower"]])
    >>> m.eval()["em"]
    100.0
    """

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose
        self.clear()

    def clear(self) -> None:
        self.em_sum = 0.0
        self.f1_sum = 0.0
        self.count = 0

    def update(self, preds: Union[str, Sequence[str]],
               labels: Union[str, Sequence[str], Sequence[Sequence[str]]]) -> None:
        """Add predictions; each label is a gold string or a list of gold strings."""
        if isinstance(preds, str):
            preds, labels = [preds], [labels]
        preds, labels = list(preds), list(labels)
        if len(preds) != len(labels):
            raise ValueError(f"{len(preds)} predictions but {len(labels)} labels")
        for pred, label in zip(preds, labels):
            golds = _golds(label)
            self.em_sum += max(exact_match(pred, g) for g in golds)
            self.f1_sum += max(f1_score(pred, g) for g in golds)
            self.count += 1

    def eval(self) -> Dict[str, float]:
        """Return ``{"em": %, "f1": %, "count": n}`` (0.0 for both when empty)."""
        n = self.count
        result = {"em": 100.0 * self.em_sum / n if n else 0.0,
                  "f1": 100.0 * self.f1_sum / n if n else 0.0,
                  "count": n}
        if self.verbose:
            print(f"EM: {result['em']:.2f}  F1: {result['f1']:.2f}  (n={n})", flush=True)
        return result


def accuracy(preds: Sequence, labels: Sequence) -> float:
    """Fraction of positions where ``preds[i] == labels[i]`` (0.0 when empty)."""
    preds, labels = list(preds), list(labels)
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions but {len(labels)} labels")
    if not preds:
        return 0.0
    return sum(int(p == g) for p, g in zip(preds, labels)) / len(preds)
