"""Temporal datasets: time-stamped signed edges plus binary node labels.

Specs:
  `bitcoin-otc:PATH`  PATH is a folder with `otc_network.csv` (no header: source, target, rating,
                      unix time) and `otc_gt.csv` (no header: user id, +1 benign / -1 fraudulent);
                      fraudulent is the positive class 1.
  `temporal:PATH`     the generic layout: a folder with `edges.csv` (no header: source, target,
                      rating, time) and `labels.csv` (no header: node id, label 0 or 1, 1 positive).

Raw ids are mapped to internal indices 0..N-1 in sorted order. Raw ids follow the order of first
appearance, so they encode join order (the label, on Bitcoin-OTC): nothing downstream may use them
as a feature; they are kept only to name nodes in outputs.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bundle.temporal import TemporalStore
from distill.errors import DatasetError

LAYOUTS = {
    "bitcoin-otc": ("otc_network.csv", "otc_gt.csv", {"-1": 1, "+1": 0, "1": 0}),
    "temporal": ("edges.csv", "labels.csv", {"1": 1, "0": 0}),
}


@dataclass(frozen=True)
class TemporalDataset:
    """`store` over N internal nodes; `labels` int64 [N]: 1 positive, 0 negative, -1 unlabelled;
    `raw_ids` int64 [N] (names only, never features)."""

    name: str
    store: TemporalStore
    labels: np.ndarray
    raw_ids: np.ndarray

    @property
    def labelled(self) -> np.ndarray:
        """Internal indices of the labelled nodes, int64 [L], ascending."""
        return np.flatnonzero(self.labels >= 0).astype(np.int64)


def load_temporal(spec: str) -> TemporalDataset:
    """Parse `bitcoin-otc:PATH` or `temporal:PATH` (module docstring); DatasetError on any problem."""
    kind, sep, path = spec.partition(":")
    if not sep or kind not in LAYOUTS:
        raise DatasetError(f"temporal dataset spec {spec!r}: use one of {sorted(k + ':PATH' for k in LAYOUTS)}")
    edges_name, labels_name, label_map = LAYOUTS[kind]
    folder = Path(path)
    edges = _read_rows(folder / edges_name, 4)
    try:
        raw = np.array([[float(v) for v in row] for row in edges], dtype=np.float64).reshape(-1, 4)
    except ValueError as exc:
        raise DatasetError(f"{folder / edges_name}: non-numeric value ({exc}); "
                           "expected source,target,rating,time") from None
    label_rows = _read_rows(folder / labels_name, 2)
    ids = np.unique(np.r_[raw[:, 0], raw[:, 1]]).astype(np.int64)
    labels = np.full(len(ids), -1, dtype=np.int64)
    for node, value in label_rows:
        if value.strip() not in label_map:
            raise DatasetError(f"{folder / labels_name}: label {value!r} for node {node}; expected {sorted(label_map)}")
        pos = np.searchsorted(ids, int(float(node)))
        if pos >= len(ids) or ids[pos] != int(float(node)):
            raise DatasetError(f"{folder / labels_name}: node {node} has no edge in {edges_name}")
        labels[pos] = label_map[value.strip()]
    src, dst = np.searchsorted(ids, raw[:, 0].astype(np.int64)), np.searchsorted(ids, raw[:, 1].astype(np.int64))
    try:
        store = TemporalStore.from_arrays(src, dst, raw[:, 3], raw[:, 2], len(ids))
    except ValueError as exc:
        raise DatasetError(f"{folder / edges_name}: {exc}") from None
    return TemporalDataset(kind if kind != "temporal" else folder.name, store, labels, ids)


def _read_rows(path: Path, width: int) -> list[list[str]]:
    if not path.is_file():
        raise DatasetError(f"{path} not found; a temporal dataset folder needs it (see distill/temporal/data.py)")
    with path.open(newline="") as f:
        rows = [row for row in csv.reader(f) if row]
    bad = next((i for i, row in enumerate(rows) if len(row) != width), None)
    if bad is not None:
        raise DatasetError(f"{path}, row {bad + 1}: {len(rows[bad])} columns, expected {width}")
    if not rows:
        raise DatasetError(f"{path} is empty")
    return rows
