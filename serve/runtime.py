"""Start-up: load and verify the bundle, build the session, the graph store and the block cache,
warm up, then flip to ready. Runs in a background thread so /livez and /readyz answer meanwhile.

A bundle that fails verification never becomes ready: the process stays up, /readyz answers 503
with the reason and scoring answers 503. Restarting would not fix a tampered or wrong bundle, and a
crash loop hides the reason in logs; an orchestrator sees "not ready" and keeps traffic away.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from serve.bundle import Bundle, load
from serve.errors import BundleError, NotReady
from serve.graph import BlockCache, GraphStore
from serve.model import Model
from serve.scoring import NewNode, Scorer
from serve.settings import Settings

log = logging.getLogger("serve")


@dataclass(frozen=True)
class Service:
    """What the endpoints need once loaded."""

    bundle: Bundle
    scorer: Scorer


def build(settings: Settings) -> Service:
    """Verify the bundle, build everything, warm up. Raises BundleError on a bad bundle."""
    started = time.perf_counter()
    bundle = load(settings.bundle)
    model = Model(bundle, settings.intra_op_threads)
    store = GraphStore(bundle)
    cache = BlockCache(store, settings.cache_budget_bytes)
    cached = cache.fill()
    scorer = Scorer(store, cache, model, settings.pack_nodes)
    warm_up(scorer, settings.warmup_runs)
    log.info("bundle %s ready in %.2fs: %d nodes, %d/%d blocks cached (%.1f MiB)", bundle.version,
             time.perf_counter() - started, store.num_nodes, cached, store.num_nodes, cache.bytes / 2**20)
    return Service(bundle, scorer)


def warm_up(scorer: Scorer, runs: int) -> None:
    """Run single nodes, a batch and a new node through the full path, so the first real request
    does not pay for onnxruntime's lazy allocations; then zero the cache counters it touched."""
    store = scorer.store
    rng = np.random.default_rng(0)
    ids = store.node_ids[rng.integers(0, store.num_nodes, size=max(runs, 1))].tolist()
    for i in range(runs):
        scorer.score(ids[i : i + 1 + (i % 8)])
    if runs:
        features = np.asarray(store.features[0], dtype=np.float32).tolist()
        scorer.score([], [NewNode(features, ids[:3])])
    scorer.cache.hits = scorer.cache.misses = 0


class Runtime:
    """Loading state shared by the loader thread and the endpoints: loading -> ready | failed."""

    def __init__(self) -> None:
        self.status: Literal["loading", "ready", "failed"] = "loading"
        self.reason: str | None = "loading the bundle"
        self.service: Service | None = None

    def require(self) -> Service:
        """The loaded service, or NotReady (503) with the reason."""
        if self.service is None:
            raise NotReady(f"service is {self.status}: {self.reason}", {"status": self.status})
        return self.service

    def load(self, settings: Settings, builder: Callable[[Settings], Service] = build) -> None:
        try:
            service = builder(settings)
        except BundleError as exc:
            self._fail(exc.message)
            return
        except Exception as exc:  # anything else is still a reason to stay unready, with a reason
            log.exception("start-up failed")
            self._fail(f"{type(exc).__name__}: {exc}")
            return
        # Everything built so far (imports, arrays, cached blocks) lives as long as the process:
        # freezing it keeps full GC passes from walking it, which measured ~30 ms on Tolokers,
        # three times the whole latency budget.
        gc.collect()
        gc.freeze()
        self.service, self.reason = service, None
        self.status = "ready"  # last: /readyz must never say ready before `service` is set

    def _fail(self, reason: str) -> None:
        log.error("bundle refused, staying unready: %s", reason)
        self.status, self.reason = "failed", reason

    def start(self, settings: Settings, builder: Callable[[Settings], Service] = build) -> threading.Thread:
        thread = threading.Thread(target=self.load, args=(settings, builder), name="bundle-loader", daemon=True)
        thread.start()
        return thread
