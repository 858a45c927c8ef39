"""Small builders shared by the serve tests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from bundle.files import GraphArrays
from bundle.manifest import Policy
from bundle.policy import CSR
from serve.bundle import load
from serve.graph import BlockCache, GraphStore
from serve.model import Model
from serve.scoring import Scorer
from serve.settings import Settings


def scorer_for(path: Path, pack_nodes: int = 256, budget: int = 1 << 30) -> Scorer:
    bundle = load(path)
    store = GraphStore(bundle.graph, bundle.policy)
    cache = BlockCache(store, budget)
    return Scorer(store, cache, Model(bundle, 1), pack_nodes)


def csr_store(indptr: list[int], indices: list[int], weights: list[float], node_ids: list[int] | None = None,
              propagation: str = "gcn", fanout: int = 2, k_hops: int = 2, seed: int = 0,
              num_features: int = 2) -> GraphStore:
    """A graph store around a hand-written CSR (no files, no model)."""
    n = len(indptr) - 1
    graph = GraphArrays(np.arange(n * num_features, dtype=np.float32).reshape(n, num_features),
                        np.asarray(node_ids if node_ids is not None else range(n), dtype=np.int64),
                        CSR(np.asarray(indptr, dtype=np.int64), np.asarray(indices, dtype=np.int64),
                            np.asarray(weights, dtype=np.float32)))
    policy = Policy(fanout=fanout, k_hops=k_hops, propagation=propagation, seed=seed)  # type: ignore[arg-type]
    return GraphStore(graph, policy)


def wait_ready(client: Any, timeout: float = 30.0) -> None:
    """Poll /readyz until 200 (the bundle loads in the lifespan's thread); fail with its body after `timeout` s."""
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").text
        time.sleep(0.02)


def ready_client(bundle: Any) -> Iterator[TestClient]:
    """A TestClient on the app serving `bundle` (small batches, one warm-up run), once it is ready."""
    from serve.app import create_app  # the app module builds routes at import: only for tests that serve

    with TestClient(create_app(Settings(bundle=bundle, warmup_runs=1, max_batch=16))) as client:
        wait_ready(client)
        yield client
