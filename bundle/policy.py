"""The neighbourhood policy, in numpy: the one implementation training, export, selection and serving use.

Every node keeps at most `fanout` in-neighbours: highest importance score first (when the teacher
gives one), then lowest `edge_rank` (a seeded hash: uniform-like, reproducible, no torch needed).
The student's propagation matrix P is computed once on the whole pruned graph and stored as CSR
(rows = targets). A k-layer student run on a node's k-hop in-neighbourhood block of P gives exactly
what the full-graph pass over the pruned graph gives at that node: that block is what the service
caches, so what is evaluated is what is served.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import numpy.typing as npt

from bundle.errors import BundleInvalid

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
U64 = npt.NDArray[np.uint64]
Propagation = Literal["gcn", "mean", "attention", "none"]
PROPAGATIONS: tuple[Propagation, ...] = ("gcn", "mean", "attention", "none")
ATTENTION_FLOOR = 1e-6  # a zero weight would silently drop a neighbour the policy kept


def splitmix64(x: U64) -> U64:
    """The standard splitmix64 finaliser on uint64 arrays; numpy uint64 arithmetic wraps mod 2^64."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def edge_rank(src: I64, dst: I64, seed: int) -> U64:
    """Tie-break rank of edges src -> dst: splitmix64(splitmix64(seed ^ dst) ^ src), all [E]."""
    inner = splitmix64(np.uint64(seed) ^ dst.astype(np.uint64))
    return splitmix64(inner ^ src.astype(np.uint64))


def max_block_nodes(fanout: int, k_hops: int) -> int:
    """Policy bound on one node's neighbourhood: 1 + K + ... + K^L."""
    return sum(fanout**h for h in range(k_hops + 1))


def prune(src: I64, dst: I64, num_nodes: int, fanout: int, seed: int,
          score: npt.NDArray[np.floating] | None = None) -> I64:
    """Positions (ascending) of the edges kept: at most `fanout` in-edges per target, highest
    `score` [E] first, then lowest edge_rank. src, dst int64 [E] -> int64 [E']."""
    rank = edge_rank(src, dst, seed)
    neg_score = -np.asarray(score, dtype=np.float64) if score is not None else np.zeros(len(src))
    order = np.lexsort((rank, neg_score, dst))  # last key is primary: group by dst
    dst_sorted = dst[order]
    starts = np.searchsorted(dst_sorted, np.arange(num_nodes))
    position = np.arange(len(order)) - starts[dst_sorted]
    return np.sort(order[position < fanout]).astype(np.int64)


@dataclass(frozen=True)
class Entries:
    """P as a list of entries P[dst, src] = weight: src, dst int64 [nnz], weight float32 [nnz]."""

    src: I64
    dst: I64
    weight: F32


def propagation(src: I64, dst: I64, num_nodes: int, kind: Propagation,
                attention: tuple[F32, F32] | None = None) -> Entries:
    """P over the kept edges src -> dst [E'] (docs/bundle.md, step 2).

    `gcn`: one self-loop per node, P[i, j] = 1 / sqrt(d_i d_j) with d counted over row entries;
    `mean`: P[i, j] = 1 / (kept in-neighbours of i), no self-loops; `attention`: the teacher's
    scores `(per kept edge [E'], per node's self-loop [N])`, floored and divided by their row sum;
    `none`: no entries (graph-free students).
    """
    if kind == "mean":
        deg = np.bincount(dst, minlength=num_nodes).astype(np.float64)
        return Entries(src, dst, (1.0 / deg[dst]).astype(np.float32))
    if kind == "none":
        empty = np.zeros(0, dtype=np.int64)
        return Entries(empty, empty, np.zeros(0, dtype=np.float32))
    loops = np.arange(num_nodes, dtype=np.int64)
    keep = src != dst  # a stored self-loop is replaced by the one every node gets
    src, dst = np.concatenate([src[keep], loops]), np.concatenate([dst[keep], loops])
    if kind == "gcn":
        inv_sqrt = 1.0 / np.sqrt(np.bincount(dst, minlength=num_nodes).astype(np.float64))
        return Entries(src, dst, (inv_sqrt[src] * inv_sqrt[dst]).astype(np.float32))
    if kind != "attention" or attention is None:
        raise ValueError(f"propagation {kind!r}: choose one of {PROPAGATIONS} (attention needs the teacher's scores)")
    score = np.concatenate([np.asarray(attention[0])[keep], np.asarray(attention[1])]).astype(np.float64)
    score = np.maximum(score, ATTENTION_FLOOR)
    row_sum = np.bincount(dst, weights=score, minlength=num_nodes)
    return Entries(src, dst, (score / row_sum[dst]).astype(np.float32))



