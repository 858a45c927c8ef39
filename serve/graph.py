"""The service's view of the graph store: blocks (cached neighbourhoods) and their LRU cache.

A node's *block* is what the student runs on: the node list of its k-hop in-neighbourhood (the
target first), the propagation block `adj[i, j] = P[nodes[i], nodes[j]]` (kept sparse: a dense
[n, n] per cached node held several times the bytes, and at Tolokers size the default budget then
fitted two thirds of the blocks), and the target's local row. Every rule of the policy (pruning,
k-hop, block entries, new-node rows) is the contract's (`bundle.policy`); this module only decides
what to keep in memory. Blocks of existing nodes are cached (filled at start-up while the memory
budget allows, then a bounded LRU); blocks of new nodes are built per request and never change the
graph.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from bundle import ids as id_rules
from bundle import policy as kernels
from bundle.files import GraphArrays
from bundle.manifest import Policy

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
FILL_BATCH = 256  # blocks built together at start-up (bundle.policy.CSR.blocks); at most this many wasted
BLOCK_OVERHEAD = 400  # bytes: Block instance, an ndarray header, the LRU's entry (measured ~330)
ADJ_OVERHEAD = 400  # bytes: a BlockAdj instance and its three ndarray headers (~430 more, measured)


@dataclass(frozen=True)
class Block:
    """nodes int64 [n] (internal ids, -1 for a new node), adj: its [n, n] entries (None for graph-free
    students), target: local row of the scored node. `x` float32 [n, F] only for new-node blocks
    (existing nodes' features are gathered from the store at scoring time, not cached)."""

    nodes: I64
    adj: kernels.BlockAdj | None
    target: int
    x: F32 | None = None

    @property
    def size(self) -> int:
        return len(self.nodes)

    @property
    def nbytes(self) -> int:
        """Array bytes plus the Python objects around them (counted so that tiny blocks, e.g. of a
        graph-free student, cannot hold millions of entries inside a small budget)."""
        adj = 0 if self.adj is None else ADJ_OVERHEAD + self.adj.nbytes
        return int(BLOCK_OVERHEAD + self.nodes.nbytes + adj)

    def dense(self) -> F32 | None:
        """The adj the student takes: float32 [n, n] (None for graph-free students)."""
        return None if self.adj is None else self.adj.dense()


class PastGraph(Protocol):
    """The graph as of a past time (serve/dynamic.py): blocks built per request, inputs included."""

    def block(self, node: int) -> Block: ...

    def new_node_block(self, features: F32, neighbors: I64) -> Block: ...


def with_added(found: tuple[I64, npt.NDArray[Any]], ids: npt.NDArray[Any],
               added: dict[Any, int]) -> tuple[I64, npt.NDArray[Any]]:
    """A bundle lookup's (internal indices [b], unknown ids) completed with the nodes added by graph
    writes since the bundle (`added`: external id -> internal index; a dict, since they are few)."""
    idx, unknown = found
    if len(unknown) and added:
        for pos in np.flatnonzero(idx < 0).tolist():
            idx[pos] = added.get(ids[pos].item(), -1)
        unknown = np.unique(ids[idx < 0])
    return idx, unknown

class GraphStore:
    """The bundle's CSR propagation matrix P (rows = targets), features and external-id index."""

    def __init__(self, g: GraphArrays, policy: Policy) -> None:
        self.features: F32 = g.features
        self.in_degree: I64 | None = g.in_degree if policy.degree_input else None
        self.neighbour_mean: F32 | None = g.neighbour_mean if policy.mean_input else None
        self.csr = g.csr
        self.node_ids: npt.NDArray[Any] = g.node_ids  # int64, or <U{w} strings (bundle.ids)
        self.index = id_rules.IdIndex(g.node_ids)
        self.policy = policy
        self.graph_free = self.policy.graph_free

    @property
    def num_nodes(self) -> int:
        return len(self.node_ids)

    @property
    def num_features(self) -> int:
        return int(self.features.shape[1])

    @property
    def id_type(self) -> id_rules.IdType:
        return self.index.id_type

    @property
    def max_block_nodes(self) -> int:
        return self.policy.max_nodes

    def lookup(self, ids: npt.NDArray[Any]) -> tuple[I64, npt.NDArray[Any]]:
        """External ids [b] of the bundle's kind (bundle.ids.to_array) -> (internal indices [b], -1
        where unknown; the unknown ids, unique)."""
        return self.index.lookup(ids)

    def block(self, node: int) -> Block:
        """The cached-neighbourhood block of existing internal node `node` (target at row 0)."""
        nodes = self.csr.k_hop(np.array([node], dtype=np.int64), self.policy.k_hops)
        return Block(nodes, None if self.graph_free else self.csr.block_adj(nodes), 0)

    def blocks(self, nodes: I64) -> Iterator[Block]:
        """The blocks of existing internal nodes [b], built together (BlockCache.fill): equal to
        `block` of each node. A grown or temporal graph's blocks are its own: built one at a time,
        as they are consumed (a fill that stops builds no more)."""
        if self.graph_free or type(self).block is not GraphStore.block:
            return (self.block(int(node)) for node in nodes)
        return (Block(hood, adj, 0) for hood, adj in self.csr.blocks(nodes, self.policy.k_hops))

    def inputs(self, nodes: I64) -> F32:
        """The student's input rows of existing nodes [n] -> float32 [n, F] (plus the policy's
        neighbour-mean columns [F] and degree column [1], when it has them)."""
        degree = None if self.in_degree is None else self.in_degree[nodes]
        mean = None if self.neighbour_mean is None else self.neighbour_mean[nodes]
        return kernels.node_inputs(self.features[nodes], degree, mean)

    def new_node_inputs(self, features: F32, neighbors: I64) -> F32:
        """The input row of a new node with features [F] and internal neighbour indices [m] (repeats
        allowed): degree and mean over its distinct neighbours -> float32 [1, width]."""
        degree = None if self.in_degree is None else kernels.new_node_degree(neighbors)
        mean = None if self.neighbour_mean is None else kernels.new_node_mean(self.passed(np.unique(neighbors)))
        return kernels.node_inputs(features.reshape(1, -1), degree, mean)

    def passed(self, nodes: I64) -> F32:
        """What existing nodes [n] pass to their out-neighbours' mean (bundle.policy.propagated under the
        policy's mean_restart) -> float32 [n, F]; needs the neighbour mean."""
        assert self.neighbour_mean is not None  # callers check the policy's mean_input
        return kernels.propagated(self.features[nodes], self.neighbour_mean[nodes], self.policy.mean_restart)

    def new_node_block(self, features: F32, neighbors: I64) -> Block:
        """Block of a new node (row 0) with features [F] and internal neighbour indices [m]."""
        x_new = self.new_node_inputs(features, neighbors)
        if self.graph_free:
            return Block(np.array([-1], dtype=np.int64), None, 0, x_new)
        p = self.policy
        kept = kernels.kept_neighbours(neighbors, self.num_nodes, p.fanout, p.seed)
        existing, adj = kernels.new_node_entries(self.csr, kept, p.k_hops, p.propagation)
        x = np.concatenate([x_new, self.inputs(existing)])
        return Block(np.concatenate([[-1], existing]).astype(np.int64), adj, 0, x)


    def past(self, as_of: float) -> PastGraph | None:
        """The graph as of `as_of`, or None when it is the current one: a bundle's edges count at
        every time; only a store that grows (serve/dynamic.py) has a past."""
        return None


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
        self.generation = 0  # bumped by `invalidate`: a block built before a graph write is not cached

    def __len__(self) -> int:
        return len(self._lru)

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def fill(self) -> int:
        """Precompute blocks in node order until the budget is reached -> number cached."""
        n = self.store.num_nodes
        for start in range(0, n, FILL_BATCH):
            batch = np.arange(start, min(start + FILL_BATCH, n), dtype=np.int64)
            for node, block in zip(batch.tolist(), self.store.blocks(batch), strict=True):
                if not self._put(node, block, evict=False):
                    return len(self._lru)
        return len(self._lru)

    def get(self, node: int) -> Block:
        with self._lock:
            block = self._lru.get(node)
            if block is not None:
                self._lru.move_to_end(node)
                self.hits += 1
                return block
            self.misses += 1
            generation = self.generation
        block = self.store.block(node)  # built outside the lock: misses do not serialise hits
        if generation == self.generation:
            self._put(node, block, evict=True)
        return block

    def invalidate(self, nodes: I64) -> int:
        """Drop the blocks of `nodes` [n] (the graph changed under them) -> how many were cached."""
        dropped = 0
        with self._lock:
            self.generation += 1
            for node in nodes.tolist():
                block = self._lru.pop(node, None)
                if block is not None:
                    self.bytes -= block.nbytes
                    dropped += 1
        return dropped

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
