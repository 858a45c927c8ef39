"""The graph store and the neighbourhood policy of docs/bundle.md, in numpy.

A node's *block* is what the student runs on: the node list of its k-hop in-neighbourhood (the
target first), the dense propagation block `adj[i, j] = P[nodes[i], nodes[j]]`, and the target's
local row. Blocks of existing nodes are cached (filled at start-up while the memory budget allows,
then a bounded LRU); blocks of new nodes are built per request and never change the graph.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from serve.bundle import Bundle

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
U64 = npt.NDArray[np.uint64]
BLOCK_OVERHEAD = 400  # bytes: Block instance, two ndarray headers, the LRU's entry (measured ~350)


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


@dataclass(frozen=True)
class Block:
    """nodes int64 [n] (internal ids, -1 for a new node), adj float32 [n, n] or None for graph-free
    students, target: local row of the scored node. `x` float32 [n, F] only for new-node blocks
    (existing nodes' features are gathered from the store at scoring time, not cached)."""

    nodes: I64
    adj: F32 | None
    target: int
    x: F32 | None = None

    @property
    def size(self) -> int:
        return len(self.nodes)

    @property
    def nbytes(self) -> int:
        """Array bytes plus the Python objects around them (counted so that tiny blocks, e.g. of a
        graph-free student, cannot hold millions of entries inside a small budget)."""
        return int(BLOCK_OVERHEAD + self.nodes.nbytes + (self.adj.nbytes if self.adj is not None else 0))


class GraphStore:
    """CSR propagation matrix P (rows = targets) plus features and the external-id index."""

    def __init__(self, bundle: Bundle) -> None:
        a = bundle.arrays
        # Still backed by the mmap, but as a plain ndarray: np.memmap's Python-level __getitem__
        # costs ~20 us per gather, a tenth of a whole request.
        self.features: F32 = a["features"].view(np.ndarray)
        self.indptr: I64 = np.ascontiguousarray(a["indptr"])
        self.indices: I64 = np.ascontiguousarray(a["indices"])
        self.weights: F32 = np.ascontiguousarray(a["weights"])
        self.node_ids: I64 = np.ascontiguousarray(a["node_ids"])
        self.degree: I64 = np.diff(self.indptr)  # d[j] of the gcn new-node formula (self-loop included)
        # Dense ids (0..N-1 in order) are the common case and need no search at all.
        self._identity = bool(np.array_equal(self.node_ids, np.arange(len(self.node_ids))))
        self._order: I64 = np.argsort(self.node_ids, kind="stable")
        self._sorted: I64 = self.node_ids[self._order]
        p = bundle.policy
        self.fanout, self.k_hops, self.seed = int(p["fanout"]), int(p["k_hops"]), int(p["seed"])
        self.propagation = str(p["propagation"])
        self.graph_free = self.propagation == "none"

    @property
    def num_nodes(self) -> int:
        return len(self.node_ids)

    @property
    def num_features(self) -> int:
        return int(self.features.shape[1])

    @property
    def max_block_nodes(self) -> int:
        """Policy bound on a block's size: 1 + K + ... + K^L."""
        return sum(self.fanout**h for h in range(self.k_hops + 1))

    def lookup(self, ids: I64) -> tuple[I64, I64]:
        """External ids [b] -> (internal indices [b], -1 where unknown; the unknown ids, unique)."""
        if self._identity:
            idx = np.where((ids >= 0) & (ids < self.num_nodes), ids, -1)
        else:
            pos = np.minimum(np.searchsorted(self._sorted, ids), self.num_nodes - 1)
            idx = np.where(self._sorted[pos] == ids, self._order[pos], -1)
        return idx.astype(np.int64), np.unique(ids[idx < 0])

    def _segments(self, rows: I64) -> tuple[I64, I64]:
        """CSR positions of all entries of `rows` [r] -> (positions [e], entries per row [r])."""
        starts = self.indptr[rows]
        lens = self.indptr[rows + 1] - starts
        shift = np.repeat(starts - (np.cumsum(lens) - lens), lens)
        return np.arange(int(lens.sum()), dtype=np.int64) + shift, lens

    def k_hop(self, seeds: I64, hops: int) -> I64:
        """Seeds (unique, kept first, in order) plus every node within `hops` steps backwards
        along P (row -> its indices), each later hop sorted -> int64 [n]."""
        nodes, frontier = seeds, seeds
        for _ in range(hops):
            pos, _ = self._segments(frontier)
            reached = np.unique(self.indices[pos])
            frontier = np.setdiff1d(reached, nodes, assume_unique=True)
            if not len(frontier):
                break
            nodes = np.concatenate([nodes, frontier])
        return nodes

    def dense_block(self, nodes: I64) -> F32:
        """adj float32 [n, n] with adj[i, j] = P[nodes[i], nodes[j]] (0 where P has no entry)."""
        n = len(nodes)
        pos, lens = self._segments(nodes)
        rows = np.repeat(np.arange(n), lens)
        cols = self.indices[pos]
        order = np.argsort(nodes)
        at = np.minimum(np.searchsorted(nodes[order], cols), n - 1)
        inside = nodes[order][at] == cols
        adj = np.zeros((n, n), dtype=np.float32)
        adj[rows[inside], order[at[inside]]] = self.weights[pos[inside]]
        return adj

    def block(self, node: int) -> Block:
        """The cached-neighbourhood block of existing internal node `node` (target at row 0)."""
        nodes = self.k_hop(np.array([node], dtype=np.int64), self.k_hops)
        return Block(nodes, None if self.graph_free else self.dense_block(nodes), 0)

    def kept_neighbors(self, neighbors: I64) -> I64:
        """At most `fanout` of the (internal, deduplicated) neighbours of a new node with index N,
        by lowest edge_rank(j, N), ties by j -> int64 [k]."""
        unique = np.unique(neighbors)
        rank = edge_rank(unique, np.full(len(unique), self.num_nodes, dtype=np.int64), self.seed)
        return unique[np.lexsort((unique, rank))[: self.fanout]]

    def new_node_block(self, features: F32, neighbors: I64) -> Block:
        """Block of a new node (row 0) with features [F] and internal neighbour indices [m]."""
        x_new = features.reshape(1, -1).astype(np.float32)
        if self.graph_free:
            return Block(np.array([-1], dtype=np.int64), None, 0, x_new)
        kept = self.kept_neighbors(neighbors)
        existing = self.k_hop(kept, self.k_hops - 1)
        n = len(existing) + 1
        adj = np.zeros((n, n), dtype=np.float32)
        adj[1:, 1:] = self.dense_block(existing)  # existing rows do not see the new node
        adj[0, : len(kept) + 1] = self.new_row(kept)  # kept sit at rows 1..k by k_hop's order
        x = np.concatenate([x_new, np.asarray(self.features[existing], dtype=np.float32)])
        return Block(np.concatenate([[-1], existing]).astype(np.int64), adj, 0, x)

    def new_row(self, kept: I64) -> F32:
        """P's row of a new node over [itself, *kept] -> float32 [1 + k] (docs/bundle.md, step 4)."""
        row = np.zeros(len(kept) + 1, dtype=np.float32)
        if self.propagation == "gcn":
            d_new = len(kept) + 1
            row[0] = 1.0 / d_new
            row[1:] = 1.0 / np.sqrt(d_new * self.degree[kept].astype(np.float64))
        elif self.propagation == "mean" and len(kept):
            row[1:] = 1.0 / len(kept)
        elif self.propagation == "attention":
            # The teacher never scored a new node's edges: uniform attention over itself and kept.
            row[:] = 1.0 / (len(kept) + 1)
        return row


class BlockCache:
    """Thread-safe LRU of existing nodes' blocks, bounded by bytes. `fill` precomputes blocks at
    start-up until the budget is used, so small graphs are served entirely from memory."""

    def __init__(self, store: GraphStore, budget_bytes: int) -> None:
        self.store = store
        self.budget = budget_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._lru: OrderedDict[int, Block] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._lru)

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def fill(self) -> int:
        """Precompute blocks in node order until the budget is reached -> number cached."""
        for node in range(self.store.num_nodes):
            if not self._put(node, self.store.block(node), evict=False):
                break
        return len(self._lru)

    def get(self, node: int) -> Block:
        with self._lock:
            block = self._lru.get(node)
            if block is not None:
                self._lru.move_to_end(node)
                self.hits += 1
                return block
            self.misses += 1
        block = self.store.block(node)  # built outside the lock: misses do not serialise hits
        self._put(node, block, evict=True)
        return block

    def _put(self, node: int, block: Block, evict: bool) -> bool:
        with self._lock:
            if node in self._lru or block.nbytes > self.budget:
                return node in self._lru
            while evict and self._lru and self.bytes + block.nbytes > self.budget:
                self.bytes -= self._lru.popitem(last=False)[1].nbytes
            if self.bytes + block.nbytes > self.budget:
                return False
            self._lru[node] = block
            self.bytes += block.nbytes
            return True

    def stats(self) -> dict[str, Any]:
        return {"entries": len(self), "bytes": self.bytes, "budget_bytes": self.budget,
                "hits": self.hits, "misses": self.misses, "hit_ratio": self.hit_ratio}