def k_hop(sources: Callable[[I64], I64], seeds: I64, hops: int) -> I64:
    """Seeds (unique, kept first, in order) plus every node within `hops` steps backwards, each
    later hop sorted -> int64 [n]. `sources(rows)` gives the column of every entry of those rows of
    P (any order, repeats allowed): the bundle's CSR, or the service's grown view of it."""
    nodes, frontier = seeds, seeds
    for _ in range(hops):
        reached = np.unique(sources(frontier))
        frontier = reached[~_sorted_find(np.sort(nodes), reached)[1]]  # np.setdiff1d, without its overhead
        if not len(frontier):
            break
        nodes = np.concatenate([nodes, frontier])
    return nodes


def _sorted_find(sorted_set: I64, values: I64) -> tuple[I64, npt.NDArray[np.bool_]]:
    """Each of `values` [v] in the sorted array `sorted_set` [s] -> (its position there, valid where
    found [v]; found [v]). A binary search: blocks are small, and np.isin's set-up cost more than the
    search when the cache builds every block."""
    if not len(sorted_set):
        return np.zeros(len(values), dtype=np.int64), np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return at, sorted_set[at] == values


@dataclass(frozen=True)
class CSR:
    """P by target row: indptr int64 [N+1], indices int64 [nnz] (sources), weights float32 [nnz]."""

    indptr: I64
    indices: I64
    weights: F32

    @classmethod
    def from_entries(cls, entries: Entries, num_nodes: int) -> CSR:
        order = np.lexsort((entries.src, entries.dst))
        indptr = np.zeros(num_nodes + 1, dtype=np.int64)
        np.cumsum(np.bincount(entries.dst, minlength=num_nodes), out=indptr[1:])
        return cls(indptr, entries.src[order].astype(np.int64), entries.weight[order].astype(np.float32))

    @property
    def num_nodes(self) -> int:
        return len(self.indptr) - 1

    @cached_property
    def degree(self) -> I64:
        """Entries per row (self-loop included): d[j] of the gcn new-node formula. Cached: every new
        node scored reads it, and recomputing it costs O(N) per request."""
        return np.diff(self.indptr)

    def entries(self) -> Entries:
        """The entries in CSR order (what a full-graph student trains on)."""
        rows = np.repeat(np.arange(self.num_nodes, dtype=np.int64), self.degree)
        return Entries(self.indices, rows, self.weights)

    def check(self) -> None:
        """Raise BundleInvalid unless this is a well-formed CSR over its own nodes."""
        nnz, n = len(self.indices), self.num_nodes
        if n < 0 or self.indptr[0] != 0 or self.indptr[-1] != nnz or np.any(np.diff(self.indptr) < 0) \
                or len(self.weights) != nnz:
            raise BundleInvalid("graph CSR is inconsistent (indptr / indices / weights)")
        if nnz and (self.indices.min() < 0 or self.indices.max() >= n):
            raise BundleInvalid("graph/indices reference nodes outside 0..N-1")

    def segments(self, rows: I64) -> tuple[I64, I64]:
        """CSR positions of all entries of `rows` [r] -> (positions [e], entries per row [r])."""
        starts = self.indptr[rows]
        lens = self.indptr[rows + 1] - starts
        shift = np.repeat(starts - (np.cumsum(lens) - lens), lens)
        return np.arange(int(lens.sum()), dtype=np.int64) + shift, lens

    def k_hop(self, seeds: I64, hops: int) -> I64:
        """Seeds (unique, kept first, in order) plus every node within `hops` steps backwards
        along P (row -> its indices), each later hop sorted -> int64 [n]."""
        return k_hop(lambda rows: self.indices[self.segments(rows)[0]], seeds, hops)

    def block_adj(self, nodes: I64) -> BlockAdj:
        """The entries of P among `nodes` [n], sparse: adj[i, j] = P[nodes[i], nodes[j]]."""
        pos, lens = self.segments(nodes)
        return BlockAdj.among(nodes, np.repeat(np.arange(len(nodes)), lens), self.indices[pos], self.weights[pos])

    def dense_block(self, nodes: I64) -> F32:
        """adj float32 [n, n] with adj[i, j] = P[nodes[i], nodes[j]] (0 where P has no entry)."""
        return self.block_adj(nodes).dense()

    def blocks(self, seeds: I64, hops: int) -> list[tuple[I64, BlockAdj]]:
        """(k_hop([s], hops), block_adj of those nodes) for each seed s [B], built together: equal
        to one seed at a time, in a few numpy calls for all (the service builds every block it can
        cache at start-up). Nodes are keyed owner * N + node, so one sort orders every block."""
        n_all, count = self.num_nodes, len(seeds)
        keys = np.arange(count, dtype=np.int64) * n_all + seeds
        depth = np.zeros(count, dtype=np.int64)
        front = keys
        for hop in range(1, hops + 1):
            pos, lens = self.segments(front % n_all)
            reached = np.unique(np.repeat(front // n_all, lens) * n_all + self.indices[pos])
            front = reached[~_sorted_find(np.sort(keys), reached)[1]]
            if not len(front):
                break
            keys, depth = np.concatenate([keys, front]), np.concatenate([depth, np.full(len(front), hop)])
        keys = keys[np.lexsort((keys, depth, keys // n_all))]  # owner, then hop, then node: k_hop's order
        owner, nodes = keys // n_all, keys % n_all
        starts = np.searchsorted(owner, np.arange(count + 1))
        local = np.arange(len(keys)) - starts[owner]
        pos, lens = self.segments(nodes)
        entry_keys = np.repeat(owner, lens) * n_all + self.indices[pos]
        by_key = np.argsort(keys)
        at, inside = _sorted_find(keys[by_key], entry_keys)
        rows, cols, weights = np.repeat(local, lens)[inside], local[by_key[at[inside]]], self.weights[pos[inside]]
        cuts = np.searchsorted(np.repeat(owner, lens)[inside], np.arange(count + 1))
        out = []
        for b in range(count):  # copies, so a cached block does not keep the batch alive
            n, e = slice(starts[b], starts[b + 1]), slice(cuts[b], cuts[b + 1])
            out.append((nodes[n].copy(), BlockAdj.of(int(starts[b + 1] - starts[b]), rows[e], cols[e], weights[e])))
        return out


@dataclass(frozen=True)
class BlockAdj:
    """A block's propagation entries kept sparse: adj[row[e], col[e]] = weight[e] over `n` local
    nodes, row and col uint16 [e] (int32 past 65,536 nodes), weight float32 [e]. A block holds
    about fan-out entries per row, so this is several times smaller than the dense [n, n] the
    student takes, and densifying it costs microseconds (the service caches blocks this way)."""

    n: int
    row: npt.NDArray[np.unsignedinteger | np.signedinteger]
    col: npt.NDArray[np.unsignedinteger | np.signedinteger]
    weight: F32

    @classmethod
    def of(cls, n: int, row: I64, col: I64, weight: F32) -> BlockAdj:
        """Entries over `n` local nodes, copied into the stored dtypes."""
        index = np.uint16 if n <= 1 << 16 else np.int32
        return cls(n, row.astype(index), col.astype(index), weight.astype(np.float32))

    @classmethod
    def among(cls, nodes: I64, local: I64, cols: I64, weights: F32) -> BlockAdj:
        """Entries (local row [e], source node id [e], weight [e]) of rows of `nodes` [n], keeping
        those whose source is in `nodes` too (in order: a repeated entry keeps the last weight)."""
        n = len(nodes)
        order = np.argsort(nodes)
        at, inside = _sorted_find(nodes[order], cols)
        return cls.of(n, local[inside], order[at[inside]], weights[inside])

    @classmethod
    def new_node(cls, existing: BlockAdj, row: F32) -> BlockAdj:
        """A new node's block: the node at local row 0 with P row `row` [1 + k] over itself and its
        kept neighbours (rows 1..k: k_hop puts the seeds first), `existing` shifted to rows 1..n-1."""
        return cls.of(existing.n + 1, np.concatenate([np.zeros(len(row), np.int64), existing.row.astype(np.int64) + 1]),
                      np.concatenate([np.arange(len(row)), existing.col.astype(np.int64) + 1]),
                      np.concatenate([row.astype(np.float32), existing.weight]))

    @property
    def nbytes(self) -> int:
        return int(self.row.nbytes + self.col.nbytes + self.weight.nbytes)

    def dense(self) -> F32:
        """float32 [n, n], 0 where P has no entry."""
        adj = np.zeros((self.n, self.n), dtype=np.float32)
        adj[self.row, self.col] = self.weight
        return adj

    def write(self, out: F32, start: int) -> None:
        """Write the entries into out[start:start + n, start:start + n] (a block-diagonal pack)."""
        out[start:start + self.n, start:start + self.n][self.row, self.col] = self.weight


def kept_neighbours(neighbours: I64, num_nodes: int, fanout: int, seed: int) -> I64:
    """At most `fanout` of a new node's (internal) neighbours, the new node taking index N: lowest
    edge_rank(j, N) first, ties by j; duplicates count once -> int64 [k]."""
    unique = np.unique(neighbours)
    rank = edge_rank(unique, np.full(len(unique), num_nodes, dtype=np.int64), seed)
    return unique[np.lexsort((unique, rank))[:fanout]]


def new_node_row(kept: I64, kind: Propagation, degree: I64) -> F32:
    """P's row of a new node over [itself, *kept] -> float32 [1 + k] (docs/bundle.md, step 4)."""
    row = np.zeros(len(kept) + 1, dtype=np.float32)
    if kind == "gcn":
        d_new = len(kept) + 1
        row[0] = 1.0 / d_new
        row[1:] = 1.0 / np.sqrt(d_new * degree[kept].astype(np.float64))
    elif kind == "mean" and len(kept):
        row[1:] = 1.0 / len(kept)
    elif kind == "attention":
        row[:] = 1.0 / (len(kept) + 1)  # the teacher never scored a new node's edges: uniform
    return row


def new_node_entries(csr: CSR, kept: I64, k_hops: int, kind: Propagation) -> tuple[I64, BlockAdj]:
    """The block of a new node (row 0) linked to `kept` -> (existing nodes [n-1], its entries).
    Existing rows do not see the new node, which is why their scores stay what they were."""
    existing = csr.k_hop(kept, k_hops - 1)
    return existing, BlockAdj.new_node(csr.block_adj(existing), new_node_row(kept, kind, csr.degree))


def new_node_block(csr: CSR, kept: I64, k_hops: int, kind: Propagation) -> tuple[I64, F32]:
    """`new_node_entries` with the dense adj [n, n]."""
    existing, adj = new_node_entries(csr, kept, k_hops, kind)
    return existing, adj.dense()


def in_degree(src: I64, dst: I64, num_nodes: int) -> I64:
    """Distinct in-neighbours of every node in the raw graph (before pruning), self-loops and
    duplicate edges not counted -> int64 [N]. A new node's in-degree is its distinct given
    neighbours, the same count (`new_node_degree`)."""
    return np.bincount(distinct_in_edges(src, dst, num_nodes)[1], minlength=num_nodes).astype(np.int64)


def distinct_in_edges(src: I64, dst: I64, num_nodes: int) -> tuple[I64, I64]:
    """The raw graph's distinct edges without self-loops, the neighbour set `in_degree` counts and the
    neighbour mean averages: src, dst int64 [E] -> (sources [E'], targets [E']), sorted by source."""
    loop = src == dst
    keys = np.unique(src[~loop] * np.int64(num_nodes) + dst[~loop])
    return keys // num_nodes, keys % num_nodes


def new_node_degree(neighbours: I64) -> I64:
    """The in-degree of a new node with these (internal) neighbours -> int64 [1]."""
    return np.array([len(np.unique(neighbours))], dtype=np.int64)


def neighbour_mean(src: I64, dst: I64, features: F32, num_nodes: int) -> F32:
    """Mean raw feature row of every node's distinct in-neighbours in the raw graph (before pruning;
    the neighbour set `in_degree` counts: self-loops and duplicate edges out), zeros for a node
    without any. src, dst int64 [E], features float32 [N, F] -> float32 [N, F]. Summed in float64,
    one column at a time (E x F float64 at once would not fit for a dense graph)."""
    s, d = distinct_in_edges(src, dst, num_nodes)
    count = np.maximum(np.bincount(d, minlength=num_nodes), 1).astype(np.float64)
    x = np.asarray(features, dtype=np.float32)
    out = np.empty((num_nodes, x.shape[1]), dtype=np.float32)
    for j in range(x.shape[1]):
        out[:, j] = np.bincount(d, weights=x[s, j], minlength=num_nodes) / count
    return out


def propagated(features: F32, mean: F32, restart: float) -> F32:
    """The rows a node passes to its out-neighbours' mean: r x + (1 - r) m for features [n, F] and
    their stored mean [n, F] -> float32 [n, F]; the raw features themselves at restart 1."""
    if restart >= 1.0:
        return np.asarray(features, dtype=np.float32)
    rows: F32 = (restart * np.asarray(features, np.float64)
                 + (1.0 - restart) * np.asarray(mean, np.float64)).astype(np.float32)
    return rows


def new_node_mean(neighbour_features: F32) -> F32:
    """The neighbour mean of a new node from its DISTINCT neighbours' rows [m, F] (their `propagated`
    rows; the caller deduplicates, as `new_node_degree` counts) -> float32 [1, F]; zeros when m == 0."""
    rows = np.asarray(neighbour_features, dtype=np.float64)
    if not len(rows):
        return np.zeros((1, rows.shape[1]), dtype=np.float32)
    mean: F32 = rows.mean(axis=0, keepdims=True).astype(np.float32)
    return mean


def node_inputs(features: F32, degree: I64 | None, mean: F32 | None = None) -> F32:
    """The student's input rows: features [n, F], with `mean` [n, F] (the policy's mean_input) and
    `degree` [n] (degree_input) the columns [features | mean | log1p(degree)] -> float32 [n, F (+F) (+1)].
    The degree column stays last. Log: degrees are heavy-tailed; the model sees scale."""
    parts = [np.asarray(features, dtype=np.float32)]
    if mean is not None:
        parts.append(np.asarray(mean, dtype=np.float32))
    if degree is not None:
        parts.append(np.log1p(degree.astype(np.float64)).astype(np.float32)[:, None])
    out: F32 = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
    return out
