"""Scoring a request: resolve ids, fetch cached blocks (or build new-node blocks), pack them
block-diagonally into few onnxruntime calls, softmax. No HTTP here, so bench/latency.py can time it."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt

from bundle.ids import NodeKey, to_array
from serve.errors import InvalidFeatures, ModelOutputInvalid, NewNodesUnsupported, UnknownNeighbors, UnknownNodes
from serve.graph import Block, BlockCache, GraphStore
from serve.model import Model, softmax
from serve.temporal_store import NO_NEW_NODES, TemporalGraph
from serve.typed import Links, TypedLinks, no_links

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
log = logging.getLogger("serve")


@dataclass(frozen=True)
class NewNode:
    """A node outside the graph: raw features [F] and external ids of existing neighbours (of the
    bundle's id kind: the routes check it), or, in a typed bundle, `links` by node type (serve/typed.py)
    that expand to its meta-path neighbours."""

    features: Sequence[float]
    neighbors: Sequence[NodeKey]
    links: Links | None = None


@dataclass(frozen=True)
class Scores:
    """logits and probabilities float32 [b, C], labels int64 [b] (existing nodes first, then new
    nodes, each in request order) and the seconds spent in the cache / inference stages."""

    logits: F32
    probabilities: F32
    labels: I64
    cache_s: float
    inference_s: float


class Scorer:
    """Everything needed to score: the graph store, the block cache and the model."""

    def __init__(self, store: GraphStore, cache: BlockCache, model: Model, pack_nodes: int,
                 typed: TypedLinks | None = None) -> None:
        self.store, self.cache, self.model, self.pack_nodes = store, cache, model, pack_nodes
        self.typed = typed  # a meta-path bundle's node types (new nodes may send `links`)

    def score(self, node_ids: Sequence[NodeKey], new_nodes: Sequence[NewNode] = (), as_of: float | None = None,
              ) -> Scores:
        """Validate everything first (so a bad request costs no inference), then score. Ids are of the
        bundle's kind (store.id_type; bundle.ids.IdError, a ValueError, otherwise). `as_of` (unix
        seconds): see only logged edges up to then (None: all; a temporal bundle: as of its latest
        edge time, serve/temporal_store.py)."""
        started = time.perf_counter()
        if new_nodes and isinstance(self.store, TemporalGraph):
            raise NewNodesUnsupported(NO_NEW_NODES, {"new_nodes": len(new_nodes)})
        internal = self._resolve(to_array(node_ids, self.store.id_type))
        new = [self._resolve_new(i, node) for i, node in enumerate(new_nodes)]
        # `as_of`: the graph as it was then (serve/dynamic.py), built per request; the cache holds the current one.
        past = None if as_of is None else self.store.past(as_of)
        if past is None:
            blocks = [self.cache.get(int(i)) for i in internal]
            blocks += [self.store.new_node_block(x, nbrs) for x, nbrs in new]
        else:
            blocks = [past.block(int(i)) for i in internal] + [past.new_node_block(x, nbrs) for x, nbrs in new]
        fetched = time.perf_counter()
        logits = self.run_blocks(blocks)
        probs = _softmax(logits)
        if not np.isfinite(probs).all():
            self._blame(blocks, probs, first_new=len(internal))
        done = time.perf_counter()
        return Scores(logits, probs, probs.argmax(axis=1).astype(np.int64), fetched - started, done - fetched)

    def _resolve(self, ids: npt.NDArray[Any]) -> I64:
        internal, unknown = self.store.lookup(ids)
        if len(unknown):
            raise UnknownNodes(f"{len(unknown)} node id(s) are not in the graph",
                               {"unknown_node_ids": unknown[:100].tolist()})
        return internal

    def _resolve_new(self, index: int, node: NewNode) -> tuple[F32, I64]:
        x = np.asarray(node.features, dtype=np.float64)
        if x.shape != (self.store.num_features,):
            taker = "the model takes" if self.typed is None else f"a new {self.typed.target} takes"
            raise InvalidFeatures(f"new_nodes[{index}].features has {x.size} values; {taker} "
                                  f"{self.store.num_features}", {"index": index})
        # Finite as float64 is not enough: 1e39 overflows float32 to inf inside the model.
        with np.errstate(over="ignore"):
            x32 = x.astype(np.float32)
        if not np.isfinite(x32).all():
            raise InvalidFeatures(f"new_nodes[{index}].features must be finite float32 values", {"index": index})
        if node.links is not None:
            if self.typed is None:
                raise no_links(index)
            return x32, self.typed.neighbours(index, node.links)
        internal, unknown = self.store.lookup(to_array(node.neighbors, self.store.id_type))
        if len(unknown):
            raise UnknownNeighbors(f"new_nodes[{index}] names {len(unknown)} neighbour id(s) not in the graph",
                                   {"index": index, "unknown_neighbor_ids": unknown[:100].tolist()})
        return x32, internal

    def _blame(self, blocks: Sequence[Block], probabilities: F32, first_new: int) -> NoReturn:
        """Non-finite scores, never served (they would go out as `null` in a 200). Inputs are finite
        float32, but a new node's large values can still overflow inside the model, and in a packed
        call its inf reaches the other blocks' rows (0 * inf); so each new node is rerun alone (only
        on this error path). One that overflows alone is the client's: 422 invalid_features. Else the
        model is to blame (non-finite weights): 503 model_output_invalid, logged for the operator."""
        for i in range(first_new, len(blocks)):
            if not np.isfinite(_softmax(self.run_blocks([blocks[i]]))).all():
                index = i - first_new
                raise InvalidFeatures(f"new_nodes[{index}].features overflow inside the model; the values are "
                                      "too large for it (rescale them like the training features)", {"index": index})
        rows = np.flatnonzero(~np.isfinite(probabilities).all(axis=1))
        log.error("model output is not finite for %d of %d rows", len(rows), len(probabilities))
        raise ModelOutputInvalid(f"the model produced non-finite scores for {len(rows)} of the "
                                 f"{len(probabilities)} nodes; the served bundle is unusable for them",
                                 {"rows": rows[:100].tolist()})

    def run_blocks(self, blocks: Sequence[Block]) -> F32:
        """Logits of each block's target row -> float32 [len(blocks), C]."""
        out = np.empty((len(blocks), self.model.num_classes), dtype=np.float32)
        for group in self._groups(blocks):
            x, adj, rows = self._pack([blocks[i] for i in group])
            out[group] = self.model.logits(x, adj)[rows]
        return out

    def _groups(self, blocks: Sequence[Block]) -> Iterator[list[int]]:
        """Consecutive runs of blocks with at most `pack_nodes` rows together (a bigger block runs
        alone). One call per block costs a session.run each; one call for everything costs a dense
        adj quadratic in the total rows. Packing up to a cap keeps both small."""
        group: list[int] = []
        rows = 0
        for i, block in enumerate(blocks):
            if group and rows + block.size > self.pack_nodes:
                yield group
                group, rows = [], 0
            group.append(i)
            rows += block.size
        if group:
            yield group

    def _features(self, block: Block) -> F32:
        return block.x if block.x is not None else self.store.inputs(block.nodes)

    def _pack(self, blocks: Sequence[Block]) -> tuple[F32, F32 | None, I64]:
        """Blocks -> x [n, F], block-diagonal adj [n, n] (None for graph-free; [R, n, n] for a
        temporal student, block-diagonal per relation), target rows [b]."""
        if len(blocks) == 1:
            b = blocks[0]
            return self._features(b), b.dense(), np.array([b.target], dtype=np.int64)
        sizes = np.array([b.size for b in blocks], dtype=np.int64)
        starts = np.cumsum(sizes) - sizes
        x = np.concatenate([self._features(b) for b in blocks])
        rows = starts + np.array([b.target for b in blocks], dtype=np.int64)
        if self.model.graph_free:
            return x, None, rows
        n = int(sizes.sum())
        if all(b.adj is not None for b in blocks):  # written straight into the pack, never densified alone
            adj = np.zeros((n, n), dtype=np.float32)
            for start, b in zip(starts.tolist(), blocks, strict=True):
                assert b.adj is not None
                b.adj.write(adj, start)
            return x, adj, rows
        dense = [b.dense() for b in blocks]  # temporal blocks: [R, n, n] from their cached edges
        first = dense[0]
        assert first is not None  # graph students: every block has one
        adj = np.zeros((*first.shape[:-2], n, n), dtype=np.float32)
        for start, b, a in zip(starts.tolist(), blocks, dense, strict=True):
            adj[..., start:start + b.size, start:start + b.size] = a
        return x, adj, rows


def _softmax(logits: F32) -> F32:
    # Huge finite logits overflow in the max-shift (to a harmless -inf) or give inf - inf = NaN, which
    # Scorer._blame reports; neither is worth a RuntimeWarning in the service log.
    with np.errstate(over="ignore", invalid="ignore"):
        return softmax(logits)


def decide(probabilities: F32, positive: int, threshold: float) -> I64:
    """Binary decisions: class `positive` (0 or 1) where its probability is >= `threshold`, else the
    other one -> int64 [b]. Compared in float64, so the threshold is used exactly as written (a
    float32 comparison would round it first); the job chooses and evaluates thresholds through this."""
    hit = probabilities[:, positive].astype(np.float64) >= threshold
    return np.where(hit, positive, 1 - positive).astype(np.int64)


def top_classes(probabilities: F32, k: int) -> I64:
    """The k most probable classes of each row, most probable first (ties: lower class index first)
    -> int64 [b, k]."""
    return np.argsort(-probabilities, axis=1, kind="stable")[:, :k].astype(np.int64)
