import numpy as np
import pytest

from distill.metrics import binary_auroc, evaluate, macro_f1


def test_binary_auroc_with_ties():
    # positives 0.8, 0.5; negatives 0.5, 0.1 -> pairs: (0.8>0.5) (0.8>0.1) (0.5=0.5 -> 1/2) (0.5>0.1) = 3.5/4
    scores = np.array([0.8, 0.5, 0.5, 0.1])
    assert binary_auroc(scores, np.array([True, True, False, False])) == pytest.approx(0.875)


def test_binary_auroc_single_class_is_nan():
    assert np.isnan(binary_auroc(np.array([0.1, 0.2]), np.array([True, True])))


def test_macro_f1_and_recall():
    y = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0])
    # class 0: tp1 fp1 fn1 -> 0.5; class 1: tp2 fp1 fn0 -> 0.8; class 2: tp0 fp0 fn1 -> 0
    assert macro_f1(pred, y, 3) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    probs = np.eye(3)[pred] * 0.9 + 0.1 / 3
    m = evaluate(probs, y)
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["per_class_recall"] == pytest.approx([0.5, 1.0, 0.0])


def test_multiclass_auroc_is_ovr_macro():
    y = np.array([0, 1, 2, 0, 1, 2])
    probs = np.eye(3)[y] * 0.7 + 0.1  # perfectly ranked
    assert evaluate(probs, y)["auroc"] == pytest.approx(1.0)


def test_average_precision_golden_with_and_without_ties():
    from distill.metrics import average_precision

    # thresholds 0.9 (P 1, R .5), 0.8 (P .5, R .5), 0.7 (P 2/3, R 1), 0.6: AP = .5 * 1 + .5 * 2/3
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([True, False, True, False])) == \
        pytest.approx(0.5 + 0.5 * 2 / 3)
    # a tie is one threshold: 0.9 (P 1, R .5), 0.5 (P 2/3, R 1)
    assert average_precision(np.array([0.9, 0.5, 0.5]), np.array([True, True, False])) == pytest.approx(0.5 + 1 / 3)
    assert np.isnan(average_precision(np.array([0.1]), np.array([False])))


def test_recall_at_one_percent_false_positives():
    from distill.metrics import recall_at_fpr

    negatives = np.arange(100) / 100  # 0.00 .. 0.99: 1 % may pass, so the threshold is 0.98
    scores = np.r_[negatives, [0.995, 0.985, 0.5]]
    positive = np.r_[np.zeros(100, dtype=bool), np.ones(3, dtype=bool)]
    assert recall_at_fpr(scores, positive, 0.01) == pytest.approx(2 / 3)
    m = evaluate(np.stack([1 - scores, scores], 1), positive.astype(int))
    assert m["recall_at_1pct_fpr"] == pytest.approx(2 / 3) and 0 < m["pr_auc"] <= 1
    assert evaluate(np.eye(3)[[0, 1, 2]], np.array([0, 1, 2]))["recall_at_1pct_fpr"] is None
