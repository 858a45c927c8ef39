"""The temporal neighbourhood policy, in numpy: the one implementation training, export, evaluation
and serving use for graphs whose edges carry a time and a signed rating.

Every question is asked *as of* a time t and sees only edges with time <= t: nothing later can
reach a feature, a neighbourhood or a prediction (tests/bundle/test_temporal.py plants future edges
and checks that). Features are relative to t (ages, counts, ratings), never absolute times, ids or
the size of the graph, which encode join order.

The store keeps the edges twice in CSR form, grouped by destination ("received") and by source
("given"), each group sorted by time ascending. "Edges of v with time <= t" is then a prefix of v's
group found by one binary search, and prefix sums / running minima precomputed per group give every
rating statistic of that prefix in O(1). A store is immutable; `extended` returns a new one with
more edges (a rebuild, O(E log E): milliseconds at 10^5 edges).

Node features (`FEATURES`, 18 columns, float32), per side s in (received, given):
  s_log_count       log1p(edges of the side with time <= t)
  s_mean, s_min, s_max, s_std   of their ratings, divided by RATING_SCALE (0 without edges)
  s_frac_negative   share of ratings < 0
  s_log_first_age, s_log_last_age   log1p((t - time of first / last such edge) / 86400), in days
  s_log_distinct    log1p(distinct other endpoints)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]

RATING_SCALE = 10.0
DAY_SECONDS = 86400.0
SIDES = ("received", "given")
_STATS = ("log_count", "mean", "min", "max", "std", "frac_negative", "log_first_age", "log_last_age", "log_distinct")
FEATURES: tuple[str, ...] = tuple(f"{side}_{stat}" for side in SIDES for stat in _STATS)
# Relations of a block's adjacency, in this order: row i averages over the neighbours j that ...
RELATIONS: tuple[str, ...] = ("received_positive", "received_negative", "given_positive", "given_negative")


@dataclass(frozen=True)
class TemporalPolicy:
    """Which neighbourhood a node has as of t: up to `fanout` most recent edges with time <= t per
    node and direction (in-edges "received", and out-edges "given" when `both_directions`), expanded
    `k_hops` times. Edges at the same second are ordered by neighbour index (the higher one counts as
    more recent), so a block is deterministic."""

    fanout: int = 10
    k_hops: int = 2
    both_directions: bool = True

    def __post_init__(self) -> None:
        if self.fanout < 1 or self.k_hops < 1:
            raise ValueError(f"bad temporal policy {self}: fanout and k_hops must be >= 1")

    def max_nodes(self) -> int:
        """Bound on a block's node count: sum over hops h of (fanout * directions)^h."""
        width = self.fanout * (2 if self.both_directions else 1)
        return sum(width**h for h in range(self.k_hops + 1))


@dataclass(frozen=True)
class _Side:
    """One CSR view: edges grouped by `owner`, time ascending. `other` is the far endpoint."""

    indptr: I64
    other: I64
    time: F64
    rating: F32
    edge: I64  # position in the store's edge arrays
    cum_rating: F64  # [E + 1] prefix sums in CSR order
    cum_square: F64
    cum_negative: F64
    cum_first_seen: F64  # 1 where `other` appears for the first time in its group
    run_min: F32  # running min / max of the rating from the group start
    run_max: F32


def _build_side(owner: I64, other: I64, time: F64, rating: F32, num_nodes: int) -> _Side:
    order = np.lexsort((other, time, owner)).astype(np.int64)  # last key primary: group, then time
    own, oth, tim, rat = owner[order], other[order], time[order], rating[order]
    indptr = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(own, minlength=num_nodes), out=indptr[1:])
    r64 = rat.astype(np.float64)
    pair_order = np.lexsort((np.arange(len(own)), oth, own))
    first = np.ones(len(own), dtype=bool)
    same = (own[pair_order][1:] == own[pair_order][:-1]) & (oth[pair_order][1:] == oth[pair_order][:-1])
    first[pair_order[1:][same]] = False
    starts = np.repeat(indptr[:-1], np.diff(indptr))
    return _Side(
        indptr=indptr, other=oth, time=tim, rating=rat, edge=order,
        cum_rating=np.r_[0.0, np.cumsum(r64)], cum_square=np.r_[0.0, np.cumsum(r64 * r64)],
        cum_negative=np.r_[0.0, np.cumsum(r64 < 0)], cum_first_seen=np.r_[0.0, np.cumsum(first)],
        run_min=_segment_running(rat, starts, np.minimum), run_max=_segment_running(rat, starts, np.maximum),
    )


