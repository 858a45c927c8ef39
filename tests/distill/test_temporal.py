"""Temporal protocol and loader: k-th received rating times, users left out, splits, the real file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bundle.temporal import TemporalStore
from distill.errors import DatasetError
from distill.temporal.data import load_temporal
from distill.temporal.loop import LoopConfig, TrainSet, _loss
from distill.temporal.protocol import early_examples, kth_received_time, stratified_split
from tests.conftest import require_dataset


def store() -> TemporalStore:
    # node 1 receives at 10, 20, 20, 30; node 2 at 5; node 0 and 3 receive nothing
    return TemporalStore.from_arrays([0, 2, 3, 0, 1], [1, 1, 1, 1, 2], [10.0, 20.0, 20.0, 30.0, 5.0],
                                     [1, 2, 3, 4, 5], 4)


def test_kth_received_time_and_dropped_users() -> None:
    s = store()
    nodes = np.array([0, 1, 2, 3])
    np.testing.assert_array_equal(kth_received_time(s, nodes, 1), [np.nan, 10.0, 5.0, np.nan])
    np.testing.assert_array_equal(kth_received_time(s, nodes, 3), [np.nan, 20.0, np.nan, np.nan])
    labels = np.array([0, 1, 0, -1])
    ex = early_examples(s, nodes, labels, (1, 3, 5))
    assert list(zip(ex.node.tolist(), ex.k.tolist(), ex.t.tolist(), ex.label.tolist(), strict=True)) == [
        (1, 1, 10.0, 1), (2, 1, 5.0, 0), (1, 3, 20.0, 1)]  # k = 5: nobody left


def test_split_is_stratified_disjoint_and_seeded() -> None:
    labels = np.r_[np.ones(40, np.int64), np.zeros(20, np.int64), -np.ones(10, np.int64)]
    users = np.flatnonzero(labels >= 0)
    a, b = stratified_split(users, labels, 0), stratified_split(users, labels, 0)
    assert all(np.array_equal(x, y) for x, y in zip((a.train, a.val, a.test), (b.train, b.val, b.test), strict=True))
    assert (labels[a.train] == 1).sum() == 20 and (labels[a.val] == 1).sum() == 10 and (labels[a.test] == 0).sum() == 5
    assert len(np.intersect1d(a.train, a.val)) == len(np.intersect1d(a.val, a.test)) == 0
    assert len(np.r_[a.train, a.val, a.test]) == 60
    assert not np.array_equal(stratified_split(users, labels, 1).test, a.test)


def test_distillation_loss_golden() -> None:
    logits = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    data = TrainSet([], np.array([1, -1]), np.array([[0.25, 0.75], [0.5, 0.5]], np.float32))
    loss = _loss(logits, data, np.array([0, 1]), LoopConfig(kd_weight=1.0, temperature=1.0))
    ce = np.log1p(np.exp(-1.0))
    p0, p1 = 1 / (1 + np.e), 1 / (1 + np.exp(-2.0))
    kl0 = 0.25 * np.log(0.25 / p0) + 0.75 * np.log(0.75 / (1 - p0))
    kl1 = 0.5 * np.log(0.5 / p1) + 0.5 * np.log(0.5 / (1 - p1))
    assert float(loss) == pytest.approx(ce + (kl0 + kl1) / 2, abs=1e-6)


def test_generic_layout_and_bad_specs(tmp_path: Path) -> None:
    (tmp_path / "edges.csv").write_text("7,9,3,100.5\n9,7,-2,200\n")
    (tmp_path / "labels.csv").write_text("9,1\n")
    data = load_temporal(f"temporal:{tmp_path}")
    assert data.raw_ids.tolist() == [7, 9] and data.labels.tolist() == [-1, 1]
    assert data.store.src.tolist() == [0, 1] and data.store.time.tolist() == [100.5, 200.0]
    with pytest.raises(DatasetError, match="bitcoin-otc:PATH"):
        load_temporal(f"csv:{tmp_path}")
    with pytest.raises(DatasetError, match="otc_network.csv not found"):
        load_temporal(f"bitcoin-otc:{tmp_path}")
    (tmp_path / "labels.csv").write_text("9,2\n")
    with pytest.raises(DatasetError, match="label '2'"):
        load_temporal(f"temporal:{tmp_path}")
    (tmp_path / "labels.csv").write_text("8,1\n")
    with pytest.raises(DatasetError, match="node 8 has no edge"):
        load_temporal(f"temporal:{tmp_path}")


def test_bitcoin_otc_loader_on_the_real_file() -> None:
    data = load_temporal(f"bitcoin-otc:{require_dataset('bitcoin-otc')}")
    assert data.store.num_nodes == 5881 and len(data.store.src) == 35592
    assert len(data.labelled) == 316 and int((data.labels == 1).sum()) == 180
    assert (np.diff(data.store.time) >= 0).all()  # the file is sorted by time
    assert int((data.store.rating < 0).sum()) == 3563
