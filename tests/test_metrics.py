"""SQuAD EM/F1 and accuracy, with values worked out by hand."""
import pytest

from golden_ptq.eval.metrics import EmF1Metric, accuracy, exact_match, f1_score, normalize_answer


@pytest.mark.parametrize("raw, normalized", [
    ("The  Eiffel-Tower!", "eiffeltower"),      # punctuation removed, not split on
    ("An apple, a day.", "apple day"),          # articles a/an dropped
    ("theater and THEM", "theater and them"),   # only whole-word articles
    ("  Hello\tworld\n", "hello world"),        # whitespace collapsed
    ("the", ""),
])
def test_normalize_answer(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_exact_match_and_f1_by_hand():
    assert exact_match("The Eiffel Tower.", "eiffel tower") == 1.0
    assert exact_match("Eiffel", "Eiffel Tower") == 0.0
    # pred -> [cat, sat, on, mat], gold -> [cat, on, mat]: P = 3/4, R = 1, F1 = 6/7
    assert f1_score("the cat sat on the mat", "cat on mat") == pytest.approx(6 / 7)
    # repeated tokens count once per occurrence: [yes, yes] vs [yes]: P = 1/2, R = 1
    assert f1_score("yes yes", "yes") == pytest.approx(2 / 3)
    assert f1_score("London", "Paris") == 0.0
    assert f1_score("the", "a") == 0.0  # both empty after normalization: 0, as in SQuAD v1.1


def test_emf1_metric_over_batches_with_multiple_golds():
    metric = EmF1Metric()
    metric.update(["Paris", "in France"], [["Paris", "Paris, France"], "France"])
    metric.update(["100 degrees Celsius", "London"], [["100 degrees"], ["Paris"]])
    result = metric.eval()
    # EM: 1, 0, 0, 0 -> 25 %. F1: 1, 2/3, 0.8 (P 2/3, R 1), 0 -> 61.67 %
    assert result["count"] == 4
    assert result["em"] == pytest.approx(25.0)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0.8) / 4)


def test_emf1_takes_best_gold_and_clear_resets():
    metric = EmF1Metric()
    metric.update(["Paris France"], [["Paris", "Paris, France"]])
    assert metric.eval() == {"em": 100.0, "f1": 100.0, "count": 1}
    metric.clear()
    assert metric.eval() == {"em": 0.0, "f1": 0.0, "count": 0}
    metric.update("the answer", "answer")  # single strings are accepted too
    assert metric.eval()["em"] == 100.0


def test_emf1_rejects_mismatched_or_empty_labels():
    metric = EmF1Metric()
    with pytest.raises(ValueError, match="2 predictions but 1 labels"):
        metric.update(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="at least one gold"):
        metric.update(["a"], [[]])


def test_accuracy():
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    assert accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        accuracy([1], [1, 0])
