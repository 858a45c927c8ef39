"""One time's view of the growing graph (serve/dynamic.py's module doc gives the rules): `as_of` None
is every logged edge, the current graph the block cache serves; a time gives the graph as of then,
built per request."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from bundle import policy as kernels
from serve.graph import F32, I64, Block

if TYPE_CHECKING:
    from serve.dynamic import DynamicStore

EMPTY = np.zeros(0, dtype=np.int64)
# Levels of logged edges a past view follows back from a node's mean (each a factor 1 - r of weight,
# under 4 % of it past 32 at ppr-mlp's r = 0.1); further back a source passes its bundle row.
MAX_DEPTH = 32


class GraphView:
    """The graph at one time: `as_of` None = every logged edge (the cached, current graph)."""

    def __init__(self, store: DynamicStore, as_of: float | None) -> None:
        self.g, self.as_of = store, as_of
        self._kept: dict[int, I64] = {}
        self._rows: dict[int, tuple[I64, F32]] = {}
        self._means: dict[tuple[int, float, bool], npt.NDArray[np.float64]] = {}
        self._visible: dict[tuple[int, float, bool], list[tuple[int, float]]] = {}

    def logged(self, node: int) -> list[tuple[int, bool]]:
        """Logged in-neighbours of `node` visible in this view, with their `counted` flag."""
        entries = self.g.logged.get(node, {})
        return [(s, c) for s, (t, c) in entries.items() if self.as_of is None or t <= self.as_of]

    def prune(self, node: int) -> I64:
        """Kept in-neighbours of `node` in this view (sorted): bundle kept + visible logged, re-pruned."""
        base = self.g.base_kept(node)
        known = set(base.tolist())
        new = np.array(sorted(s for s, _ in self.logged(node) if s not in known), dtype=np.int64)
        if not len(new):
            return base
        p = self.g.policy
        if p.score == "hash":
            candidates = np.concatenate([base, new])
        else:  # teacher-scored: the bundle's kept edges first; logged ones fill the remaining room
            candidates, room = new, p.fanout - len(base)
            if room <= 0:
                return base
        rank = kernels.edge_rank(candidates, np.full(len(candidates), node, dtype=np.int64), p.seed)
        chosen = candidates[np.lexsort((candidates, rank))[: p.fanout if p.score == "hash" else room]]
        return np.sort(chosen if p.score == "hash" else np.concatenate([base, chosen]))

    def kept(self, node: int) -> I64:
        if node not in self._kept:
            if self.as_of is None:
                self._kept[node] = self.g.current_kept(node)
            else:
                self._kept[node] = self.prune(node) if self.g.changed[node] else self.g.base_kept(node)
        return self._kept[node]

    def degree(self, node: int) -> int:
        """Entries of `node`'s P row (gcn's d: kept + the self-loop)."""
        return len(self.kept(node)) + (0 if self.g.policy.propagation == "mean" else 1)

    def compute_row(self, node: int) -> tuple[I64, F32]:
        """P's row of `node` in this view: (sources sorted, weights) by the policy's formulas."""
        kept, kind = self.kept(node), self.g.policy.propagation
        if kind == "none":  # graph-free: no P; only the degree column and new nodes' features matter
            return EMPTY, np.zeros(0, dtype=np.float32)
        if kind == "mean":
            return kept, np.full(len(kept), 1.0 / max(len(kept), 1), dtype=np.float64).astype(np.float32)
        if kind == "attention" and node < self.g.n_base and not self.logged(node):  # the bundle's row as stored
            lo, hi = self.g.csr.indptr[node], self.g.csr.indptr[node + 1]
            return self.g.csr.indices[lo:hi], self.g.csr.weights[lo:hi]
        cols = np.sort(np.concatenate([kept, [node]])).astype(np.int64)
        if kind == "gcn":
            d_src = np.array([self.degree(c) for c in cols.tolist()], dtype=np.float64)
            inv_dst = 1.0 / np.sqrt(np.float64(len(cols)))
            return cols, ((1.0 / np.sqrt(d_src)) * inv_dst).astype(np.float32)
        return cols, self._attention(node, cols)

    def _attention(self, node: int, cols: I64) -> F32:
        """Bundle entries keep their teacher weight, a logged one gets the mean weight of the row's
        bundle entries; renormalised. A node without bundle entries: uniform."""
        g = self.g
        if node >= g.n_base:
            return np.full(len(cols), 1.0 / len(cols), dtype=np.float64).astype(np.float32)
        lo, hi = g.csr.indptr[node], g.csr.indptr[node + 1]
        base_cols, base_w = g.csr.indices[lo:hi], g.csr.weights[lo:hi].astype(np.float64)
        at = np.minimum(np.searchsorted(base_cols, cols), len(base_cols) - 1)
        score = np.where(base_cols[at] == cols, base_w[at], base_w.mean())
        score = np.maximum(score, kernels.ATTENTION_FLOOR)
        weights: F32 = (score / score.sum()).astype(np.float32)
        return weights

    def row(self, node: int) -> tuple[I64, F32]:
        if self.as_of is None:
            return self.g.rows[node]
        if node not in self._rows:
            self._rows[node] = self.compute_row(node)
        return self._rows[node]

    def gather(self, rows: I64) -> tuple[I64, I64, F32]:
        """Entries of P's `rows` [r] -> (local row of each entry [e], sources [e], weights [e])."""
        csr = self.g.csr
        changed = self.g.changed[rows]
        plain = np.flatnonzero(~changed)
        pos, lens = csr.segments(rows[plain])
        local, cols, weights = [np.repeat(plain, lens)], [csr.indices[pos]], [csr.weights[pos]]
        for i in np.flatnonzero(changed).tolist():
            c, w = self.row(int(rows[i]))
            local.append(np.full(len(c), i, dtype=np.int64))
            cols.append(c)
            weights.append(w)
        return np.concatenate(local).astype(np.int64), np.concatenate(cols), np.concatenate(weights)

    def k_hop(self, seeds: I64, hops: int) -> I64:
        """bundle.policy.CSR.k_hop over this view's rows."""
        return kernels.k_hop(lambda rows: self.gather(rows)[1], seeds, hops)

    def block_adj(self, nodes: I64) -> kernels.BlockAdj:
        """bundle.policy.CSR.block_adj over this view's rows."""
        return kernels.BlockAdj.among(nodes, *self.gather(nodes))

    def inputs(self, nodes: I64) -> F32:
        """Student input rows of `nodes` [n] with this view's degree (and neighbour-mean) columns
        -> float32 [n, F (+F) (+1)]."""
        g = self.g
        if g.in_degree is None or g.base_degree is None or self.as_of is None:
            return g.inputs(nodes)
        as_of = self.as_of
        degree = np.array([self._count(n, len(self._sources(n, as_of, True))) for n in nodes.tolist()],
                          dtype=np.int64)
        mean = None
        if g.neighbour_mean is not None:
            mean = np.stack([self._mean_at(n, as_of, True, 0) for n in nodes.tolist()]).astype(np.float32)
        return kernels.node_inputs(g.features[nodes], degree, mean)

    def _sources(self, node: int, t: float, inclusive: bool) -> list[tuple[int, float]]:
        """Counted logged in-neighbours of `node` with their edge's time, up to `t` (memoised: a
        node's degree column and its mean both read them)."""
        key = (node, t, inclusive)
        if key not in self._visible:
            entries = self.g.logged.get(node, {})
            self._visible[key] = [(s, when) for s, (when, counted) in entries.items()
                                  if counted and (when <= t if inclusive else when < t)]
        return self._visible[key]

    def _count(self, node: int, logged: int) -> int:
        base = self.g.base_degree
        return (int(base[node]) if base is not None and node < self.g.n_base else 0) + logged

    def _mean_at(self, node: int, t: float, inclusive: bool, depth: int) -> npt.NDArray[np.float64]:
        """`node`'s neighbour mean as of `t` -> float64 [F]: the bundle's sum plus what each counted
        source logged up to `t` passed along its edge, as of that edge's time (`_row_at`)."""
        key = (node, t, inclusive)
        if key not in self._means:
            sources = self._sources(node, t, inclusive)
            total = self.g.base_sum(node)
            if sources:
                total = total + np.stack([self._row_at(s, when, depth) for s, when in sources]).sum(axis=0)
            self._means[key] = total / max(self._count(node, len(sources)), 1)
        return self._means[key]

    def _row_at(self, node: int, t: float, depth: int, inclusive: bool = False) -> npt.NDArray[np.float64]:
        """What `node` passed along an edge logged at time `t` -> float64 [F]: r x + (1 - r) m, m its
        mean over the edges logged into it before then (up to `t` with `inclusive`), as the current
        view stored it when that edge arrived, had writes come in time order. Past MAX_DEPTH levels
        of logged edges the bundle's row stands in: a bound on one request's work."""
        g, r = self.g, self.g.policy.mean_restart
        x: npt.NDArray[np.float64] = g.features[node].astype(np.float64)
        if r >= 1.0:
            return x
        if depth >= MAX_DEPTH:
            stored: npt.NDArray[np.float64] = g.bundle_passed(np.array([node], dtype=np.int64))[0].astype(np.float64)
            return stored
        row: npt.NDArray[np.float64] = r * x + (1.0 - r) * self._mean_at(node, t, inclusive, depth + 1)
        return row

    def passed(self, nodes: I64) -> F32:
        """What `nodes` [n] pass to their out-neighbours' mean in this view -> float32 [n, F]. A past
        view never reads a stored mean, which may hold edges logged later (module doc)."""
        g = self.g
        if self.as_of is None or g.policy.mean_restart >= 1.0 or not len(nodes):
            return g.passed(nodes)
        as_of = self.as_of
        return np.stack([self._row_at(n, as_of, 0, inclusive=True) for n in nodes.tolist()]).astype(np.float32)

    def new_node_inputs(self, features: F32, neighbors: I64) -> F32:
        """GraphStore.new_node_inputs over this view: the given neighbours pass their rows as of then."""
        g = self.g
        if self.as_of is None or g.neighbour_mean is None:
            return g.new_node_inputs(features, neighbors)
        degree = None if g.in_degree is None else kernels.new_node_degree(neighbors)
        mean = kernels.new_node_mean(self.passed(np.unique(neighbors)))
        return kernels.node_inputs(features.reshape(1, -1), degree, mean)

    def block(self, node: int) -> Block:
        """The block of internal node `node` (target at row 0); inputs included for a past view."""
        nodes = np.array([node], dtype=np.int64)
        adj = None
        if not self.g.graph_free:
            nodes = self.k_hop(nodes, self.g.policy.k_hops)
            adj = self.block_adj(nodes)
        return Block(nodes, adj, 0, None if self.as_of is None else self.inputs(nodes))

    def new_node_block(self, features: F32, neighbors: I64) -> Block:
        """GraphStore.new_node_block over this view (the new node takes index `num_nodes`)."""
        g, p = self.g, self.g.policy
        x_new = self.new_node_inputs(features, neighbors)
        if g.graph_free:
            return Block(np.array([-1], dtype=np.int64), None, 0, x_new)
        kept = kernels.kept_neighbours(neighbors, g.num_nodes, p.fanout, p.seed)
        existing = self.k_hop(kept, p.k_hops - 1)
        entries = np.zeros(int(kept.max()) + 1 if len(kept) else 0, dtype=np.int64)
        entries[kept] = [self.degree(int(k)) for k in kept.tolist()]
        adj = kernels.BlockAdj.new_node(self.block_adj(existing), kernels.new_node_row(kept, p.propagation, entries))
        x = np.concatenate([x_new, self.inputs(existing)])
        return Block(np.concatenate([[-1], existing]).astype(np.int64), adj, 0, x)
