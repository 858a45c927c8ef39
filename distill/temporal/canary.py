"""Leakage canaries: a prediction made as of t must not move when edges after t are added.

`plant_future` adds label-revealing edges just after t (rating -10 to a positive node, +10 to a
negative one, from the given raters, t + 1 s, t + 2 s, ...). `max_prediction_change` rebuilds each
example's block from the planted store with the same `block_fn` and reports the largest change of the
predicted probability: 0 for a strict pipeline. `final_graph_block` is the deliberately leaky variant
(the block as of the store's last edge, whatever t is asked): the same check must flag it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from bundle.temporal import TemporalBlock, TemporalPolicy, TemporalStore, block

BlockFn = Callable[[TemporalStore, int, float], TemporalBlock]
PredictFn = Callable[[Sequence[TemporalBlock]], np.ndarray]


def strict_block(policy: TemporalPolicy) -> BlockFn:
    return lambda store, node, t: block(store, node, t, policy)


def final_graph_block(policy: TemporalPolicy) -> BlockFn:
    """Leaky on purpose: ignores t and reads the final graph (ages measured from its last edge)."""
    return lambda store, node, t: block(store, node, float(store.time.max()), policy)


def plant_future(store: TemporalStore, node: int, t: float, label: int, raters: np.ndarray) -> TemporalStore:
    """`store` plus one edge from each rater to `node` at t + 1, t + 2, ... seconds, rating -10 when
    label is 1 (positive) else +10."""
    raters = raters[raters != node]
    times = t + 1.0 + np.arange(len(raters), dtype=np.float64)
    rating = np.full(len(raters), -10.0 if label == 1 else 10.0)
    return store.extended(raters, np.full(len(raters), node), times, rating)


def max_prediction_change(store: TemporalStore, nodes: np.ndarray, times: np.ndarray, labels: np.ndarray,
                          raters: np.ndarray, block_fn: BlockFn, predict: PredictFn) -> float:
    """max |p(as of t, store) - p(as of t, store + planted future edges)| over the examples (one
    planted store per example, so no example's future is another's past)."""
    before = predict([block_fn(store, int(v), float(t)) for v, t in zip(nodes, times, strict=True)])
    after_blocks = [block_fn(plant_future(store, int(v), float(t), int(y), raters), int(v), float(t))
                    for v, t, y in zip(nodes, times, labels, strict=True)]
    after = predict(after_blocks)
    return float(np.max(np.abs(before - after))) if len(before) else 0.0


def block_change(a: TemporalBlock, b: TemporalBlock) -> float:
    """Largest difference between two blocks (inf when their nodes or edges differ)."""
    if not np.array_equal(a.nodes, b.nodes) or not np.array_equal(a.edge_from, b.edge_from) \
            or not np.array_equal(a.edge_to, b.edge_to) or not np.array_equal(a.edge_rating, b.edge_rating):
        return float("inf")
    return float(max(np.abs(a.x - b.x).max(initial=0.0), np.abs(a.edge_age_days - b.edge_age_days).max(initial=0.0)))


def flaggers(store: TemporalStore, count: int) -> np.ndarray:
    """The `count` nodes that gave the most negative ratings overall (label-revealing raters)."""
    negatives = np.bincount(store.src[store.rating < 0], minlength=store.num_nodes)
    return np.argsort(-negatives, kind="stable")[:count].astype(np.int64)
