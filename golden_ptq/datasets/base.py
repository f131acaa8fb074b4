"""Shared pieces of the dataset loaders: the batched dataset object, padding,
prompt truncation and strict readers for json / jsonl files.

The loaders tokenize eagerly (calibration and evaluation sets are small) and
hand out numpy batches wrapped as ``mindspore.Tensor``, which is what the
Golden Stick evaluation loop consumes through ``create_dict_iterator()``.
"""
from __future__ import annotations

import json
import math
from typing import Any, Dict, Iterator, List, Optional, Protocol, Sequence

import numpy as np


class TokenizerLike(Protocol):
    """The part of ``golden_ptq.networks.tokenizer.Tokenizer`` the loaders use."""

    pad_token_id: Optional[int]
    eos_token_id: Optional[int]
    bos_token_id: Optional[int]

    def encode(self, text: str) -> List[int]:
        ...


Sample = Dict[str, np.ndarray]


class DatasetFormatError(ValueError):
    """A dataset file does not follow the expected format."""


class BatchDataset:
    """A finite list of samples served in batches.

    Every sample is a dict of numpy arrays with the same keys and shapes.
    The last batch may be smaller than ``batch_size`` (nothing is dropped).
    With ``shuffle`` the order of every pass is a permutation drawn from
    ``seed`` and the pass index, so two datasets built with the same seed
    yield identical batches.
    """

    def __init__(self, samples: List[Sample], batch_size: int, repeat: int = 1,
                 shuffle: bool = False, seed: int = 0, name: str = "dataset",
                 references: Optional[List[Any]] = None, ids: Optional[List[str]] = None
                 ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        self.samples = samples
        self.batch_size = int(batch_size)
        self.repeat = int(repeat)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.name = name
        # Per-sample metadata that does not fit in a tensor (gold answer
        # strings, record ids), indexed by the ``sample_index`` column.
        self.references = references
        self.ids = ids

    def __len__(self) -> int:
        return self.get_dataset_size()

    def num_samples(self) -> int:
        """Number of samples in one pass."""
        return len(self.samples)

    def get_dataset_size(self) -> int:
        """Number of batches over all repeats."""
        return math.ceil(len(self.samples) / self.batch_size) * self.repeat

    def get_col_names(self) -> List[str]:
        return list(self.samples[0].keys()) if self.samples else []

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.samples))
        rng = np.random.default_rng([self.seed, epoch])
        return rng.permutation(len(self.samples))

    def iter_numpy(self) -> Iterator[Dict[str, np.ndarray]]:
        """Yield batches as dicts of stacked numpy arrays."""
        keys = self.get_col_names()
        for epoch in range(self.repeat):
            order = self._order(epoch)
            for start in range(0, len(order), self.batch_size):
                chosen = [self.samples[i] for i in order[start:start + self.batch_size]]
                yield {k: np.stack([s[k] for s in chosen]) for k in keys}

    def create_dict_iterator(self, num_epochs: int = -1, output_numpy: bool = False
                             ) -> Iterator[Dict[str, Any]]:
        """Yield batches as dicts of ``mindspore.Tensor`` (numpy with ``output_numpy``).

        ``num_epochs`` is accepted for MindSpore API compatibility and ignored:
        use ``repeat`` when building the dataset.
        """
        del num_epochs
        if output_numpy:
            yield from self.iter_numpy()
            return
        import mindspore as ms
        for batch in self.iter_numpy():
            yield {k: ms.Tensor(v) for k, v in batch.items()}

    def create_tuple_iterator(self, num_epochs: int = -1, output_numpy: bool = False
                              ) -> Iterator[tuple]:
        """Yield batches as tuples ordered like ``get_col_names()``."""
        for batch in self.create_dict_iterator(num_epochs, output_numpy):
            yield tuple(batch.values())

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        return self.create_dict_iterator()

    def __repr__(self) -> str:
        return (f"BatchDataset(name={self.name!r}, samples={len(self.samples)}, "
                f"batch_size={self.batch_size}, repeat={self.repeat}, shuffle={self.shuffle})")


