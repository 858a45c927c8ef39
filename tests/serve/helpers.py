"""Small builders shared by the serve tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from serve.bundle import Bundle, load
from serve.graph import BlockCache, GraphStore
from serve.model import Model
from serve.scoring import Scorer


def scorer_for(path: Path, pack_nodes: int = 256, budget: int = 1 << 30) -> Scorer:
    bundle = load(path)
    store = GraphStore(bundle)
    cache = BlockCache(store, budget)
    return Scorer(store, cache, Model(bundle, 1), pack_nodes)


def csr_bundle(indptr: list[int], indices: list[int], weights: list[float], node_ids: list[int] | None = None,
               propagation: str = "gcn", fanout: int = 2, k_hops: int = 2, seed: int = 0,
               num_features: int = 2) -> Bundle:
    """An in-memory bundle around a hand-written CSR (no files, no model)."""
    n = len(indptr) - 1
    arrays: dict[str, Any] = {
        "features": np.arange(n * num_features, dtype=np.float32).reshape(n, num_features),
        "node_ids": np.asarray(node_ids if node_ids is not None else range(n), dtype=np.int64),
        "indptr": np.asarray(indptr, dtype=np.int64),
        "indices": np.asarray(indices, dtype=np.int64),
        "weights": np.asarray(weights, dtype=np.float32),
    }
    manifest = {"policy": {"fanout": fanout, "k_hops": k_hops, "seed": seed, "propagation": propagation}}
    return Bundle(Path("/nonexistent"), manifest, arrays)
