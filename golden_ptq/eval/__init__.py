"""Evaluation: perplexity, SQuAD EM/F1, BoolQ accuracy, and the msModelSlim-style ``PrecisionTest``."""
from golden_ptq.eval.boolq import continuation_logprobs, evaluate_boolq
from golden_ptq.eval.metrics import EmF1Metric, accuracy, exact_match, f1_score, normalize_answer
from golden_ptq.eval.perplexity import perplexity
from golden_ptq.eval.precision_test import PrecisionTest, evaluate_squad

__all__ = ["EmF1Metric", "PrecisionTest", "accuracy", "continuation_logprobs", "evaluate_boolq",
           "evaluate_squad", "exact_match", "f1_score", "normalize_answer", "perplexity"]
