"""Metric arithmetic on hand-checked examples."""

import pytest

from sentiray.evaluate import metrics

LABELS = ("positive", "neutral", "negative")


def test_classification_counts_and_f1():
    golds = ["positive", "positive", "neutral", "negative", "negative", "negative"]
    preds = ["positive", "neutral", "neutral", "negative", None, "positive"]
    m = metrics.classification(golds, preds, LABELS)
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["unparseable"] == 1
    # per class F1: pos P=1/2 R=1/2 -> .5; neu P=1/2 R=1 -> 2/3; neg P=1 R=1/3 -> .5
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert m["weighted_f1"] == pytest.approx((2 * 0.5 + 1 * 2 / 3 + 3 * 0.5) / 6)
    assert m["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]  # the unparseable one is in no column
    with pytest.raises(ValueError, match="2 gold labels but 1 predictions"):
        metrics.classification(["a", "b"], ["a"], LABELS)


def test_reasoning_metrics():
    ref = "the text says great and the image shows a sun so it is positive"
    same = metrics.reasoning([ref], [ref])
    assert same["bleu4"] == pytest.approx(100.0)
    assert same["rouge_l"] == pytest.approx(1.0)
    other = metrics.reasoning(["a storm cloud means negative"], [ref])
    assert other["bleu4"] < 10 and other["rouge_l"] < 0.3
    assert metrics.distinct_n(["a b a b"], 1) == pytest.approx(2 / 4)
    assert metrics.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert metrics.distinct_n([""], 2) == 0.0
