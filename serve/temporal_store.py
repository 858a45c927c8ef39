"""The service's store for a temporal bundle: the kernel's TemporalStore (bundle.temporal), scored as
of a time t, growing with POST /v1/edges.

A node's score as of t is the student on `bundle.temporal.block(store, node, t, policy)`: the one
policy the job trained and checked with. Without `as_of` a request is scored as of the graph's
*now*: the latest edge time the service knows (bundle and log). Answers are then deterministic and
cacheable; wall-clock now would age every node every second.

Caching: at the default time every edge is visible, so a block's structure (its nodes and its
relation adjacency, which depends on ratings, not on ages) only changes when an edge touches one of
its nodes; the block cache keeps those, and the features as of now (ages) are computed per request
(`inputs`). `as_of` other than now is computed per request, exactly (`past`).

Writes: `apply` records an entry's nodes and edges; `flush` grows the kernel's store with them
(TemporalStore.appended, equal to `extended` without its re-sort: ~3 ms at Bitcoin-OTC's 35k edges
against ~25 ms; run by serve/writes.py in a worker thread, once per group of durable writes) and
swaps it in; `stale` then names the cached targets whose block read a touched node's edges
(`expanded`: not the last hop's nodes, whose edges reach only their features). New nodes (no
features of their own) become visible at the swap, after the store that holds them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bundle import ids as id_rules
from bundle.edge_log import Entry
from bundle.files import TemporalArrays
from bundle.ids import NodeKey, to_array
from bundle.manifest import TemporalRecent
from bundle.temporal import FEATURES, TemporalBlock, TemporalStore, block, node_features
from serve.dynamic import Applied
from serve.errors import EdgeLogError, NewNodesUnsupported
from serve.graph import BLOCK_OVERHEAD, F32, I64, Block, GraphStore, with_added

EMPTY = np.zeros(0, dtype=np.int64)
APPEND_MAX = 2000  # edges per flush inserted one by one; more (a replayed log) are re-sorted at once
NO_NEW_NODES = ("new_nodes cannot be scored by a temporal bundle: a user's features are its rating history; "
                "add the user and its ratings with POST /v1/edges, then score its id")


@dataclass(frozen=True)
class CompactBlock(Block):
    """A cached block as of now, kept as the kernel's sparse edges (`source`; adj None): a dense
    [4, n, n] per cached node would hold ~20x the bytes, and at Bitcoin-OTC size the default budget
    then fits 85 % of the blocks instead of all. The scorer densifies it per request with the
    kernel's own `TemporalBlock.adjacency()` (tens of microseconds), so the numbers are the same."""

    source: TemporalBlock | None = None

    def dense(self) -> F32:
        """The relation adjacency float32 [R, n, n] of the source block."""
        assert self.source is not None
        return self.source.adjacency()

    @property
    def nbytes(self) -> int:
        b = self.source
        arrays = () if b is None else (b.edge_from, b.edge_to, b.edge_relation, b.edge_rating)
        edges = sum(a.nbytes for a in arrays)
        return int(BLOCK_OVERHEAD + 2 * self.nodes.nbytes + edges)


def _compact(b: TemporalBlock) -> CompactBlock:
    """`b` without what the cached path recomputes per request (features and ages depend on now)."""
    empty = np.zeros(0, dtype=np.float32)
    kept = TemporalBlock(b.t, b.nodes, np.zeros((0, len(FEATURES)), np.float32), b.edge_from, b.edge_to,
                         b.edge_relation, b.edge_rating, empty)
    return CompactBlock(b.nodes, None, 0, None, kept)


def expanded(b: TemporalBlock, k_hops: int) -> I64:
    """The nodes of `b` whose edge lists the block read: those less than `k_hops` hops from the
    target (the last hop's nodes are only named; their edges, and so a write touching them, change
    their features, computed per request, not the block). Hops from the block's own edges, which
    run from each expanded node (edge_to) to the neighbours it found (edge_from)."""
    depth = np.full(len(b.nodes), k_hops, dtype=np.int64)
    depth[0] = 0
    for hop in range(k_hops - 1):
        found = b.edge_from[np.isin(b.edge_to, np.flatnonzero(depth == hop))]
        depth[found] = np.minimum(depth[found], hop + 1)
    out: I64 = b.nodes[depth < k_hops]
    return out


class PastTemporal:
    """The graph as of one time: blocks built per request, features included."""

    def __init__(self, graph: TemporalGraph, store: TemporalStore, as_of: float) -> None:
        self.graph, self.store, self.as_of = graph, store, as_of

    def block(self, node: int) -> Block:
        b = block(self.store, node, self.as_of, self.graph.kernel)
        return CompactBlock(b.nodes, None, 0, b.x, b)

    def new_node_block(self, features: F32, neighbors: I64) -> Block:
        raise NewNodesUnsupported(NO_NEW_NODES)


