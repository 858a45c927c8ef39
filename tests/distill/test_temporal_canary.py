"""Leakage canaries: edges after t change no feature, block or prediction made as of t; the same
checks flag a deliberately leaky variant (blocks from the final graph), so they can fail."""

from __future__ import annotations

import numpy as np
import pytest

from bundle.temporal import TemporalPolicy, TemporalStore, node_features
from distill.temporal import canary
from distill.temporal.loop import predict
from distill.temporal.models import make_model

POLICY = TemporalPolicy(fanout=3, k_hops=2)


def random_store(seed: int = 0, nodes: int = 30, edges: int = 200) -> TemporalStore:
    rng = np.random.default_rng(seed)
    src, dst = rng.integers(0, nodes, edges), rng.integers(0, nodes, edges)
    keep = src != dst
    rating = rng.choice([-10, -3, 1, 5, 10], edges)
    return TemporalStore.from_arrays(src[keep], dst[keep], np.sort(rng.uniform(0, 1e7, edges))[keep],
                                     rating[keep], nodes)


def cases(store: TemporalStore) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nodes = np.arange(10, dtype=np.int64)
    times = np.quantile(store.time, np.linspace(0.2, 0.7, 10))
    return nodes, times, nodes % 2


def test_future_edges_change_no_feature_or_block() -> None:
    store = random_store()
    raters = canary.flaggers(store, 8)
    for v, t, y in zip(*cases(store), strict=True):
        planted = canary.plant_future(store, int(v), float(t), int(y), raters)
        assert len(planted.src) > len(store.src)
        np.testing.assert_array_equal(node_features(planted, np.arange(30), t), node_features(store, np.arange(30), t))
        strict = canary.strict_block(POLICY)
        assert canary.block_change(strict(store, int(v), float(t)), strict(planted, int(v), float(t))) == 0.0


def test_leaky_block_is_flagged_by_the_same_check() -> None:
    store = random_store()
    raters = canary.flaggers(store, 8)
    leaky = canary.final_graph_block(POLICY)
    changes = []
    for v, t, y in zip(*cases(store), strict=True):
        planted = canary.plant_future(store, int(v), float(t), int(y), raters)
        changes.append(canary.block_change(leaky(store, int(v), float(t)), leaky(planted, int(v), float(t))))
    assert min(changes) > 0


@pytest.mark.parametrize("kind", ["student", "teacher", "baseline"])
def test_predictions_as_of_t_ignore_future_edges_and_leaky_ones_do_not(kind: str) -> None:
    store = random_store(1)
    model = make_model(kind, 0)
    raters = canary.flaggers(store, 8)

    def run(blocks: object) -> np.ndarray:
        return predict(model, blocks)  # type: ignore[arg-type]

    nodes, times, labels = cases(store)
    strict = canary.max_prediction_change(store, nodes, times, labels, raters, canary.strict_block(POLICY), run)
    leaky = canary.max_prediction_change(store, nodes, times, labels, raters, canary.final_graph_block(POLICY), run)
    assert strict == 0.0
    assert leaky > 1e-4
