"""Start-up: load and verify the bundle, build the session, the graph store and the block cache,
warm up, then flip to ready. Runs in a background thread so /livez and /readyz answer meanwhile.
A hot reload (POST /admin/reload) runs the same build in a worker thread and swaps the result in.

A refused bundle ends the process by default (fail fast): `python -m serve` first verifies it with
`preflight`, before uvicorn starts, so a mistyped path or a tampered file is one line on stderr and
exit 4, not a "running" process that is never ready; what only the build can find (a model
onnxruntime refuses, NaN weights) ends it through `Runtime.on_start_failure`, also exit 4. With
`wait_for_bundle` the old behaviour is kept: the process stays up, /readyz answers 503 with the
reason, and a good POST /admin/reload makes it ready.

A reload must not change what clients rely on: `differences` compares the new manifest with the
served one and the reload is refused (409 `bundle_incompatible`) unless forced.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bundle.edge_log import Header
from bundle.errors import BundleInvalid
from bundle.files import TemporalArrays, read_manifest
from bundle.manifest import Manifest, Policy, TemporalRecent
from serve.bundle import Bundle, load
from serve.dynamic import DynamicStore
from serve.errors import (
    BundleError,
    BundleIncompatible,
    BundleNotAllowed,
    BundleNotFound,
    BundleRejected,
    NotReady,
    ReloadInProgress,
)
from serve.graph import BlockCache, GraphStore
from serve.model import Model
from serve.scoring import NewNode, Scorer
from serve.settings import Settings
from serve.temporal_store import TemporalGraph
from serve.typed import TypedLinks
from serve.writes import Writer, WriteRules

log = logging.getLogger("serve")


@dataclass(frozen=True)
class Service:
    """What the endpoints need once loaded."""

    bundle: Bundle
    scorer: Scorer
    writes: Writer | None = None  # the graph's writer when SERVE_EDGE_LOG is set (serve/writes.py)


def _is_dir(path: Path) -> bool:
    """Path.is_dir, with an unusable path (a component over the OS name limit, a NUL byte) being no
    directory instead of an OSError that would end the request as a 500."""
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def _within(path: Path, roots: list[Path]) -> Path | None:
    """`path` resolved (links followed) if it lies inside one of `roots`, else None."""
    try:
        resolved = path.resolve()
    except (OSError, ValueError, RuntimeError):
        return None
    return resolved if any(resolved.is_relative_to(root) for root in roots) else None


PROBE_NODES = 64


def _manifest_or_none(root: Path) -> Manifest | None:
    """root's parsed manifest, or None when it cannot be read (the build then names the reason)."""
    try:
        return read_manifest(root)[0]
    except (BundleInvalid, OSError, ValueError):
        return None


def open_service(root: Path, intra_op_threads: int = 1, cache_budget_bytes: int = 256 << 20,
                 pack_nodes: int = 128, key: bytes | None = None, growing: bool = False) -> Service:
    """Verify the bundle at `root` (signed under `key`, when given) and build its scorer (session,
    graph store, filled block cache). The job's own checks (distill/served.py) go through here too:
    what it evaluates is what is served."""
    bundle = load(root, key)
    model = Model(bundle, intra_op_threads)
    store = _store(bundle, growing)
    cache = BlockCache(store, cache_budget_bytes)
    if not growing:  # a growing graph is filled once its log is replayed (open_writer)
        cache.fill()
    scorer = Scorer(store, cache, model, pack_nodes, TypedLinks.of(bundle.manifest, bundle.typed))
    _probe(scorer, bundle.manifest.model.file)
    return Service(bundle, scorer)


def _store(bundle: Bundle, growing: bool) -> GraphStore:
    """The graph store of `bundle`: a temporal edge store (it always can grow), or the bundle's P,
    growing with the edge log when `growing`."""
    graph, policy = bundle.graph, bundle.policy
    if isinstance(graph, TemporalArrays):
        assert isinstance(policy, TemporalRecent)  # the manifest pairs them
        return TemporalGraph(graph, policy)
    assert isinstance(policy, Policy)
    return (DynamicStore if growing else GraphStore)(graph, policy)


