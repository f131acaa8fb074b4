"""``PrecisionTest``: one call that scores a float or quantized network on a
dataset, the counterpart of msModelSlim's precision tool::

    PrecisionTest(network, tokenizer, "boolq", batch_size=4,
                  dataset_path="boolq/dev.jsonl", n_samples=200).test()

* ``"boolq"``: accuracy from the log-likelihood of " yes" vs " no".
* ``"squad1.1"``: exact match / F1 (percent) of greedy answers, as in the
  Golden Stick evaluation loop.
* ``"text"``: perplexity of a text file (``golden_ptq.eval.perplexity``).

Nothing is downloaded: ``dataset_path`` points at the user's copy.
"""
from __future__ import annotations

import time
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from .boolq import evaluate_boolq
from .metrics import EmF1Metric

TASKS = ("boolq", "squad1.1", "text")


def first_line(text: str) -> str:
    """The generated answer up to the first line break (the model tends to go on
    with a new "Question:"), stripped."""
    return text.strip().split("\n", 1)[0].strip()


def evaluate_squad(network, tokenizer, dataset: Iterable, max_new_tokens: int = 32,
                   do_sample: bool = False, top_p: float = 1.0, top_k: int = 0,
                   ignore_token_id: int = -100, log_every: int = 0) -> Dict[str, float]:
    """EM / F1 of ``network.generate`` answers over a ``get_datasets("squad1.1", ..., "eval", ...)``.

    Rows are left-padded, so every prompt ends at the last column and the
    answer is what follows it, cut at the first line break. Each prediction
    is scored against all gold answers of its question (``dataset.references``)
    when the dataset has them, otherwise against the decoded ``labels``.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    references = getattr(dataset, "references", None)
    metric = EmF1Metric()
    total = dataset.get_dataset_size() if hasattr(dataset, "get_dataset_size") else None
    for step, batch in enumerate(dataset.create_dict_iterator(output_numpy=True), start=1):
        input_ids = batch["input_ids"]
        width = input_ids.shape[1]
        outputs = network.generate(input_ids, do_sample=do_sample, top_p=top_p, top_k=top_k,
                                   max_new_tokens=max_new_tokens, pad_token_id=pad,
                                   eos_token_id=tokenizer.eos_token_id,
                                   attention_mask=batch["attention_mask"])
        new_ids = [[int(t) for t in np.asarray(out)[width:]] for out in outputs]
        preds = [first_line(tokenizer.decode(ids, skip_special_tokens=True)) for ids in new_ids]
        if references is not None and "sample_index" in batch:
            golds: List = [references[int(i)] for i in batch["sample_index"]]
        else:
            golds = [tokenizer.decode([int(t) for t in row if t != ignore_token_id],
                                      skip_special_tokens=True) for row in batch["labels"]]
        metric.update(preds, golds)
        if log_every and step % log_every == 0:
            partial = metric.eval()
            print(f"squad batch {step}/{total}: EM {partial['em']:.2f} F1 {partial['f1']:.2f}",
                  flush=True)
    return metric.eval()


def text_token_ids(path: str, tokenizer, fraction: Tuple[float, float] = (0.0, 1.0),
                   add_bos: Optional[bool] = None) -> np.ndarray:
    """Token ids of a text file, restricted to a ``[start, end)`` fraction of the tokens
    (e.g. ``(0.8, 1.0)`` for the last fifth), then BOS in front (see ``bos_ids``)."""
    from golden_ptq.datasets import token_stream
    from golden_ptq.datasets.base import bos_ids

    start, end = fraction
    if not 0.0 <= start < end <= 1.0:
        raise ValueError(f"fraction must satisfy 0 <= start < end <= 1, got {fraction}")
    ids = token_stream(path, tokenizer, "text", add_bos=False)
    ids = ids[int(round(start * len(ids))):int(round(end * len(ids)))]
    return np.concatenate([np.asarray(bos_ids(tokenizer, add_bos), dtype=ids.dtype), ids])


class PrecisionTest:
    """Evaluate ``network`` on ``dataset`` ("boolq", "squad1.1" or "text").

    Args:
        network: a ``LlamaForCausalLM``-like cell: ``network(ids, mask) -> logits``
            and, for squad, ``generate``.
        tokenizer: ``golden_ptq.networks.tokenizer.Tokenizer`` or the same interface.
        dataset: task name.
        batch_size: prompts (or perplexity windows) per forward.
        dataset_path: the user's BoolQ ``dev.jsonl``, SQuAD ``dev-v1.1.json`` or text file.
        n_samples: limit on questions (boolq/squad) or, for text, on
            ``seq_length`` windows of tokens scored (None = all).
        seq_length: prompt width (boolq/squad) or perplexity window (text).
        max_new_tokens: squad answer length cap (also the labels width).
        stride: text only; ``None`` = non-overlapping windows.
        text_fraction: text only; which part of the file's tokens to score.
        with_generation: boolq only; also report greedy yes/no accuracy.
        verbose: print the result (and progress every ``log_every`` batches).
    """

    def __init__(self, network, tokenizer, dataset: str = "boolq", batch_size: int = 1,
                 dataset_path: Optional[str] = None, n_samples: Optional[int] = None,
                 seq_length: int = 512, max_new_tokens: int = 32, stride: Optional[int] = None,
                 text_fraction: Tuple[float, float] = (0.0, 1.0), with_generation: bool = False,
                 ignore_token_id: int = -100, verbose: bool = True, log_every: int = 0) -> None:
        if dataset not in TASKS:
            raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(TASKS)}")
        if dataset_path is None:
            raise ValueError(f"dataset_path is required for {dataset!r}: nothing is downloaded, "
                             "point it at your copy of the dataset file")
        self.network = network
        self.tokenizer = tokenizer
        self.dataset = dataset
        self.batch_size = batch_size
        self.dataset_path = dataset_path
        self.n_samples = n_samples
        self.seq_length = seq_length
        self.max_new_tokens = max_new_tokens
        self.stride = stride
        self.text_fraction = text_fraction
        self.with_generation = with_generation
        self.ignore_token_id = ignore_token_id
        self.verbose = verbose
        self.log_every = log_every

    def _load(self):
        from golden_ptq.datasets import get_datasets

        return get_datasets(self.dataset, self.dataset_path, "eval", self.batch_size,
                            self.seq_length, self.max_new_tokens, self.tokenizer,
                            self.ignore_token_id, 1, False, n_samples=self.n_samples)

    def _perplexity(self) -> Dict[str, float]:
        from golden_ptq.eval.perplexity import perplexity  # imported late: optional module

        ids = text_token_ids(self.dataset_path, self.tokenizer, self.text_fraction)
        if self.n_samples is not None:
            ids = ids[:self.n_samples * self.seq_length + 1]
        ppl = perplexity(self.network, ids, self.seq_length, stride=self.stride,
                         batch_size=self.batch_size)
        return {"perplexity": float(ppl), "tokens": int(len(ids))}

    def test(self) -> Dict[str, float]:
        """Run the evaluation; return (and with ``verbose`` print) the metrics."""
        if hasattr(self.network, "set_train"):
            self.network.set_train(False)
        began = time.time()
        if self.dataset == "text":
            result = self._perplexity()
        elif self.dataset == "boolq":
            result = evaluate_boolq(self.network, self.tokenizer, self._load(),
                                    with_generation=self.with_generation,
                                    log_every=self.log_every)
        else:
            result = evaluate_squad(self.network, self.tokenizer, self._load(),
                                    max_new_tokens=self.max_new_tokens,
                                    ignore_token_id=self.ignore_token_id,
                                    log_every=self.log_every)
        result["seconds"] = round(time.time() - began, 2)
        if self.verbose:
            shown = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in result.items())
            print(f"[PrecisionTest] {self.dataset} ({self.dataset_path}): {shown}", flush=True)
        return result