def _segment_running(values: F32, starts: I64, op: np.ufunc) -> F32:
    """Running op (min / max) of `values` restarting at each group start; groups are contiguous.
    A Hillis-Steele scan: log2(longest group) vectorised passes, each combining a position with the
    one `shift` back in its group. min / max are exact, so this equals the one-by-one loop; the
    service rebuilds a store on every batch of graph writes, and the loop took ~100 ms at 35k edges."""
    out = values.copy()
    position = np.arange(len(values), dtype=np.int64)
    shift = 1
    while True:
        back = position - shift
        inside = np.flatnonzero(back >= starts)
        if not len(inside):
            return out
        out[inside] = op(out[inside], out[back[inside]])
        shift *= 2


@dataclass(frozen=True)
class TemporalStore:
    """Time-stamped signed edges src -> dst over nodes 0..num_nodes-1 (src, dst int64 [E], time
    float64 [E] in seconds, rating float32 [E]), with CSR views by destination and by source."""

    src: I64
    dst: I64
    time: F64
    rating: F32
    num_nodes: int
    received: _Side = field(repr=False)
    given: _Side = field(repr=False)

    @staticmethod
    def from_arrays(src: npt.ArrayLike, dst: npt.ArrayLike, time: npt.ArrayLike, rating: npt.ArrayLike,
                    num_nodes: int) -> TemporalStore:
        """Build a store; raises ValueError on mismatched lengths, ids out of range or non-finite times."""
        s, d = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
        t, r = np.asarray(time, dtype=np.float64), np.asarray(rating, dtype=np.float32)
        if not (len(s) == len(d) == len(t) == len(r)):
            raise ValueError(f"edge arrays differ in length: {len(s)}, {len(d)}, {len(t)}, {len(r)}")
        if len(s) and (min(s.min(), d.min()) < 0 or max(s.max(), d.max()) >= num_nodes):
            raise ValueError(f"edge endpoints must lie in 0..{num_nodes - 1}")
        if not (np.isfinite(t).all() and np.isfinite(r).all()):
            raise ValueError("edge times and ratings must be finite")
        return TemporalStore(s, d, t, r, num_nodes, _build_side(d, s, t, r, num_nodes),
                             _build_side(s, d, t, r, num_nodes))

    def extended(self, src: npt.ArrayLike, dst: npt.ArrayLike, time: npt.ArrayLike, rating: npt.ArrayLike,
                 num_nodes: int | None = None) -> TemporalStore:
        """A new store with these edges appended (and optionally more nodes)."""
        return TemporalStore.from_arrays(
            np.r_[self.src, np.asarray(src, dtype=np.int64)], np.r_[self.dst, np.asarray(dst, dtype=np.int64)],
            np.r_[self.time, np.asarray(time, dtype=np.float64)],
            np.r_[self.rating, np.asarray(rating, dtype=np.float32)],
            self.num_nodes if num_nodes is None else num_nodes)

    def appended(self, src: npt.ArrayLike, dst: npt.ArrayLike, time: npt.ArrayLike, rating: npt.ArrayLike,
                 num_nodes: int | None = None) -> TemporalStore:
        """`extended`, equal array for array, without re-sorting the store: the new edges are
        inserted into each sorted CSR view (a few milliseconds for a handful of edges at 10^5 edges,
        where `extended` re-sorts everything). For the service's small groups of written edges."""
        n = self.num_nodes if num_nodes is None else num_nodes
        grown = TemporalStore(
            np.r_[self.src, np.asarray(src, dtype=np.int64)], np.r_[self.dst, np.asarray(dst, dtype=np.int64)],
            np.r_[self.time, np.asarray(time, dtype=np.float64)],
            np.r_[self.rating, np.asarray(rating, dtype=np.float32)], n, self.received, self.given)
        e = len(self.src)
        new = slice(e, len(grown.src))
        if len(grown.src) != len(grown.dst) or not (len(grown.src) == len(grown.time) == len(grown.rating)):
            raise ValueError("edge arrays differ in length")
        ends = np.r_[grown.src[new], grown.dst[new]]
        if n < self.num_nodes or (len(ends) and (ends.min() < 0 or ends.max() >= n)):
            raise ValueError(f"edge endpoints must lie in 0..{n - 1}")
        if not (np.isfinite(grown.time[new]).all() and np.isfinite(grown.rating[new]).all()):
            raise ValueError("edge times and ratings must be finite")
        ids = np.arange(e, len(grown.src), dtype=np.int64)
        return TemporalStore(grown.src, grown.dst, grown.time, grown.rating, n,
                             _insert_side(self.received, grown.dst[new], grown.src[new], grown.time[new],
                                          grown.rating[new], ids, n),
                             _insert_side(self.given, grown.src[new], grown.dst[new], grown.time[new],
                                          grown.rating[new], ids, n))