def _probe(scorer: Scorer, model_file: str) -> None:
    """Score a spread of nodes once: NaN / Inf weights (with matching hashes) must refuse the
    bundle at load, not answer requests with garbage."""
    n = scorer.store.num_nodes
    rows = np.unique(np.linspace(0, n - 1, num=min(n, PROBE_NODES)).astype(np.int64))
    logits = scorer.run_blocks([scorer.cache.get(int(i)) for i in rows])
    if not np.isfinite(logits).all():
        raise BundleError(f"{model_file} gives NaN or Inf logits on {int((~np.isfinite(logits).all(axis=1)).sum())} "
                          f"of {len(rows)} probe nodes: its weights are not finite", {"file": model_file})



def preflight(settings: Settings) -> str | None:
    """Verify `settings.bundle` as the start-up load will (manifest, signature, the sha256 of every
    served file, dtypes/shapes, policy) -> None, or why it is refused. For `python -m serve` before
    uvicorn starts: the common mistakes (wrong path, tampered or unsigned bundle) then end the process
    before it listens. The verified copy is dropped, and the load verifies again: reading the files
    once more costs ~10% of the build (Cora: 18 ms of 190 ms) and catches a bundle swapped in between."""
    try:
        load(settings.bundle, settings.key)
    except BundleError as exc:
        return exc.message
    except (OSError, ValueError) as exc:  # a path the OS refuses (a component over NAME_MAX, ...)
        return f"bundle directory {settings.bundle} is not a usable path: {exc}"
    return None


# What a client of the served model relies on, read from a manifest: its requests (feature width,
# graph or graph-free inputs) and its answers (class names, hence the task: binary or multi-class).
CONTRACT: dict[str, Callable[[Manifest], Any]] = {
    "num_features": lambda m: m.dataset.num_features,
    "class_names": lambda m: list(m.dataset.class_names),
    "inputs": lambda m: list(m.model.inputs),
    "id_type": lambda m: m.graph.id_type,  # requests carry ids of the served kind
    "policy": lambda m: m.policy.name,  # a temporal bundle scores as of t and takes no new_nodes
    "selection_metric": lambda m: m.metrics.get("selection_metric"),  # compared only when both record it
    "link_types": lambda m: None if m.typed is None else m.typed.link_types,  # what `links` may name
}


def differences(served: Manifest, new: Manifest) -> list[dict[str, Any]]:
    """[{"field", "served", "new"}] for each CONTRACT entry that differs; [] when `new` is compatible."""
    found = []
    for name, read in CONTRACT.items():
        old_value, new_value = read(served), read(new)
        if old_value != new_value and None not in (old_value, new_value):
            found.append({"field": name, "served": old_value, "new": new_value})
    return found


def build(settings: Settings) -> Service:
    """Verify the bundle, build everything, warm up. Raises BundleError on a bad bundle."""
    started = time.perf_counter()
    service = open_service(settings.bundle, settings.intra_op_threads, settings.cache_budget_bytes,
                           settings.pack_nodes, settings.key, growing=settings.edge_log is not None)
    if settings.edge_log is not None:
        service = replace(service, writes=open_writer(service, settings.edge_log, settings))
    scorer = service.scorer
    warm_up(scorer, settings.warmup_runs)
    log.info("bundle %s ready in %.2fs: %d nodes, %d/%d blocks cached (%.1f MiB)", service.bundle.version,
             time.perf_counter() - started, scorer.store.num_nodes, len(scorer.cache), scorer.store.num_nodes,
             scorer.cache.bytes / 2**20)
    return service


def open_writer(service: Service, path: Path, settings: Settings) -> Writer:
    """Open the edge log for `service` (its store grows: open_service(growing=True)) and replay it.
    One writer per log (EdgeLog.open locks it): a reload cannot take over a log the served bundle appends to."""
    store = service.scorer.store
    assert isinstance(store, DynamicStore | TemporalGraph)
    manifest = service.bundle.manifest
    rules = WriteRules(settings.edges_monotonic, settings.edges_undirected, settings.edge_weight_min,
                       settings.edge_weight_max, settings.max_write_items)
    if isinstance(manifest.policy, TemporalRecent):  # ratings, directed, within the data's range, always given
        rules = replace(rules, undirected=False, weight_min=manifest.policy.rating_min,
                        weight_max=manifest.policy.rating_max, weight_required=True)
    writer = Writer.open(path, Header(manifest.version, manifest.digest or manifest.version), store,
                         service.scorer.cache, rules)
    service.scorer.cache.fill()
    return writer


