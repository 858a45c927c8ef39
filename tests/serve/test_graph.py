"""Graph store and neighbourhood policy against distill's torch/PyG implementation and the contract."""

from __future__ import annotations

import numpy as np
import pytest

from distill import policy as dpolicy
from serve.bundle import load
from serve.graph import BlockCache, GraphStore, edge_rank, splitmix64
from tests.serve.conftest import TinyBundle
from tests.serve.helpers import csr_bundle


def test_splitmix64_matches_reference_vector_and_distill() -> None:
    # First output of the reference splitmix64 generator seeded with 0 is the finaliser of 0.
    assert int(splitmix64(np.array([0], dtype=np.uint64))[0]) == 0xE220A8397B1DCDAF
    x = np.random.default_rng(0).integers(0, 2**63, size=1000, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    np.testing.assert_array_equal(splitmix64(x), dpolicy.splitmix64(x))
    src, dst = np.arange(50, dtype=np.int64), np.arange(50, 100, dtype=np.int64)
    np.testing.assert_array_equal(edge_rank(src, dst, 7), dpolicy.edge_rank(src, dst, 7))


@pytest.mark.parametrize("student", ["gcn", "sage", "gcn+attention"])
def test_every_block_equals_distill_neighbourhood(tiny_bundles, student: str) -> None:
    tiny: TinyBundle = tiny_bundles(student)
    store = GraphStore(load(tiny.path))
    n = store.num_nodes
    for node in range(n):
        block = store.block(node)
        subset, adj, local = dpolicy.neighbourhood(node, tiny.policy["k_hops"], tiny.prop_index,
                                                   tiny.prop_weight, n)
        assert block.nodes[block.target] == node
        assert sorted(block.nodes.tolist()) == sorted(subset.tolist())
        # Same node set in another order: permute distill's block into ours.
        perm = np.searchsorted(subset.numpy(), block.nodes)
        np.testing.assert_array_equal(block.adj, adj.numpy()[np.ix_(perm, perm)])
        assert subset[local] == node


def test_block_respects_policy_bound(gcn: TinyBundle) -> None:
    store = GraphStore(load(gcn.path))
    assert max(store.block(i).size for i in range(store.num_nodes)) <= store.max_block_nodes


def test_stored_csr_is_the_pruned_propagation_matrix(gcn: TinyBundle) -> None:
    store = GraphStore(load(gcn.path))
    dense = np.zeros((store.num_nodes, store.num_nodes), dtype=np.float32)
    rows = np.repeat(np.arange(store.num_nodes), np.diff(store.indptr))
    dense[rows, store.indices] = store.weights
    src, dst = gcn.prop_index.numpy()
    expected = np.zeros_like(dense)
    expected[dst, src] = gcn.prop_weight.numpy()
    np.testing.assert_array_equal(dense, expected)


# A 4-node CSR: row 0 <- {1, 2}, row 1 <- {0}, row 2 <- {3}, row 3 <- {} (weights = row * 10 + col).
CSR = ([0, 2, 3, 4, 4], [1, 2, 0, 3], [1.0, 2.0, 10.0, 23.0])


def test_k_hop_and_dense_block_on_hand_graph() -> None:
    store = GraphStore(csr_bundle(*CSR, k_hops=2))
    block = store.block(0)
    assert block.nodes.tolist() == [0, 1, 2, 3]  # hop 1: {1, 2}; hop 2: {0 (seen), 3}
    expected = np.zeros((4, 4), dtype=np.float32)
    expected[0, 1], expected[0, 2], expected[1, 0], expected[2, 3] = 1.0, 2.0, 10.0, 23.0
    np.testing.assert_array_equal(block.adj, expected)
    assert store.block(3).nodes.tolist() == [3]


def test_lookup_with_non_contiguous_external_ids() -> None:
    store = GraphStore(csr_bundle(*CSR, node_ids=[40, 10, 30, 20]))
    internal, unknown = store.lookup(np.array([10, 20, 99, 40, -5], dtype=np.int64))
    assert internal.tolist() == [1, 3, -1, 0, -1]
    assert unknown.tolist() == [-5, 99]


def test_new_node_keeps_lowest_edge_rank_neighbours() -> None:
    store = GraphStore(csr_bundle(*CSR, fanout=2, seed=3))
    candidates = np.array([3, 1, 2, 0, 2], dtype=np.int64)  # duplicate 2 counts once
    ranks = {j: int(dpolicy.edge_rank(np.array([j]), np.array([4]), 3)[0]) for j in range(4)}
    expected = sorted(range(4), key=lambda j: ranks[j])[:2]
    assert store.kept_neighbors(candidates).tolist() == expected


def test_new_node_row_formulas() -> None:
    gcn = GraphStore(csr_bundle(*CSR, propagation="gcn"))
    kept = np.array([0, 2], dtype=np.int64)  # stored rows have 2 and 1 entries
    d_new = 3
    np.testing.assert_allclose(gcn.new_row(kept), [1 / d_new, 1 / np.sqrt(d_new * 2), 1 / np.sqrt(d_new * 1)],
                               rtol=1e-6)
    mean = GraphStore(csr_bundle(*CSR, propagation="mean"))
    np.testing.assert_allclose(mean.new_row(kept), [0.0, 0.5, 0.5])
    np.testing.assert_array_equal(mean.new_row(kept[:0]), [0.0])  # no neighbours: empty row
    attention = GraphStore(csr_bundle(*CSR, propagation="attention"))
    np.testing.assert_allclose(attention.new_row(kept), [1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_array_equal(attention.new_row(kept[:0]), [1.0])  # alone: attends to itself


def test_new_node_block_layout() -> None:
    store = GraphStore(csr_bundle(*CSR, propagation="gcn", fanout=5, k_hops=2))
    neighbours = np.array([1, 2], dtype=np.int64)
    kept = store.kept_neighbors(neighbours)
    block = store.new_node_block(np.array([7.0, 8.0], dtype=np.float32), neighbours)
    # new node, kept {1, 2} in edge_rank order, then their 1-hop in-neighbours {0, 3}
    assert block.nodes.tolist() == [-1, *kept.tolist(), 0, 3]
    assert block.x is not None and block.x[0].tolist() == [7.0, 8.0]
    np.testing.assert_array_equal(block.x[1:], store.features[block.nodes[1:]])
    assert block.adj is not None
    assert np.all(block.adj[1:, 0] == 0)  # existing rows never see the new node
    np.testing.assert_allclose(block.adj[0, :3], store.new_row(kept))
    np.testing.assert_array_equal(block.adj[1:, 1:], store.dense_block(block.nodes[1:]))


def test_cache_is_bounded_by_bytes_and_counts_hits() -> None:
    store = GraphStore(csr_bundle(*CSR))
    one = store.block(0).nbytes
    cache = BlockCache(store, budget_bytes=one + 1)
    assert cache.fill() == 1  # only node 0 fits
    cache.get(0)
    cache.get(1)  # miss, evicts 0 to stay in budget
    assert (cache.hits, cache.misses) == (1, 1)
    assert cache.bytes <= cache.budget and list(cache._lru) == [1]
    big = BlockCache(store, budget_bytes=1 << 20)
    assert big.fill() == store.num_nodes