def _insert_side(side: _Side, owner: I64, other: I64, time: F64, rating: F32, ids: I64, num_nodes: int) -> _Side:
    """`side` with edges inserted where `_build_side` would sort them: after every existing edge
    with the same (owner, time, other), in `ids` order among themselves (lexsort is stable)."""
    indptr = np.r_[side.indptr, np.full(num_nodes + 1 - len(side.indptr), side.indptr[-1], dtype=np.int64)]
    order = np.lexsort((ids, other, time, owner))
    owner, other, time, rating, ids = owner[order], other[order], time[order], rating[order], ids[order]
    at = np.empty(len(owner), dtype=np.int64)
    for i, (o, t, x) in enumerate(zip(owner.tolist(), time.tolist(), other.tolist(), strict=True)):
        lo, hi = int(indptr[o]), int(indptr[o + 1])
        first = lo + int(np.searchsorted(side.time[lo:hi], t, side="left"))
        last = lo + int(np.searchsorted(side.time[lo:hi], t, side="right"))
        at[i] = first + int(np.searchsorted(side.other[first:last], x, side="right"))
    oth, tim = np.insert(side.other, at, other), np.insert(side.time, at, time)
    rat, edge = np.insert(side.rating, at, rating), np.insert(side.edge, at, ids)
    indptr = indptr + np.r_[0, np.cumsum(np.bincount(owner, minlength=num_nodes))]
    first_seen = np.insert(np.diff(side.cum_first_seen), at, 0.0)
    run_min, run_max = np.insert(side.run_min, at, rating), np.insert(side.run_max, at, rating)
    for o in np.unique(owner).tolist():  # only the touched groups change their running statistics
        lo, hi = int(indptr[o]), int(indptr[o + 1])
        first_seen[lo:hi] = 0.0
        first_seen[lo + np.unique(oth[lo:hi], return_index=True)[1]] = 1.0
        run_min[lo:hi] = np.minimum.accumulate(rat[lo:hi])
        run_max[lo:hi] = np.maximum.accumulate(rat[lo:hi])
    r64 = rat.astype(np.float64)
    return _Side(
        indptr=indptr, other=oth, time=tim, rating=rat, edge=edge,
        cum_rating=np.r_[0.0, np.cumsum(r64)], cum_square=np.r_[0.0, np.cumsum(r64 * r64)],
        cum_negative=np.r_[0.0, np.cumsum(r64 < 0)], cum_first_seen=np.r_[0.0, np.cumsum(first_seen)],
        run_min=run_min, run_max=run_max,
    )


def _prefix_ends(side: _Side, nodes: I64, t: F64) -> I64:
    """End (exclusive, CSR position) of each node's edges with time <= t: a vectorised binary search
    inside each node's group. nodes int64 [n], t float64 [n] -> int64 [n]."""
    lo, hi = side.indptr[nodes].copy(), side.indptr[nodes + 1].copy()
    while True:
        active = lo < hi
        if not active.any():
            return lo
        mid = (lo + hi) // 2
        safe = np.where(active, mid, 0)
        go_right = active & (side.time[safe] <= t) if len(side.time) else active & False
        lo = np.where(go_right, mid + 1, lo)
        hi = np.where(active & ~go_right, mid, hi)


def _side_features(side: _Side, nodes: I64, t: F64) -> F32:
    start, end = side.indptr[nodes], _prefix_ends(side, nodes, t)
    count = (end - start).astype(np.float64)
    has = count > 0
    denom = np.maximum(count, 1.0)
    mean = (side.cum_rating[end] - side.cum_rating[start]) / denom
    square = (side.cum_square[end] - side.cum_square[start]) / denom
    last = np.maximum(end - 1, 0)
    safe_first = np.minimum(start, max(len(side.time) - 1, 0))
    first_age = (t - side.time[safe_first]) / DAY_SECONDS if len(side.time) else np.zeros_like(t)
    last_age = (t - side.time[last]) / DAY_SECONDS if len(side.time) else np.zeros_like(t)
    cols = [
        np.log1p(count), mean / RATING_SCALE,
        np.where(has, side.run_min[last] if len(side.time) else 0.0, 0.0) / RATING_SCALE,
        np.where(has, side.run_max[last] if len(side.time) else 0.0, 0.0) / RATING_SCALE,
        np.sqrt(np.maximum(square - mean * mean, 0.0)) / RATING_SCALE,
        (side.cum_negative[end] - side.cum_negative[start]) / denom,
        np.where(has, np.log1p(np.maximum(first_age, 0.0)), 0.0),
        np.where(has, np.log1p(np.maximum(last_age, 0.0)), 0.0),
        np.log1p(side.cum_first_seen[end] - side.cum_first_seen[start]),
    ]
    return np.stack(cols, axis=1).astype(np.float32)