class TemporalGraph(GraphStore):
    """GraphStore's interface (lookup, block, inputs, past) over a temporal edge store. It has no P
    and no feature matrix: `csr` and `policy` of GraphStore are not set (the kernel policy is
    `kernel`, the manifest's `temporal_policy`)."""

    def __init__(self, arrays: TemporalArrays, policy: TemporalRecent) -> None:  # noqa: D107
        # GraphStore.__init__ is not called: it reads a P and features this bundle does not have.
        self.temporal_policy, self.kernel = policy, policy.kernel
        self.features = np.zeros((0, len(FEATURES)), dtype=np.float32)
        self.in_degree = None
        self.graph_free = False
        self.node_ids: npt.NDArray[Any] = arrays.node_ids
        self.index = id_rules.IdIndex(arrays.node_ids)
        self.n_base = len(arrays.node_ids)
        store = arrays.store()
        self._state = (store, float(store.time.max()) if len(store.time) else 0.0)  # swapped as one reference
        self.max_time = self._state[1]
        self.edges_logged = 0
        self._new_ids: dict[NodeKey, int] = {}
        self._pending_ids: dict[NodeKey, int] = {}
        self._pending: list[tuple[int, int, float, float]] = []
        self._members: dict[int, set[int]] = {}  # node -> targets whose cached block read its edges
        self._flush_lock = threading.Lock()

    # -- reading ----------------------------------------------------------------------------------

    @property
    def store(self) -> TemporalStore:
        return self._state[0]

    @property
    def now(self) -> float:
        """The default scoring time: the latest edge time known (bundle and applied writes)."""
        return self._state[1]

    @property
    def num_nodes(self) -> int:
        return self.n_base + len(self._new_ids)

    @property
    def max_block_nodes(self) -> int:
        return self.kernel.max_nodes()

    def lookup(self, ids: npt.NDArray[Any]) -> tuple[I64, npt.NDArray[Any]]:
        """GraphStore.lookup, then the users added by writes (a dict: they are few)."""
        return with_added(self.index.lookup(ids), ids, self._new_ids)

    def block(self, node: int) -> Block:
        """The block of `node` as of now (structure only: `inputs` adds the features per request)."""
        store, now = self._state  # one read: a concurrent swap cannot split store from time
        b = block(store, node, now, self.kernel)
        for member in expanded(b, self.kernel.k_hops).tolist():
            self._members.setdefault(member, set()).add(node)
        return _compact(b)

    def inputs(self, nodes: I64) -> F32:
        """node_features as of now of `nodes` [n] -> float32 [n, 18]."""
        store, now = self._state
        return node_features(store, nodes, now)

    def new_node_block(self, features: F32, neighbors: I64) -> Block:
        raise NewNodesUnsupported(NO_NEW_NODES)

    def past(self, as_of: float) -> PastTemporal | None:
        """The graph as of `as_of` (edges with time <= as_of, ages from as_of); None when that is now."""
        store, now = self._state
        return None if as_of == now else PastTemporal(self, store, as_of)

    # -- writes -----------------------------------------------------------------------------------

    def apply(self, entry: Entry, stale: bool = True) -> Applied:
        """Record the entry's users and ratings (visible after `flush`) -> the touched nodes as rows.
        The writer has checked ids, ratings and times; `stale` is ignored: see `stale`."""
        for node in entry.nodes:
            self._pending_ids[node.id] = self.num_nodes + len(self._pending_ids)
        keys = [k for e in entry.edges for k in (e.src, e.dst)]
        internal = self._resolve(keys)
        for (src, dst), edge in zip(internal.tolist(), entry.edges, strict=True):
            if edge.weight is None:
                raise EdgeLogError(f"write {entry.seq} has an edge without a rating", {"seq": entry.seq})
            self._pending.append((src, dst, edge.time, edge.weight))
            self.max_time = max(self.max_time, edge.time)
        self.edges_logged += len(entry.edges)
        return Applied(np.unique(internal.reshape(-1)), EMPTY)

    def _resolve(self, keys: list[NodeKey]) -> I64:
        if not keys:
            return np.zeros((0, 2), dtype=np.int64)
        idx = self.lookup(to_array(keys, self.id_type))[0]
        for pos in np.flatnonzero(idx < 0).tolist():
            idx[pos] = self._pending_ids.get(keys[pos], -1)
        if (idx < 0).any():  # the writer checked every id; only a log edited by hand gets here
            raise EdgeLogError("a logged write names node ids that are not in the graph")
        return idx.reshape(-1, 2)

    def flush(self) -> None:
        """Grow the kernel's store with the recorded writes and swap it in (thread-safe; blocking)."""
        with self._flush_lock:
            if not self._pending and not self._pending_ids:
                return
            edges, self._pending = self._pending, []
            added, self._pending_ids = self._pending_ids, {}
            store, now = self._state
            src, dst, when, rating = (np.array(c) for c in zip(*edges, strict=True)) if edges else (EMPTY,) * 4
            grow = store.appended if len(edges) <= APPEND_MAX else store.extended  # a long replay: one re-sort
            grown = grow(src, dst, when, rating, self.num_nodes + len(added))
            self._state = (grown, max([now, *np.asarray(when, dtype=np.float64).tolist()]))
            self._new_ids.update(added)  # after the swap: an id never names a node the store lacks

    def stale(self, nodes: I64) -> I64:
        """Targets whose cached block read the edges of one of `nodes` (forgotten here: the cache
        drops them)."""
        found: set[int] = set(nodes.tolist())
        for node in nodes.tolist():
            found |= self._members.pop(node, set())
        return np.array(sorted(found), dtype=np.int64)
