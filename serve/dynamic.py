"""A graph that grows: the bundle's store plus the edges and nodes written through POST /v1/edges.

Same policy as the job (bundle.policy), applied to one target row at a time (docs/bundle.md,
"A graph that grows"):
- an edge src -> dst makes src a candidate in-neighbour of dst; dst's kept set is re-pruned. With
  `score == "hash"` this is exact: the `fanout` lowest edge_rank of (kept U new), the same set a job
  pruning the grown raw graph keeps. The teacher never scored a logged edge, so with teacher-scored
  pruning logged edges rank after every scored one (kept only while the row has room), lowest
  edge_rank first;
- P rows are recomputed with the policy's formulas: gcn also recomputes every row that keeps dst
  (d_dst changed); attention gives a logged edge the mean weight of the row's bundle entries, then
  renormalises (a new node's row is uniform, like `new_node_row`);
- the degree column counts a logged source as a new distinct in-neighbour unless it is already kept
  or logged (the bundle has no raw edge list: a duplicate of a pruned-away bundle edge counts again);
  the neighbour mean takes in the features of exactly the sources the degree counts (as a float64
  sum over the count, so it stays the exact mean); under a mean_restart below 1 it takes in their
  propagated rows as stored when the edge arrives (the fixed-point equation at dst; nodes further
  downstream keep their stored mean until the next job);
- new nodes take internal indices N, N+1, ... in log order; self-loops change nothing.

Scoring `as_of` a time sees the bundle's edges plus logged edges with time <= as_of (`past`): those
blocks are built per request, never cached. Nothing logged later leaks in: under a mean_restart
below 1 a source passes r x + (1 - r) m with m its mean as of its edge's time, rebuilt from the
bundle's sum and the edges logged into it before then (and so on back, up to graph_view.MAX_DEPTH
levels), never its stored mean, which may already hold later edges (writes need not arrive in time
order). With writes in time order this is what the current view stored as each edge arrived. The
current graph (every logged edge) is what the block cache serves; `apply` names the rows it
changed so the cache can drop every block that holds one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bundle import policy as kernels
from bundle.edge_log import Entry, NodeRecord
from bundle.files import GraphArrays
from bundle.ids import NodeKey, to_array
from bundle.manifest import Policy
from serve.errors import EdgeLogError
from serve.graph import F32, I64, Block, GraphStore, with_added
from serve.graph_view import EMPTY, GraphView


@dataclass(frozen=True)
class Applied:
    """What one entry changed: P rows recomputed, and the targets whose cached blocks are stale."""

    rows: I64
    stale_targets: I64


class DynamicStore(GraphStore):
    """GraphStore with a mutable overlay of changed rows (rows = targets) and appended nodes.
    Mutated only by `apply`, from one thread (the event loop), between requests."""

    def __init__(self, g: GraphArrays, policy: Policy) -> None:
        super().__init__(g, policy)
        self.n_base = len(self.node_ids)
        self._features_buf = self.features
        self.base_degree = self.in_degree
        self._degree_buf = None if self.in_degree is None else self.in_degree.copy()
        self.in_degree = self._degree_buf
        self.base_mean = self.neighbour_mean
        self._mean_buf = None if self.neighbour_mean is None else self.neighbour_mean.copy()
        self.neighbour_mean = self._mean_buf
        self._mean_sums: dict[int, npt.NDArray[np.float64]] = {}  # node -> feature sum over its counted in-neighbours
        self._new_ids: dict[NodeKey, int] = {}
        self.logged: dict[int, dict[int, tuple[float, bool]]] = {}  # dst -> {src: (earliest time, counted)}
        self.kept: dict[int, I64] = {}  # current kept in-neighbours of changed rows (no self-loop)
        self.rows: dict[int, tuple[I64, F32]] = {}  # current P rows of changed rows
        self.changed = np.zeros(self.n_base, dtype=bool)
        self.max_time = -math.inf
        self.edges_logged = 0
        # Who reads a node: P transposed (rows = sources), to find the blocks a changed row sits in.
        order = np.argsort(self.csr.indices, kind="stable")
        rev_indptr = np.zeros(self.n_base + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.csr.indices, minlength=self.n_base), out=rev_indptr[1:])
        readers = np.repeat(np.arange(self.n_base, dtype=np.int64), self.csr.degree)[order]
        self._reverse = kernels.CSR(rev_indptr, readers, np.zeros(len(readers), dtype=np.float32))
        self._rev_extra: dict[int, set[int]] = {}

    @property
    def num_nodes(self) -> int:
        return self.n_base + len(self._new_ids)

    def lookup(self, ids: npt.NDArray[Any]) -> tuple[I64, npt.NDArray[Any]]:
        """GraphStore.lookup, then the nodes added since the bundle (a dict: they are few)."""
        return with_added(super().lookup(ids), ids, self._new_ids)

    def block(self, node: int) -> Block:
        return GraphView(self, None).block(node)

    def new_node_block(self, features: F32, neighbors: I64) -> Block:
        return GraphView(self, None).new_node_block(features, neighbors)

    def past(self, as_of: float) -> GraphView | None:
        """The graph as of `as_of` (bundle edges + logged edges with time <= as_of), or None when
        that is the current graph (served from the cache)."""
        return None if as_of >= self.max_time else GraphView(self, as_of)

    # -- writes ---------------------------------------------------------------------------------

    def apply(self, entry: Entry, stale: bool = True) -> Applied:
        """Add the entry's nodes, then its edges (external ids, resolved here; the writer has
        checked that every id exists) -> the rows changed and (`stale`) the stale block targets."""
        for node in entry.nodes:
            self._add_node(node)
        touched: set[int] = set()
        keys = [k for e in entry.edges for k in (e.src, e.dst)]
        internal = self.lookup(to_array(keys, self.id_type))[0].reshape(-1, 2)
        if (internal < 0).any():  # the writer checked every id; only a log edited by hand gets here
            raise EdgeLogError(f"write {entry.seq} names node ids that are not in the graph",
                               {"seq": entry.seq})
        for (src, dst), edge in zip(internal.tolist(), entry.edges, strict=True):
            self.max_time = max(self.max_time, edge.time)
            self.edges_logged += 1
            if src != dst and self._log_edge(src, dst, edge.time):
                touched.add(dst)
        return self._recompute(touched, stale)

    def _add_node(self, node: NodeRecord) -> None:
        index = self.num_nodes
        if index == len(self._features_buf):  # amortised growth: old views stay valid for readers
            grown = max(16, index)
            self._features_buf = np.concatenate([self._features_buf, np.zeros((grown, self.num_features), np.float32)])
            self.changed = np.concatenate([self.changed, np.zeros(grown, dtype=bool)])
            if self._degree_buf is not None:
                self._degree_buf = np.concatenate([self._degree_buf, np.zeros(grown, dtype=np.int64)])
            if self._mean_buf is not None:
                self._mean_buf = np.concatenate([self._mean_buf, np.zeros((grown, self.num_features), np.float32)])
        self._features_buf[index] = np.asarray(node.features, dtype=np.float32)
        self._new_ids[node.id] = index
        self.features = self._features_buf[: index + 1]
        if self._degree_buf is not None:
            self.in_degree = self._degree_buf[: index + 1]
        if self._mean_buf is not None:
            self.neighbour_mean = self._mean_buf[: index + 1]
        self.kept[index] = EMPTY
        self.rows[index] = GraphView(self, None).compute_row(index)
        self.changed[index] = True

    def _log_edge(self, src: int, dst: int, when: float) -> bool:
        """Record src -> dst -> whether it is a new candidate for dst's row."""
        logged = self.logged.setdefault(dst, {})
        previous = logged.get(src)
        if previous is not None:
            logged[src] = (min(previous[0], when), previous[1])
            return False
        counted = src not in set(self.base_kept(dst).tolist())
        logged[src] = (when, counted)
        if counted and self.in_degree is not None:
            self.in_degree[dst] += 1
            if self.neighbour_mean is not None:
                total = self._mean_sums.get(dst)
                total = self.base_sum(dst) if total is None else total
                self._mean_sums[dst] = total = total + self.passed(np.array([src]))[0]
                self.neighbour_mean[dst] = total / self.in_degree[dst]
        return True

    def bundle_passed(self, nodes: I64) -> F32:
        """What `nodes` [n] passed in the bundle (their stored mean; none for a node added since:
        it had no in-neighbours then) -> float32 [n, F]; needs the neighbour mean."""
        assert self.base_mean is not None  # callers check the policy's mean_input
        mean = np.zeros((len(nodes), self.num_features), dtype=np.float32)
        old = nodes < self.n_base
        mean[old] = self.base_mean[nodes[old]]
        return kernels.propagated(self.features[nodes], mean, self.policy.mean_restart)

    def base_sum(self, node: int) -> npt.NDArray[np.float64]:
        """The feature sum over `node`'s in-neighbours in the bundle (mean x count) -> float64 [F]."""
        if self.base_mean is None or self.base_degree is None or node >= self.n_base:
            return np.zeros(self.num_features, dtype=np.float64)
        total: npt.NDArray[np.float64] = self.base_mean[node].astype(np.float64) * float(self.base_degree[node])
        return total

    def _recompute(self, touched: Iterable[int], stale: bool) -> Applied:
        view = GraphView(self, None)
        dirty: set[int] = set()
        for dst in touched:
            new = view.prune(dst)
            if not np.array_equal(new, self.current_kept(dst)):
                self.kept[dst] = new
                dirty.add(dst)
                for src in new.tolist():
                    self._rev_extra.setdefault(src, set()).add(dst)
        if self.policy.propagation == "gcn":  # rows that keep a node whose degree changed
            dirty |= set(self.readers(np.fromiter(dirty, dtype=np.int64, count=len(dirty))).tolist())
        for row in dirty:
            self.rows[row] = view.compute_row(row)
            self.changed[row] = True
        rows = np.array(sorted(dirty), dtype=np.int64)
        return Applied(rows, self._downstream(rows) if stale else EMPTY)

    def readers(self, nodes: I64) -> I64:
        """Rows that hold (or held) any of `nodes` as a source, unique: a superset of their readers
        in any version of the graph."""
        pos, _ = self._reverse.segments(nodes[nodes < self.n_base])
        found = [self._reverse.indices[pos]]
        found += [np.fromiter(extra, dtype=np.int64) for n in nodes.tolist() if (extra := self._rev_extra.get(n))]
        return np.unique(np.concatenate(found))

    def _downstream(self, rows: I64) -> I64:
        """Targets within k_hops downstream of `rows`: every block that contains one of them."""
        reached = frontier = rows
        for _ in range(self.policy.k_hops):
            frontier = np.setdiff1d(self.readers(frontier), reached, assume_unique=True)
            if not len(frontier):
                break
            reached = np.union1d(reached, frontier)
        return reached

    # -- the bundle's rows ----------------------------------------------------------------------

    def base_kept(self, node: int) -> I64:
        """The bundle's kept in-neighbours of `node` (its P row without the self-loop)."""
        if node >= self.n_base or self.graph_free:
            return EMPTY
        cols = self.csr.indices[self.csr.indptr[node]: self.csr.indptr[node + 1]]
        return cols[cols != node] if self.policy.propagation in ("gcn", "attention") else cols

    def current_kept(self, node: int) -> I64:
        kept = self.kept.get(node)
        return self.base_kept(node) if kept is None else kept
