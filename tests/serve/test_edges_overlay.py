"""The growing store (serve/dynamic.py) against the policy rebuilt from scratch: a graph grown by
logged edges must give the blocks a job pruning the grown raw graph would give (exact for hash
pruning), cached blocks touched by a write must be dropped, and `as_of` must see only the past."""

from __future__ import annotations

import numpy as np
import pytest

from bundle import policy as kernels
from bundle.edge_log import EdgeRecord, Entry, NodeRecord
from bundle.files import GraphArrays
from bundle.manifest import Policy
from serve.dynamic import DynamicStore
from serve.graph import BlockCache, GraphStore

N, F = 40, 3


def raw_graph(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random undirected raw graph without self-loops or duplicates: src, dst int64 [E]."""
    rng = np.random.default_rng(seed)
    pairs = {(int(a), int(b)) for a, b in rng.integers(0, N, size=(160, 2)) if a != b}
    pairs |= {(b, a) for a, b in pairs}
    src, dst = np.array(sorted(pairs), dtype=np.int64).T
    return src, dst


def arrays(src: np.ndarray, dst: np.ndarray, policy: Policy, num_nodes: int, features: np.ndarray) -> GraphArrays:
    """What the job writes for raw edges src -> dst: pruned P as CSR, raw in-degree (and neighbour mean)."""
    kept = kernels.prune(src, dst, num_nodes, policy.fanout, policy.seed)
    entries = kernels.propagation(src[kept], dst[kept], num_nodes, policy.propagation)
    degree = kernels.in_degree(src, dst, num_nodes) if policy.degree_input else None
    mean = kernels.neighbour_mean(src, dst, features, num_nodes) if policy.mean_input else None
    return GraphArrays(features, np.arange(num_nodes, dtype=np.int64),
                       kernels.CSR.from_entries(entries, num_nodes), degree, mean)


def policy(propagation: str = "gcn", degree_input: bool = True, mean_input: bool = False) -> Policy:
    return Policy(fanout=3, k_hops=2, propagation=propagation, seed=7,  # type: ignore[arg-type]
                  degree_input=degree_input, mean_input=mean_input)


def features(n: int) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, F)).astype(np.float32)


def entry(seq: int, edges: list[tuple[int, int, float]], nodes: tuple[NodeRecord, ...] = ()) -> Entry:
    return Entry(seq, nodes, tuple(EdgeRecord(s, d, t) for s, d, t in edges))


def assert_same_blocks(grown: DynamicStore, rebuilt: GraphStore, nodes: range) -> None:
    for node in nodes:
        a, b = grown.block(node), rebuilt.block(node)
        np.testing.assert_array_equal(a.nodes, b.nodes)
        np.testing.assert_allclose(a.dense(), b.dense(), rtol=0, atol=1e-7)
        # Exact up to float32 rounding: the grown mean is (stored mean x count + new rows) / count.
        np.testing.assert_allclose(grown.inputs(a.nodes), rebuilt.inputs(b.nodes), rtol=0, atol=1e-6)


@pytest.mark.parametrize("propagation, mean_input", [("gcn", False), ("mean", False), ("mean", True)])
def test_grown_graph_equals_the_policy_on_the_grown_raw_graph(propagation: str, mean_input: bool) -> None:
    p = policy(propagation, mean_input=mean_input)
    src, dst = raw_graph()
    x = features(N + 1)
    grown = DynamicStore(arrays(src, dst, p, N, x[:N]), p)
    added = [(0, 5), (5, 0), (12, 3), (3, 12), (7, 12), (12, 7), (N, 2), (2, N), (N, 9), (9, N)]
    grown.apply(entry(1, [(s, d, 1.0) for s, d in added[:6]]))
    grown.apply(entry(2, [(s, d, 2.0) for s, d in added[6:]], (NodeRecord(N, tuple(x[N].tolist())),)))
    new_pairs = {pair for pair in added} - set(zip(src.tolist(), dst.tolist(), strict=True))
    all_src = np.concatenate([src, [a for a, _ in sorted(new_pairs)]]).astype(np.int64)
    all_dst = np.concatenate([dst, [b for _, b in sorted(new_pairs)]]).astype(np.int64)
    rebuilt = GraphStore(arrays(all_src, all_dst, p, N + 1, x), p)
    assert grown.num_nodes == N + 1
    assert_same_blocks(grown, rebuilt, range(N + 1))


def test_teacher_scored_rows_keep_their_edges_and_fill_only_free_room() -> None:
    p = Policy(fanout=3, k_hops=1, propagation="mean", seed=7, score="teacher_attention")
    src = np.array([1, 2, 3, 4], dtype=np.int64)
    dst = np.array([0, 0, 0, 5], dtype=np.int64)  # node 0 full (3 of fanout 3), node 5 has room
    grown = DynamicStore(arrays(src, dst, Policy(fanout=3, k_hops=1, propagation="mean", seed=7), 6, features(6)), p)
    grown.apply(entry(1, [(5, 0, 1.0), (1, 5, 1.0)]))
    np.testing.assert_array_equal(grown.current_kept(0), [1, 2, 3])  # a logged edge never evicts a scored one
    np.testing.assert_array_equal(grown.current_kept(5), [1, 4])
    np.testing.assert_array_equal(grown.block(5).dense()[0], [0.0, 0.5, 0.5])


def test_a_write_drops_every_cached_block_that_holds_a_changed_row() -> None:
    p = policy("gcn")
    src, dst = raw_graph()
    grown = DynamicStore(arrays(src, dst, p, N, features(N)), p)
    cache = BlockCache(grown, 1 << 30)
    assert cache.fill() == N
    before = {n: cache.get(n) for n in range(N)}
    applied = grown.apply(entry(1, [(0, 5, 1.0), (5, 0, 1.0)]))
    dropped = cache.invalidate(applied.stale_targets)
    assert dropped == len(applied.stale_targets) > 0
    for node in range(N):
        fresh = grown.block(node)
        same = np.array_equal(fresh.nodes, before[node].nodes) and np.array_equal(fresh.dense(), before[node].dense())
        if not same:  # every block that changed was dropped (a superset may be dropped too)
            assert node in set(applied.stale_targets.tolist()), node
        got = cache.get(node)
        np.testing.assert_array_equal(got.dense(), fresh.dense())


@pytest.mark.parametrize("mean_input", [False, True])
def test_as_of_sees_only_edges_up_to_then(mean_input: bool) -> None:
    p = policy("gcn", mean_input=mean_input)
    src, dst = raw_graph()
    x = features(N)
    base = GraphStore(arrays(src, dst, p, N, x), p)
    grown = DynamicStore(arrays(src, dst, p, N, x), p)
    grown.apply(entry(1, [(0, 5, 10.0), (5, 0, 10.0)]))
    grown.apply(entry(2, [(12, 3, 20.0), (3, 12, 20.0)]))
    middle = DynamicStore(arrays(src, dst, p, N, x), p)
    middle.apply(entry(1, [(0, 5, 10.0), (5, 0, 10.0)]))
    assert grown.past(20.0) is None and grown.past(25.0) is None  # the current graph: served from the cache
    for as_of, reference in ((5.0, base), (15.0, middle)):
        past = grown.past(as_of)
        assert past is not None
        for node in range(N):
            a, b = past.block(node), reference.block(node)
            np.testing.assert_array_equal(a.nodes, b.nodes)
            np.testing.assert_array_equal(a.dense(), b.dense())
            np.testing.assert_allclose(a.x, reference.inputs(b.nodes), rtol=0, atol=1e-6)


def test_new_node_is_found_by_its_id_and_duplicates_change_nothing() -> None:
    p = policy("gcn")
    src, dst = raw_graph()
    g = arrays(src, dst, p, N, features(N))
    grown = DynamicStore(GraphArrays(g.features, np.arange(N, dtype=np.int64) * 10, g.csr, g.in_degree), p)
    grown.apply(entry(1, [(10, 20, 1.0)], (NodeRecord(999, (1.0, 2.0, 3.0)),)))
    idx, unknown = grown.lookup(np.array([999, 10, 5], dtype=np.int64))
    assert idx.tolist() == [N, 1, -1] and unknown.tolist() == [5]
    degree = grown.in_degree.copy()
    again = grown.apply(entry(2, [(10, 20, 0.5), (3 * 10, 3 * 10, 1.0)]))  # a duplicate and a self-loop
    assert len(again.rows) == 0
    np.testing.assert_array_equal(grown.in_degree, degree)


def test_attention_rows_take_the_mean_weight_for_a_logged_edge_and_as_of_gives_the_stored_row() -> None:
    p = Policy(fanout=3, k_hops=1, propagation="attention", seed=7, score="teacher_attention")
    indptr, indices = np.array([0, 3, 4, 5], dtype=np.int64), np.array([0, 1, 2, 1, 2], dtype=np.int64)
    weights = np.array([0.5, 0.3, 0.2, 1.0, 1.0], dtype=np.float32)  # row 0: self 0.5, 1 -> 0.3, 2 -> 0.2
    stored = GraphArrays(features(3), np.arange(3, dtype=np.int64), kernels.CSR(indptr, indices, weights))
    grown = DynamicStore(stored, p)
    grown.apply(entry(1, [(1, 2, 5.0)]))  # row 2 (self only) gains 1 with the mean weight 1.0: 0.5 / 0.5
    np.testing.assert_allclose(grown.block(2).dense()[0], [0.5, 0.5], rtol=0, atol=1e-7)
    past = grown.past(1.0)
    assert past is not None
    np.testing.assert_array_equal(past.block(2).dense(), [[1.0]])
    np.testing.assert_array_equal(past.block(0).dense(), GraphStore(stored, p).block(0).dense())


def test_graph_free_bundles_grow_their_degree_column_and_nodes() -> None:
    p = Policy(fanout=3, k_hops=0, propagation="none", seed=7, degree_input=True)
    src, dst = raw_graph()
    grown = DynamicStore(arrays(src, dst, p, N, features(N)), p)
    before = grown.inputs(np.array([5], dtype=np.int64))
    grown.apply(entry(1, [(N, 5, 1.0)], (NodeRecord(N, (1.0, 2.0, 3.0)),)))
    after = grown.inputs(np.array([5, N], dtype=np.int64))
    assert grown.base_degree is not None
    assert after[0, -1] == np.float32(np.log1p(float(grown.base_degree[5] + 1)))  # one more in-neighbour
    np.testing.assert_array_equal(after[1], np.array([1.0, 2.0, 3.0, 0.0], dtype=np.float32))
    block = grown.block(N)
    assert block.adj is None and block.nodes.tolist() == [N]
    past = grown.past(0.5)
    assert past is not None
    np.testing.assert_array_equal(past.block(5).x, before)


def test_string_ids_resolve_for_bundle_and_written_nodes() -> None:
    p = policy("mean", degree_input=False)
    src, dst = raw_graph()
    g = arrays(src, dst, p, N, features(N))
    names = np.array([f"acct-{i:03d}" for i in range(N)])
    grown = DynamicStore(GraphArrays(g.features, names, g.csr), p)
    grown.apply(Entry(1, (NodeRecord("acct-new", (1.0, 2.0, 3.0)),),
                      (EdgeRecord("acct-new", "acct-007", 1.0), EdgeRecord("acct-003", "acct-new", 1.0))))
    idx, unknown = grown.lookup(np.array(["acct-new", "acct-007", "nope"]))
    assert idx.tolist() == [N, 7, -1] and unknown.tolist() == ["nope"]
    assert N in grown.current_kept(7).tolist() and grown.current_kept(N).tolist() == [3]