def left_pad(ids: Sequence[int], length: int, pad_id: int) -> tuple:
    """Left-pad ``ids`` to ``length``; return ``(input_ids, attention_mask)`` int32 arrays."""
    if len(ids) > length:
        raise ValueError(f"sequence of {len(ids)} tokens does not fit in {length}")
    n_pad = length - len(ids)
    input_ids = np.full(length, pad_id, dtype=np.int32)
    input_ids[n_pad:] = ids
    mask = np.zeros(length, dtype=np.int32)
    mask[n_pad:] = 1
    return input_ids, mask


def right_pad(ids: Sequence[int], length: int, fill: int) -> np.ndarray:
    """Cut ``ids`` to ``length`` and right-pad with ``fill``; int32."""
    out = np.full(length, fill, dtype=np.int32)
    ids = list(ids)[:length]
    out[:len(ids)] = ids
    return out


def fit_prompt(prefix: List[int], context: List[int], suffix: List[int], budget: int
               ) -> List[int]:
    """Join ``prefix + context + suffix`` in at most ``budget`` tokens.

    Tokens are dropped from the LEFT of ``context`` first, so the prefix
    (e.g. a title) and the suffix (the question and "Answer:") survive. If
    prefix and suffix alone are too long, the joined prompt keeps its last
    ``budget`` tokens, so the end of the prompt (what the model answers from)
    is never cut.
    """
    if budget < 1:
        raise ValueError(f"no room for a prompt: token budget is {budget}")
    excess = len(prefix) + len(context) + len(suffix) - budget
    if excess <= 0:
        return prefix + context + suffix
    if excess <= len(context):
        return prefix + context[excess:] + suffix
    return (prefix + suffix)[-budget:]


def pad_id_of(tokenizer: TokenizerLike) -> int:
    """The pad id, falling back to eos (as most causal LMs ship without one)."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    if pad is None:
        raise ValueError("tokenizer has neither pad_token_id nor eos_token_id; cannot pad")
    return int(pad)


def bos_ids(tokenizer: TokenizerLike, add_bos: Optional[bool] = None) -> List[int]:
    """``[bos_token_id]`` or ``[]``. ``add_bos=None`` follows the tokenizer's
    ``add_bos_token`` attribute when it has one (GGUF / HF configs carry it), else adds BOS."""
    if add_bos is None:
        add_bos = getattr(tokenizer, "add_bos_token", True)
    bos = getattr(tokenizer, "bos_token_id", None)
    return [int(bos)] if add_bos and bos is not None else []


def require(record: Any, field: str, path: str, where: str, kind: type = str) -> Any:
    """Return ``record[field]``, raising a ``DatasetFormatError`` naming file, place and field."""
    if not isinstance(record, dict):
        raise DatasetFormatError(f"{path}: {where}: expected an object, got {type(record).__name__}")
    if field not in record:
        raise DatasetFormatError(f"{path}: {where}: missing field '{field}'")
    value = record[field]
    if kind is not None and not isinstance(value, kind):
        raise DatasetFormatError(f"{path}: {where}: field '{field}' should be "
                                 f"{kind.__name__}, got {type(value).__name__}")
    return value


def read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetFormatError(f"{path}: line {err.lineno}: invalid json: {err.msg}") from err


def read_jsonl(path: str) -> Iterator[tuple]:
    """Yield ``(line_number, record)`` for every non-blank line (1-based numbers)."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetFormatError(f"{path}: line {lineno}: invalid json: {err.msg}") from err


def select(records: List[Any], n_samples: Optional[int], shuffle: bool, seed: int) -> List[Any]:
    """Pick the records to tokenize: a seeded shuffle (if asked) then the first ``n_samples``."""
    if n_samples is not None and n_samples < 1:
        raise ValueError(f"n_samples must be >= 1 or None, got {n_samples}")
    if shuffle:
        rng = np.random.default_rng([seed, 1 << 20])
        records = [records[i] for i in rng.permutation(len(records))]
    return records if n_samples is None else records[:n_samples]
