"""The synthetic generator: deterministic per seed, every key validated, the classes and split it promises."""

import numpy as np
import pytest

from distill.errors import DatasetError
from distill.synthetic import VAL_SHARE, SyntheticConfig, generate


def test_same_seed_same_graph_other_seed_other_graph():
    a, b = generate(SyntheticConfig(nodes=400, seed=5)), generate(SyntheticConfig(nodes=400, seed=5))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = generate(SyntheticConfig(nodes=400, seed=6))
    assert not np.array_equal(a["x"], c["x"])


def test_default_is_imbalanced_homophilous_and_sparsely_labelled():
    g = generate(SyntheticConfig())
    y, (src, dst) = g["y"], g["edge_index"]
    shares = np.bincount(y) / len(y)
    assert shares[2] < 0.1 < shares[1] < shares[0]  # fraud is the rare class
    assert (y[src] == y[dst]).mean() > 0.85  # the class is what neighbours share ...
    # ... while a node's own features alone, even against the true class centroids, do worse than
    # always answering legit: the class has to come from the neighbourhood.
    centroids = np.stack([g["x"][y == c].mean(0) for c in range(3)])
    nearest = ((g["x"][:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == y).mean() < shares[0]
    assert g["train"].mean() == pytest.approx(0.04, abs=0.01)


@pytest.mark.parametrize("share", [0.04, 0.4])
def test_split_is_stratified_disjoint_and_covers_every_node(share):
    g = generate(SyntheticConfig(nodes=1000, train_share=share))
    masks = g["train"].astype(int) + g["val"].astype(int) + g["test"].astype(int)
    assert np.all(masks == 1)
    for c in range(3):
        members = g["y"] == c
        assert g["train"][members].mean() == pytest.approx(share, abs=0.02)
        assert g["val"][members].mean() == pytest.approx(VAL_SHARE, abs=0.02)


def test_a_tiny_graph_still_labels_every_class():
    g = generate(SyntheticConfig(nodes=20, train_share=0.01))
    assert set(g["y"][g["train"]]) == {0, 1, 2}


def test_train_share_parses_and_is_range_checked():
    assert SyntheticConfig.parse("train_share=0.3,seed=2") == SyntheticConfig(train_share=0.3, seed=2)
    for bad in ("train_share=0", "train_share=0.75"):
        with pytest.raises(DatasetError, match="train_share"):
            SyntheticConfig.parse(bad)
