"""The binary decision threshold: chosen on validation from the served probabilities (never on test),
maximising the positive class's F1; its rates on validation and test; recorded in report and manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bundle.files import open_bundle
from distill import served
from distill.data import load_dataset
from distill.served import choose_decision, max_f1_threshold, rates_at


def write_binary_npz(path: Path, n: int = 240, seed: int = 0) -> Path:
    """A fraud-like binary graph in the npz layout: ~20 % positives, a weak feature signal and half the
    edges inside the class, one 40 / 20 / 40 % train / validation / test split."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(np.int64)
    x = (rng.normal(size=(n, 6)) + 0.5 * y[:, None]).astype(np.float32)
    src = rng.integers(0, n, size=4 * n)
    dst = np.array([rng.choice(np.flatnonzero(y == y[s])) if rng.random() < 0.5 else rng.integers(0, n)
                    for s in src])
    edges = np.stack([src, dst], axis=1).astype(np.int64)
    order = rng.permutation(n)
    masks = {k: np.zeros((1, n), dtype=bool) for k in ("train", "val", "test")}
    for name, (lo, hi) in {"train": (0, 2 * n // 5), "val": (2 * n // 5, 3 * n // 5), "test": (3 * n // 5, n)}.items():
        masks[name][0, order[lo:hi]] = True
    np.savez(path, node_features=x, node_labels=y, edges=edges[edges[:, 0] != edges[:, 1]],
             **{f"{k}_masks": v for k, v in masks.items()})
    return path


def build_binary(root: Path) -> tuple[Path, str]:
    """A tiny binary bundle through the real job -> (bundle path, dataset spec)."""
    import torch

    from distill import pipeline
    from distill.config import RunConfig

    spec = f"npz:{write_binary_npz(root / 'fraud.npz')}"
    cfg = RunConfig(dataset=spec, teacher_layers=2, teacher_hidden=16, epochs=30, patience=10, student="gcn", seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only fight over a shared CPU
    try:
        pipeline.run(cfg, root / "bundle", progress=False)
    finally:
        torch.set_num_threads(threads)
    return root / "bundle", spec


def test_max_f1_threshold_picks_the_best_cut_midway_between_scores() -> None:
    # Cuts flag the top 1..6: F1 = 2 TP / (flagged + 3) = .5 .8 .667 .857 .75 .667 -> top 4, between .4 and .3.
    scores = np.array([0.9, 0.8, 0.7, 0.4, 0.3, 0.1], dtype=np.float32)
    assert max_f1_threshold(scores, np.array([1, 1, 0, 1, 0, 0], dtype=bool)) == 0.35
    # Equal scores are one cut; flagging everything cuts halfway to 0.
    assert max_f1_threshold(np.array([0.6, 0.6, 0.2]), np.array([1, 0, 0], dtype=bool)) == 0.4
    assert max_f1_threshold(np.array([0.9, 0.5, 0.1]), np.array([1, 0, 1], dtype=bool)) == 0.05
    # A tie in F1 (2/3 flagging 1 or all 4) goes to the higher threshold: fewer nodes flagged.
    assert max_f1_threshold(np.array([0.8, 0.6, 0.4, 0.2]), np.array([1, 0, 0, 1], dtype=bool)) == 0.7
    assert max_f1_threshold(np.array([0.8, 0.6]), np.array([0, 0], dtype=bool)) is None


def test_rates_use_the_service_rule_score_at_least_threshold() -> None:
    probs = np.array([[0.1, 0.9], [0.65, 0.35], [0.7, 0.3], [0.8, 0.2]], dtype=np.float32)
    y = np.array([1, 0, 1, 0])
    # float64 comparison: float32(0.35) = 0.3499999940... is below the threshold 0.35 as written.
    assert rates_at(probs, y, 0.35) == {"precision": 1.0, "recall": 0.5, "f1": 0.666667}
    assert rates_at(probs, y, 0.3) == {"precision": 0.666667, "recall": 1.0, "f1": 0.8}
    assert rates_at(probs, y, 0.95) == {"precision": None, "recall": 0.0, "f1": 0.0}
    assert rates_at(probs, np.zeros(4, dtype=np.int64), 0.95) == {"precision": None, "recall": None, "f1": None}


def test_multi_class_tasks_get_no_threshold() -> None:
    scores = served.ServedScores(np.arange(3), np.zeros((3, 3), np.float32), np.full((3, 3), 1 / 3, np.float32))
    masks = np.array([True, True, False]), np.array([False, False, True])
    assert choose_decision(scores, np.array([0, 1, 2]), *masks, ["a", "b", "c"]) is None


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return build_binary(tmp_path_factory.mktemp("binary"))


def test_the_threshold_is_chosen_on_validation_never_on_test(binary: tuple[Path, str]) -> None:
    path, spec = binary
    manifest = open_bundle(path).manifest
    data = load_dataset(spec).data
    y, val, test = data.y.numpy(), data.val_mask.numpy(), data.test_mask.numpy()
    service = served.open_served(path)
    scores = served.score(service, np.flatnonzero(val | test))
    names = manifest.dataset.class_names
    chosen = choose_decision(scores, y, val, test, names)
    assert chosen is not None and chosen == manifest.decision  # the job recorded exactly this choice
    report = json.loads((path / "report.json").read_text())
    assert report["decision"] == chosen.model_dump(mode="json") and "decision" not in report["distilled"]
    assert f">= {chosen.threshold:g}" in (path / "report.md").read_text()

    flipped_test = np.where(test, 1 - y, y)  # every test label wrong: the choice must not move
    on_test = choose_decision(scores, flipped_test, val, test, names)
    assert on_test is not None
    assert on_test.threshold == chosen.threshold and on_test.val_f1 == chosen.val_f1
    assert (on_test.test_precision, on_test.test_recall) != (chosen.test_precision, chosen.test_recall)

    flipped_val = np.where(val, 1 - y, y)  # every validation label wrong: it must
    on_val = choose_decision(scores, flipped_val, val, test, names)
    assert on_val is not None and on_val.threshold != chosen.threshold

    # The recorded rates are the service's decisions at the stored threshold, on each split.
    rows = np.flatnonzero(test[scores.nodes])
    assert rates_at(scores.probabilities[rows], y[scores.nodes[rows]], chosen.threshold) == {
        "precision": chosen.test_precision, "recall": chosen.test_recall, "f1": chosen.test_f1}
