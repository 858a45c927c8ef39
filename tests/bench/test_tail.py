"""bench/tail.py: each rule is applied to the saved distilled logits against the same seed's scratch."""

from pathlib import Path

import numpy as np
import pytest

from tests.bench.scripts import load


def _bench():
    return load("tail")


def _save(path: Path, seed: int) -> None:
    """Classes at 60 / 32 / 8 %; the distilled logits under-call the rare class 2 more than scratch's."""
    rng = np.random.default_rng(seed)
    n = 900
    u = rng.random(n)
    y = (u > 0.6).astype(np.int64) + (u > 0.92)
    base = np.eye(3, dtype=np.float32)[y] * 1.5 + rng.normal(0, 0.8, (n, 3)).astype(np.float32)
    scratch, response = base.copy(), base + np.float32(0.2)
    response[:, 2] -= 0.9
    split = rng.permutation(n) % 3
    np.savez(path, y=y, train=split == 0, val=split == 1, test=split == 2, scratch=scratch, response=response)


def test_rules_on_saved_logits(tmp_path):
    tail = _bench()
    for seed in range(3):
        _save(tmp_path / f"toy-auto-seed{seed}.npz", seed)
    _save(tmp_path / "toy-mlp-seed0.npz", 7)
    text, recalls = tail.table(sorted(tmp_path.glob("*.npz")))
    assert "#### toy-auto (3 seeds, test set; rarest class 2)" in text and "#### toy-mlp (1 seeds" in text
    r = {rule: np.mean(v) for rule, v in recalls["toy-auto"].items()}
    assert r["none"] < r["scratch"]  # the distilled student gives the rare class away
    assert r["shift, recall floor"] >= r["none"]  # a shift only adds calls of the rare class
    assert r["shift, recall + share floors"] > r["none"]
    measured = tail.measure(tmp_path / "toy-auto-seed0.npz")
    assert set(measured) == {"scratch", "ranking", *tail.RULES}
    # The toy's distilled logits differ from scratch's by a per-class shift: the same ranking of class 2.
    ranks = measured["ranking"]
    assert ranks["distilled test"] == pytest.approx(ranks["scratch test"]) and 0.5 < ranks["scratch test"] < 1.0
    assert "One-vs-rest AUROC of class 2 (no shift changes it), validation / test: scratch" in text
    assert measured["none"]["macro_f1"] == pytest.approx(_macro_f1_of_response(tmp_path / "toy-auto-seed0.npz"))


def _macro_f1_of_response(path: Path) -> float:
    from distill.metrics import macro_f1

    f = np.load(path)
    t = f["test"]
    return macro_f1(f["response"][t].argmax(1), f["y"][t], 3)


def test_runs_from_two_folders_stay_apart(tmp_path):
    tail = _bench()
    for folder in ("deep", "default"):
        (tmp_path / folder).mkdir()
        _save(tmp_path / folder / "toy-auto-seed0.npz", 0)
    text, recalls = tail.table(sorted(tmp_path.glob("*/*.npz")))
    assert set(recalls) == {"deep/toy-auto", "default/toy-auto"}
    assert "#### deep/toy-auto (1 seeds" in text
