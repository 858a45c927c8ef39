"""Test-set metrics in numpy: accuracy, macro-F1, AUROC and PR-AUC (binary: the positive class;
multi-class: one-vs-rest macro), per-class recall, and for binary tasks the recall at 1 % false
positives (what a fraud team can afford to review)."""

from __future__ import annotations

import numpy as np


def evaluate(probs: np.ndarray, y: np.ndarray) -> dict[str, object]:
    """probs [N, C] (rows sum to 1), y [N] int -> metrics dict (floats, and a list for recall)."""
    pred = probs.argmax(axis=1)
    num_classes = probs.shape[1]
    recall = [float((pred[y == c] == c).mean()) if (y == c).any() else float("nan") for c in range(num_classes)]
    return {
        "accuracy": float((pred == y).mean()),
        "macro_f1": macro_f1(pred, y, num_classes),
        "auroc": auroc(probs, y),
        "pr_auc": pr_auc(probs, y),
        "recall_at_1pct_fpr": recall_at_fpr(probs[:, 1], y == 1, 0.01) if num_classes == 2 else None,
        "per_class_recall": recall,
    }


def macro_f1(pred: np.ndarray, y: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in `y` or `pred`."""
    scores = []
    for c in range(num_classes):
        tp = np.sum((pred == c) & (y == c))
        fp = np.sum((pred == c) & (y != c))
        fn = np.sum((pred != c) & (y == c))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def auroc(probs: np.ndarray, y: np.ndarray) -> float:
    """Binary: AUROC of the positive class. Multi-class: one-vs-rest macro average."""
    if probs.shape[1] == 2:
        return binary_auroc(probs[:, 1], y == 1)
    per_class = [binary_auroc(probs[:, c], y == c) for c in range(probs.shape[1]) if 0 < (y == c).sum() < len(y)]
    return float(np.mean(per_class))


def binary_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney U statistic with average ranks for ties; nan when one class is absent."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    _, inverse, counts = np.unique(scores[order], return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = np.empty(len(scores))
    ranks[order] = average_rank[inverse]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def pr_auc(probs: np.ndarray, y: np.ndarray) -> float:
    """Average precision: binary, of the positive class; multi-class, one-vs-rest macro average."""
    if probs.shape[1] == 2:
        return average_precision(probs[:, 1], y == 1)
    per_class = [average_precision(probs[:, c], y == c) for c in range(probs.shape[1]) if (y == c).any()]
    return float(np.mean(per_class)) if per_class else float("nan")


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds, highest first (as scikit-learn);
    nan without positives."""
    n_pos = int(positive.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, hits = scores[order], positive[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct threshold
    tp = np.cumsum(hits)[last]
    precision = tp / (last + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def recall_at_fpr(scores: np.ndarray, positive: np.ndarray, fpr: float) -> float:
    """Share of positives scored above the threshold that lets at most `fpr` of the negatives through
    (ties at the threshold count as not flagged); nan when a class is absent."""
    neg = np.sort(scores[~positive])[::-1]
    if not len(neg) or not positive.any():
        return float("nan")
    allowed = int(np.floor(fpr * len(neg)))
    threshold = neg[allowed] if allowed < len(neg) else -np.inf
    return float((scores[positive] > threshold).mean())