def node_features(store: TemporalStore, nodes: npt.ArrayLike, t: npt.ArrayLike) -> F32:
    """Rating statistics of `nodes` (int64 [n]) from edges with time <= t (a scalar or float64 [n])
    -> float32 [n, len(FEATURES)], columns as in FEATURES."""
    v = np.asarray(nodes, dtype=np.int64).reshape(-1)
    ts = np.broadcast_to(np.asarray(t, dtype=np.float64), v.shape).copy()
    if len(v) == 0:
        return np.zeros((0, len(FEATURES)), dtype=np.float32)
    return np.concatenate([_side_features(store.received, v, ts), _side_features(store.given, v, ts)], axis=1)


@dataclass(frozen=True)
class TemporalBlock:
    """A node's neighbourhood as of t. `nodes` int64 [n] (the target first, then by discovery),
    `x` float32 [n, F] node_features as of t; the sampled edges in block-local indices: messages flow
    `edge_from` -> `edge_to` (int64 [m]), `edge_relation` int64 [m] (index into RELATIONS, seen from
    `edge_to`), `edge_rating` float32 [m], `edge_age_days` float32 [m] (t - edge time)."""

    t: float
    nodes: I64
    x: F32
    edge_from: I64
    edge_to: I64
    edge_relation: I64
    edge_rating: F32
    edge_age_days: F32

    def adjacency(self) -> F32:
        """float32 [len(RELATIONS), n, n]: A[r, i, j] = weight of neighbour j in i's mean over relation
        r, weights |rating| (at least 1) normalised to sum 1 per row; rows without neighbours are 0."""
        n = len(self.nodes)
        adj = np.zeros((len(RELATIONS), n, n), dtype=np.float32)
        w = np.maximum(np.abs(self.edge_rating), 1.0).astype(np.float32)
        np.add.at(adj, (self.edge_relation, self.edge_to, self.edge_from), w)
        sums = adj.sum(axis=2, keepdims=True)
        out: F32 = np.divide(adj, sums, out=np.zeros_like(adj), where=sums > 0)
        return out


def _recent(side: _Side, nodes: I64, t: float, fanout: int) -> tuple[I64, I64]:
    """CSR positions of the `fanout` most recent edges with time <= t of each node, and the owning
    node of each position (int64 [m] both), nodes in the given order, edges newest first."""
    end = _prefix_ends(side, nodes, np.full(len(nodes), t))
    begin = np.maximum(side.indptr[nodes], end - fanout)
    lengths = end - begin
    owner = np.repeat(nodes, lengths)
    offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(end, lengths) - 1 - offsets, owner


def block(store: TemporalStore, node: int, t: float, policy: TemporalPolicy) -> TemporalBlock:
    """The k-hop neighbourhood of `node` as of t under `policy` (see TemporalBlock)."""
    local: dict[int, int] = {int(node): 0}
    order = [int(node)]
    parts: list[tuple[I64, I64, I64, F32, F64]] = []  # (to global, from global, relation, rating, time)
    frontier = np.array([node], dtype=np.int64)
    sides = [(store.received, 0)] + ([(store.given, 2)] if policy.both_directions else [])
    for _ in range(policy.k_hops):
        found: list[I64] = []
        for side, base in sides:
            pos, owner = _recent(side, frontier, t, policy.fanout)
            rating = side.rating[pos]
            parts.append((owner, side.other[pos], base + (rating < 0).astype(np.int64), rating, side.time[pos]))
            found.append(side.other[pos])
        fresh = []
        for v in np.concatenate(found).tolist():
            if v not in local:
                local[v] = len(order)
                order.append(v)
                fresh.append(v)
        frontier = np.array(fresh, dtype=np.int64)
    nodes = np.array(order, dtype=np.int64)
    to_g, from_g, rel, rat, tim = (np.concatenate(c) for c in zip(*parts, strict=True))
    sorter = np.argsort(nodes, kind="stable")
    return TemporalBlock(
        t=float(t), nodes=nodes, x=node_features(store, nodes, t),
        edge_from=sorter[np.searchsorted(nodes[sorter], from_g)].astype(np.int64),
        edge_to=sorter[np.searchsorted(nodes[sorter], to_g)].astype(np.int64),
        edge_relation=rel.astype(np.int64), edge_rating=rat.astype(np.float32),
        edge_age_days=((t - tim) / DAY_SECONDS).astype(np.float32),
    )
