"""Tiny on-disk datasets in the real formats, written into a temp dir by the tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import scipy.sparse as sp


def write_planetoid(root: Path, name: str = "tiny") -> Path:
    """A 520-node Planetoid layout: 4 train (x/y), 510 'all' (allx/ally), 10 test nodes (tx/ty) at 510..519.

    The public split puts 500 validation nodes right after the training nodes, hence the size.
    """
    rng = np.random.default_rng(0)
    raw = root / "raw"
    raw.mkdir(parents=True)
    n, n_all = 520, 510
    feats = (rng.random((n, 5)) > 0.5).astype(np.float32)
    labels = np.eye(3)[np.arange(n) % 3]
    graph = {i: [(i + 1) % n, (i + 5) % n] for i in range(n)}
    parts = {
        "x": sp.csr_matrix(feats[:4]), "y": labels[:4], "allx": sp.csr_matrix(feats[:n_all]), "ally": labels[:n_all],
        "tx": sp.csr_matrix(feats[n_all:]), "ty": labels[n_all:], "graph": graph,
    }
    for part, value in parts.items():
        with open(raw / f"ind.{name}.{part}", "wb") as fh:
            pickle.dump(value, fh)
    (raw / f"ind.{name}.test.index").write_text("\n".join(str(i) for i in range(n_all, n)) + "\n")
    return root


def write_npz(path: Path, splits: int = 2, **override: np.ndarray) -> Path:
    """A 10-node npz in the heterophilous-graphs layout, with each undirected edge once."""
    n = 10
    arrays = {
        "node_features": np.arange(n * 3, dtype=np.float32).reshape(n, 3),
        "node_labels": np.array([0, 1] * 5, dtype=np.int64),
        "edges": np.array([[i, (i + 1) % n] for i in range(n)], dtype=np.int64),
        "train_masks": np.tile(np.arange(n) < 5, (splits, 1)),
        "val_masks": np.tile((np.arange(n) >= 5) & (np.arange(n) < 7), (splits, 1)),
        "test_masks": np.tile(np.arange(n) >= 7, (splits, 1)),
    }
    arrays.update(override)
    np.savez(path, **arrays)
    return path


def write_mat(path: Path, n: int = 50, positives: int = 5, **override: object) -> Path:
    """An n-node ring in the graph-anomaly-detection MATLAB layout (sparse column-major arrays, as
    scipy writes and reads them), the first `positives` nodes labelled 1."""
    import scipy.io

    rows = np.arange(n)
    net = sp.csc_matrix((np.ones(n), (rows, (rows + 1) % n)), shape=(n, n))
    arrays: dict[str, object] = {
        "Network": net + net.T, "Attributes": sp.csc_matrix(np.arange(n * 3, dtype=float).reshape(n, 3)),
        "Label": (np.arange(n) < positives).astype(np.uint8).reshape(n, 1)}
    arrays.update(override)
    scipy.io.savemat(path, arrays)
    return path
