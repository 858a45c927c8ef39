"""The early-detection protocol.

A fraud team scores a user right after its k-th received rating, from what was known then. For a
user u and k >= 1, the prediction time t_{u,k} is the time of u's k-th received rating (edges sorted
by time; several ratings at the same second are all visible at t_{u,k}). Users with fewer than k
received ratings have no t_{u,k} and are left out at that k (the benchmark reports how many are kept).
Every example's features, neighbourhood and soft targets come from edges with time <= t_{u,k} only
(bundle.temporal). A single global cut-off date is not used: users who appear after it have no
history, and "no history" encodes join order, which on Bitcoin-OTC encodes the label.

Splits: per seed, a random stratified 50 / 25 / 25 % train / validation / test split of the labelled
users; the same split serves every k of that seed (a user is in one part at every k). Models train on
the training users at k = 1..TRAIN_KS (more prediction times of the same labelled users), select on
validation AUROC over the evaluated k, and are reported on test at each evaluated k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bundle.temporal import TemporalStore

EVAL_KS: tuple[int, ...] = (1, 3, 5, 10)
TRAIN_KS: tuple[int, ...] = tuple(range(1, 11))


def kth_received_time(store: TemporalStore, nodes: np.ndarray, k: int) -> np.ndarray:
    """Time of each node's k-th received edge, float64 [n]; nan when it received fewer than k."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    side = store.received
    start, end = side.indptr[nodes], side.indptr[nodes + 1]
    has = end - start >= k
    out = np.full(len(nodes), np.nan)
    out[has] = side.time[start[has] + k - 1]
    return out


@dataclass(frozen=True)
class Examples:
    """Prediction requests: node int64 [m], t float64 [m] (the as-of time), k int64 [m] and label
    int64 [m] (-1 where unknown)."""

    node: np.ndarray
    t: np.ndarray
    k: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return len(self.node)

    def subset(self, mask: np.ndarray) -> Examples:
        return Examples(self.node[mask], self.t[mask], self.k[mask], self.label[mask])


def early_examples(store: TemporalStore, nodes: np.ndarray, labels: np.ndarray, ks: tuple[int, ...]) -> Examples:
    """One example per (node, k) whose k-th received rating exists; labels int64 [N] over all nodes."""
    parts = []
    for k in ks:
        t = kth_received_time(store, nodes, k)
        keep = ~np.isnan(t)
        parts.append((nodes[keep], t[keep], np.full(int(keep.sum()), k), labels[nodes[keep]]))
    node, t, kk, y = (np.concatenate(c) for c in zip(*parts, strict=True))
    return Examples(node.astype(np.int64), t.astype(np.float64), kk.astype(np.int64), y.astype(np.int64))


@dataclass(frozen=True)
class Split:
    """Disjoint user sets (internal indices, int64, ascending)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def stratified_split(users: np.ndarray, labels: np.ndarray, seed: int) -> Split:
    """50 / 25 / 25 % of each class of `users` (labels [N] over all nodes), shuffled by `seed`."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for c in np.unique(labels[users]):
        members = rng.permutation(users[labels[users] == c])
        n_train, n_val = int(round(0.5 * len(members))), int(round(0.25 * len(members)))
        for i, chunk in enumerate(np.split(members, [n_train, n_train + n_val])):
            parts[i].append(chunk)
    train, val, test = (np.sort(np.concatenate(p)).astype(np.int64) for p in parts)
    return Split(train, val, test)
