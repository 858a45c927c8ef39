"""Graph writes: validate a POST /v1/edges body, append it to the edge log, wait for its fsync, then
apply it to the growing store and drop the cached blocks it made stale.

Ordering: a write is checked and appended on the event loop (one at a time, so the log's order is
the order ids and times were checked in), the fsync runs in a worker thread (group commit), and the
store is changed back on the event loop, always in log order and only up to what is durable: what a
restart replays is exactly what was applied, acknowledged or not yet answered. A temporal store
(serve/temporal_store.py) records the group on the event loop and rebuilds once per group in a
worker thread (~3 ms at Bitcoin-OTC size); its writes are answered after the swap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi.exceptions import RequestValidationError

from bundle.edge_log import EdgeRecord, Entry, Header, NodeRecord, encode
from bundle.ids import IdError, NodeKey, to_array
from serve.dynamic import Applied, DynamicStore
from serve.edge_log import EdgeLog
from serve.errors import (
    BatchTooLarge,
    DirectedOnly,
    EdgeLogError,
    EmptyBatch,
    InvalidFeatures,
    NodeExists,
    RatingRequired,
    TimeNotMonotonic,
    UnknownNodes,
    WeightOutOfRange,
)
from serve.graph import BlockCache
from serve.schemas_edges import EdgesRequest
from serve.temporal_store import TemporalGraph

log = logging.getLogger("serve")
MAX_LISTED = 100


@dataclass(frozen=True)
class WriteRules:
    """What a write may do (SERVE_EDGES_* settings)."""

    monotonic: bool = False
    undirected: bool = True
    weight_min: float | None = None
    weight_max: float | None = None
    max_items: int = 1000
    weight_required: bool = False  # temporal bundles: every edge carries its rating


@dataclass(frozen=True)
class Written:
    """An acknowledged write."""

    seq: int
    nodes: int
    edges: int
    changed_rows: int
    invalidated_blocks: int
    log_bytes: int
    fsync_seconds: float


class Writer:
    """The one writer of a served graph: its log, its store and the cache over it."""

    def __init__(self, log_: EdgeLog, store: DynamicStore | TemporalGraph, cache: BlockCache,
                 rules: WriteRules) -> None:
        self.log, self.store, self.cache, self.rules = log_, store, cache, rules
        self.last_time = store.max_time
        self.broken: str | None = None
        self._pending: deque[tuple[int, Entry]] = deque()  # appended, not yet applied: (end offset, entry)
        self._declared: set[NodeKey] = set()  # node ids of pending entries
        self._done: dict[int, tuple[Applied, int]] = {}
        self._applying = asyncio.Lock()  # one group applied at a time: a temporal flush awaits a thread

    @classmethod
    def open(cls, path: Path, header: Header, store: DynamicStore | TemporalGraph, cache: BlockCache,
             rules: WriteRules) -> Writer:
        """Open the log at `path` and replay it onto `store` (before the service is ready)."""
        started = time.perf_counter()
        opened, entries = EdgeLog.open(path, header)
        writer = cls(opened, store, cache, rules)
        for entry in entries:
            store.apply(entry, stale=False)
        if isinstance(store, TemporalGraph):
            store.flush()
        if entries:  # blocks cached before the replay (the load's probe) are of the bundle's graph
            cache.invalidate(np.arange(store.num_nodes, dtype=np.int64))
        writer.last_time = store.max_time
        log.info("edge log %s: replayed %d writes (%d edges, %d nodes) in %.2fs", path, len(entries),
                 store.edges_logged, store.num_nodes - store.n_base, time.perf_counter() - started)
        return writer

    async def write(self, request: EdgesRequest) -> Written:
        """Check, log, fsync, apply -> the acknowledged write. Raises the request's 4xx, or
        EdgeLogError (503) once the log has failed."""
        if self.broken is not None:
            raise EdgeLogError(f"graph writes are off: {self.broken}; restart the service",
                               {"path": str(self.log.path)})
        entry = self.check(request, time.time())
        try:
            end = self.log.append(encode(entry))
        except OSError as exc:  # a partial frame may be on disk: nothing after it may be acknowledged
            raise self._fail(exc) from None
        self.log.seq = entry.seq
        self._pending.append((end, entry))
        self._declared.update(n.id for n in entry.nodes)
        self.last_time = max([self.last_time, *(e.time for e in entry.edges)])
        # Shielded: a client that disconnects must not leave its durable entry unapplied.
        seconds = await asyncio.shield(asyncio.ensure_future(self._commit(end)))
        applied, dropped = self._done.pop(entry.seq)
        return Written(entry.seq, len(entry.nodes), len(entry.edges), len(applied.rows), dropped, end, seconds)

    async def _commit(self, end: int) -> float:
        try:
            seconds = await asyncio.to_thread(self.log.sync, end)
        except OSError as exc:
            raise self._fail(exc) from None
        async with self._applying:  # a write another commit applies is done when this lock is free again
            group: list[tuple[Entry, Applied]] = []
            while self._pending and self._pending[0][0] <= self.log.synced:
                _, entry = self._pending.popleft()
                group.append((entry, self.store.apply(entry)))
            store = self.store
            if isinstance(store, TemporalGraph):  # one rebuild per group, off the event loop
                dropped = await asyncio.to_thread(self._swap, store, group) if group else []
            else:
                dropped = [self.cache.invalidate(applied.stale_targets) for _, applied in group]
            for (entry, applied), count in zip(group, dropped, strict=True):
                self._done[entry.seq] = (applied, count)
                self._declared.difference_update(n.id for n in entry.nodes)
        return seconds

    def _swap(self, store: TemporalGraph, group: list[tuple[Entry, Applied]]) -> list[int]:
        """Rebuild and swap the temporal store, then drop the blocks the group made stale. The cache's
        generation is bumped before the stale targets are read: a block built from the old store is
        then either refused by the cache or registered in time to be dropped."""
        store.flush()
        self.cache.invalidate(np.zeros(0, dtype=np.int64))
        return [self.cache.invalidate(store.stale(applied.rows)) for _, applied in group]

    def _fail(self, exc: OSError) -> EdgeLogError:
        self.broken = f"the edge log write failed ({exc.strerror or exc})"
        log.error("edge log %s: %s; refusing further writes", self.log.path, self.broken)
        return EdgeLogError(f"graph write not acknowledged: {self.broken}", {"path": str(self.log.path)})

    # -- checks ---------------------------------------------------------------------------------

    def check(self, request: EdgesRequest, now: float) -> Entry:
        """The request as the entry to log (edges directed, times filled in), or its 4xx."""
        items = len(request.nodes) + len(request.edges)
        if items == 0:
            raise EmptyBatch("give at least one of nodes / edges")
        if items > self.rules.max_items:
            raise BatchTooLarge(f"{items} nodes + edges in one write; the limit is {self.rules.max_items}",
                                {"max_write_items": self.rules.max_items})
        temporal = isinstance(self.store, TemporalGraph)
        if temporal and request.undirected:
            raise DirectedOnly("a temporal bundle's edges are ratings from `src` to `dst`: send them directed "
                               "(leave `undirected` out or false)")
        nodes = self._check_nodes(request)
        declared = {n.id for n in nodes}
        self._check_known([k for e in request.edges for k in (e.src, e.dst)], declared)
        edges = [EdgeRecord(e.src, e.dst, now if e.time is None else e.time, e.weight) for e in request.edges]
        self._check_values(edges)
        undirected = not temporal and (self.rules.undirected if request.undirected is None else request.undirected)
        if undirected:
            edges = [r for e in edges for r in (e, EdgeRecord(e.dst, e.src, e.time, e.weight)) if r.src != r.dst or
                     r is e]
        return Entry(self.log.seq + 1, tuple(nodes), tuple(edges))

    def _ids(self, keys: list[NodeKey], field: str) -> np.ndarray:
        try:
            return to_array(keys, self.store.id_type)
        except IdError as exc:
            raise RequestValidationError([{"type": "node_id_type", "loc": ("body", field), "msg": str(exc)}]) from None

    def _check_nodes(self, request: EdgesRequest) -> list[NodeRecord]:
        keys = [n.id for n in request.nodes]
        found = self.store.lookup(self._ids(keys, "nodes"))[0] if keys else np.zeros(0, dtype=np.int64)
        seen: set[NodeKey] = set()
        taken = []
        for key, index in zip(keys, found.tolist(), strict=True):
            if index >= 0 or key in self._declared or key in seen:
                taken.append(key)
            seen.add(key)
        if taken:
            raise NodeExists(f"{len(taken)} declared node id(s) are already in the graph or repeated",
                             {"node_ids": taken[:MAX_LISTED]})
        out = []
        width = 0 if isinstance(self.store, TemporalGraph) else self.store.num_features  # temporal users: no features
        for i, node in enumerate(request.nodes):
            if len(node.features) != width:
                raise InvalidFeatures(f"nodes[{i}].features has {len(node.features)} values; the model takes {width}",
                                      {"index": i})
            with np.errstate(over="ignore"):
                x32 = np.asarray(node.features, dtype=np.float32)
            if not np.isfinite(x32).all():
                raise InvalidFeatures(f"nodes[{i}].features must be finite float32 values", {"index": i})
            out.append(NodeRecord(node.id, tuple(float(v) for v in x32.tolist())))
        return out

    def _check_known(self, keys: list[NodeKey], declared: set[NodeKey]) -> None:
        if not keys:
            return
        found = self.store.lookup(self._ids(keys, "edges"))[0]
        unknown = sorted({k for k, i in zip(keys, found.tolist(), strict=True)
                          if i < 0 and k not in declared and k not in self._declared}, key=str)
        if unknown:
            raise UnknownNodes(f"{len(unknown)} edge endpoint(s) are not in the graph; declare new nodes in `nodes`",
                               {"unknown_node_ids": unknown[:MAX_LISTED]})

    def _check_values(self, edges: list[EdgeRecord]) -> None:
        lo, hi = self.rules.weight_min, self.rules.weight_max
        last = self.last_time
        for i, e in enumerate(edges):
            if e.weight is None and self.rules.weight_required:
                raise RatingRequired(f"edges[{i}] has no weight: every edge of a temporal bundle carries its rating "
                                     f"(within [{lo}, {hi}])", {"index": i, "min": lo, "max": hi})
            if e.weight is not None and ((lo is not None and e.weight < lo) or (hi is not None and e.weight > hi)):
                raise WeightOutOfRange(f"edges[{i}].weight {e.weight} is outside [{lo}, {hi}]",
                                       {"index": i, "min": lo, "max": hi})
            if self.rules.monotonic and e.time < last:
                raise TimeNotMonotonic(f"edges[{i}].time {e.time} is before the last logged edge time {last}; "
                                       "this service takes edges in time order (SERVE_EDGES_MONOTONIC)",
                                       {"index": i, "last_time": last})
            last = max(last, e.time)
