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