def warm_up(scorer: Scorer, runs: int) -> None:
    """Run single nodes, a batch and a new node through the full path, so the first real request
    does not pay for onnxruntime's lazy allocations; then zero the cache counters it touched."""
    store = scorer.store
    rng = np.random.default_rng(0)
    ids = store.node_ids[rng.integers(0, len(store.node_ids), size=max(runs, 1))].tolist()  # the bundle's nodes
    for i in range(runs):
        scorer.score(ids[i : i + 1 + (i % 8)])
    if runs and not isinstance(store, TemporalGraph):  # a temporal bundle takes no new nodes
        features = np.asarray(store.features[0], dtype=np.float32).tolist()
        scorer.score([], [NewNode(features, ids[:3])])
        if scorer.typed is not None:  # and the typed path: the via types' first nodes
            links = {name: table.ids[:1].tolist() for name, table in scorer.typed.indexes.items()}
            scorer.score([], [NewNode(features, [], links)])
    scorer.cache.hits = scorer.cache.misses = 0


@dataclass(frozen=True)
class Reloaded:
    """Outcome of a successful reload."""

    previous: str | None
    version: str
    seconds: float


class Runtime:
    """The served model and its life: loading -> ready | failed, hot reloads, draining.

    `service` is only ever replaced by one reference assignment (atomic in CPython). A request reads
    it once, at its start (`require()`), and keeps that object, so requests in flight during a swap
    finish on the model they started with while later ones get the new model.
    """

    def __init__(self) -> None:
        self.status: Literal["loading", "ready", "failed"] = "loading"
        self.reason: str | None = "loading the bundle"
        self.service: Service | None = None
        self.draining = False
        # Set by `python -m serve` unless settings.wait_for_bundle: a refused start-up load calls it
        # (from the loader thread) to end the process instead of staying up unready.
        self.on_start_failure: Callable[[str], None] | None = None
        # Held by the start-up load and by each reload: one bundle is built at a time, since two
        # builds would race on the swap and hold three models in memory at once.
        self._building = threading.Lock()

    def require(self) -> Service:
        """The loaded service, or NotReady (503) with the reason."""
        service = self.service  # read once: a concurrent swap must not split this check from the return
        if service is None:
            raise NotReady(f"service is {self.status}: {self.reason}", {"status": self.status})
        return service

    def start(self, settings: Settings, builder: Callable[[Settings], Service] = build) -> threading.Thread:
        """Load `settings.bundle` in a background thread; a reload meanwhile is refused (409)."""
        self._building.acquire()
        thread = threading.Thread(target=self.load, args=(settings, builder), name="bundle-loader", daemon=True)
        thread.start()
        return thread

    def load(self, settings: Settings, builder: Callable[[Settings], Service] = build) -> None:
        """The start-up load (holds the build lock taken by `start`): ready, or failed with a reason."""
        try:
            self._activate(builder(settings))
        except BundleError as exc:
            self._fail(exc.message, settings.wait_for_bundle)
        except Exception as exc:  # anything else is still a reason to stay unready, with a reason
            log.exception("start-up failed")
            self._fail(f"{type(exc).__name__}: {exc}", settings.wait_for_bundle)
        finally:
            self._building.release()

    def reload(self, settings: Settings, builder: Callable[[Settings], Service] = build, force: bool = False,
               ) -> Reloaded:
        """Verify, build and warm `settings.bundle`, then swap it in. Blocking: run it in a worker
        thread. On any error the served model is untouched. Raises ReloadInProgress, NotReady
        (draining), BundleNotFound, BundleNotAllowed (outside settings.allowed_roots), BundleRejected,
        or BundleIncompatible (unless `force`)."""
        if not self._building.acquire(blocking=False):
            raise ReloadInProgress("a bundle is already being loaded; retry when it is done")
        try:  # the swap and the unlock happen here, not in the caller: a cancelled request cannot skip them
            if self.draining:
                raise NotReady("the service is shutting down", {"status": "draining"})
            if not _is_dir(settings.bundle):
                raise BundleNotFound(f"bundle directory {settings.bundle} does not exist or is not a usable path",
                                     {"bundle": str(settings.bundle)})
            resolved = _within(settings.bundle, settings.allowed_roots)
            if resolved is None:
                raise BundleNotAllowed(f"bundle directory {settings.bundle} is outside the reload roots "
                                       f"{[str(r) for r in settings.allowed_roots]}; set SERVE_RELOAD_ROOTS to allow "
                                       "another directory", {"bundle": str(settings.bundle)})
            # The resolved path is what is opened: a link named in the request cannot redirect the
            # load later. (Directories inside the roots must still be writable by the operator only.)
            settings = settings.model_copy(update={"bundle": resolved})
            started = time.perf_counter()
            served = self.service  # swapped only under the lock held here: stable until our swap
            if served is not None:  # before the build, from the manifest alone: a refusal costs no build
                self._check_compatible(served.bundle, _manifest_or_none(settings.bundle), settings.bundle, force)
            new = self._build_for_reload(settings, builder)
            if served is not None and not force:  # again on what was verified: the manifest may have changed since
                self._check_compatible(served.bundle, new.bundle.manifest, settings.bundle, force)
            previous = served.bundle.version if served else None
            self._activate(new)
            seconds = time.perf_counter() - started
            log.info("reloaded %s -> %s from %s in %.2fs", previous, new.bundle.version, settings.bundle, seconds)
            return Reloaded(previous, new.bundle.version, seconds)
        finally:
            self._building.release()

    @staticmethod
    def _check_compatible(served: Bundle, new: Manifest | None, path: Path, force: bool) -> None:
        """Raise BundleIncompatible when `new` differs from the served bundle in CONTRACT, unless
        `force` (then log the differences). `new` None (unreadable manifest): the build says why."""
        found = [] if new is None else differences(served.manifest, new)
        if not found:
            return
        listed = "; ".join(f"{d['field']} {d['served']} -> {d['new']}" for d in found)
        if force:
            log.warning("forced reload of %s despite differences from %s: %s", path, served.version, listed)
            return
        log.error("reload of %s refused, incompatible with %s: %s", path, served.version, listed)
        raise BundleIncompatible(f"bundle {path} is incompatible with the served model {served.version}: {listed}; "
                                 'send {"force": true} to swap it in anyway',
                                 {"bundle": str(path), "served_version": served.version, "differences": found})

    @staticmethod
    def _build_for_reload(settings: Settings, builder: Callable[[Settings], Service]) -> Service:
        """builder(settings), with every failure turned into BundleRejected naming the reason (and
        the file, when one is to blame)."""
        where = {"bundle": str(settings.bundle)}
        try:
            return builder(settings)
        except BundleError as exc:
            log.error("reload of %s refused, old bundle keeps serving: %s", settings.bundle, exc.message)
            detail = {**where, "reason": exc.message, **(exc.detail if isinstance(exc.detail, dict) else {})}
            raise BundleRejected(f"bundle rejected: {exc.message}", detail) from None
        except Exception as exc:  # a model onnxruntime cannot run, memory, ...: still not served
            log.exception("reload of %s failed, old bundle keeps serving", settings.bundle)
            reason = f"{type(exc).__name__}: {exc}"
            raise BundleRejected(f"bundle rejected: {reason}", {**where, "reason": reason}) from None

    def _activate(self, service: Service) -> None:
        # What was just built (arrays, cached blocks) lives until the next reload: freezing it keeps
        # full GC passes from walking it, which measured ~30 ms on Tolokers, three times the whole
        # latency budget. Frozen objects are still freed by reference counting, so the previous
        # service goes away once its last in-flight request drops it.
        gc.collect()
        gc.freeze()
        self.service, self.reason = service, None
        self.status = "ready"  # last: /readyz must never say ready before `service` is set

    def _fail(self, reason: str, wait: bool) -> None:
        self.status, self.reason = "failed", reason
        if wait or self.on_start_failure is None:
            log.error("bundle refused, staying unready: %s", reason)
        else:
            log.error("bundle refused: %s", reason)
            self.on_start_failure(reason)

    def begin_drain(self) -> None:
        """Shutdown has begun: /readyz turns 503 so load balancers stop sending; requests are still served."""
        if not self.draining:
            log.info("draining: /readyz now answers 503")
        self.draining = True
