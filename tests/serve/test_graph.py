"""The service's graph store and block cache: blocks equal an independent PyG reference, the
cache stays in budget. The policy's formulas themselves are tested once, in tests/bundle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.utils import k_hop_subgraph

from bundle import policy
from serve.bundle import load
from serve.graph import ADJ_OVERHEAD, BLOCK_OVERHEAD, FILL_BATCH, BlockCache, GraphStore
from tests.serve.conftest import TinyBundle
from tests.serve.helpers import csr_store


def _store(path) -> GraphStore:  # type: ignore[no-untyped-def]
    bundle = load(path)
    return GraphStore(bundle.graph, bundle.policy)


def reference_block(tiny: TinyBundle, node: int) -> tuple[np.ndarray, np.ndarray]:
    """PyG's k_hop_subgraph over P's entries -> (sorted node ids, dense block in that order)."""
    n = tiny.features.size(0)
    subset, local_ei, _, mask = k_hop_subgraph(node, tiny.policy["k_hops"], tiny.prop_index, relabel_nodes=True,
                                               num_nodes=n)
    adj = torch.zeros(len(subset), len(subset))
    adj[local_ei[1], local_ei[0]] = tiny.prop_weight[mask]
    return subset.numpy(), adj.numpy()


@pytest.mark.parametrize("student", ["gcn", "sage", "gcn+attention"])
def test_every_block_equals_distill_neighbourhood(tiny_bundles, student: str) -> None:
    tiny: TinyBundle = tiny_bundles(student)
    store = _store(tiny.path)
    for node in range(store.num_nodes):
        block = store.block(node)
        subset, adj = reference_block(tiny, node)
        assert block.nodes[block.target] == node
        assert sorted(block.nodes.tolist()) == subset.tolist()
        # Same node set in another order: permute the reference block into ours.
        perm = np.searchsorted(subset, block.nodes)
        np.testing.assert_array_equal(block.dense(), adj[np.ix_(perm, perm)])


def test_block_respects_policy_bound(gcn: TinyBundle) -> None:
    store = _store(gcn.path)
    assert max(store.block(i).size for i in range(store.num_nodes)) <= store.max_block_nodes


def test_stored_csr_is_the_pruned_propagation_matrix(gcn: TinyBundle) -> None:
    store = _store(gcn.path)
    dense = np.zeros((store.num_nodes, store.num_nodes), dtype=np.float32)
    rows = np.repeat(np.arange(store.num_nodes), store.csr.degree)
    dense[rows, store.csr.indices] = store.csr.weights
    src, dst = gcn.prop_index.numpy()
    expected = np.zeros_like(dense)
    expected[dst, src] = gcn.prop_weight.numpy()
    np.testing.assert_array_equal(dense, expected)


# A 4-node CSR: row 0 <- {1, 2}, row 1 <- {0}, row 2 <- {3}, row 3 <- {} (weights = row * 10 + col).
CSR = ([0, 2, 3, 4, 4], [1, 2, 0, 3], [1.0, 2.0, 10.0, 23.0])


def test_block_of_an_existing_node_on_hand_graph() -> None:
    store = csr_store(*CSR, k_hops=2)
    block = store.block(0)
    assert block.nodes.tolist() == [0, 1, 2, 3] and block.target == 0
    np.testing.assert_array_equal(block.dense(), store.csr.dense_block(block.nodes))
    assert store.block(3).nodes.tolist() == [3]
    assert csr_store(*CSR, propagation="none", k_hops=0).block(0).adj is None


def test_lookup_with_non_contiguous_external_ids() -> None:
    store = csr_store(*CSR, node_ids=[40, 10, 30, 20])
    internal, unknown = store.lookup(np.array([10, 20, 99, 40, -5], dtype=np.int64))
    assert internal.tolist() == [1, 3, -1, 0, -1]
    assert unknown.tolist() == [-5, 99]


def test_new_node_block_is_the_contracts() -> None:
    store = csr_store(*CSR, propagation="gcn", fanout=5, k_hops=2, seed=3)
    neighbours = np.array([1, 2, 2], dtype=np.int64)
    kept = policy.kept_neighbours(neighbours, store.num_nodes, 5, 3)
    existing, adj = policy.new_node_block(store.csr, kept, 2, "gcn")
    block = store.new_node_block(np.array([7.0, 8.0], dtype=np.float32), neighbours)
    assert block.nodes.tolist() == [-1, *existing.tolist()] and block.target == 0
    assert block.x is not None and block.x[0].tolist() == [7.0, 8.0]
    np.testing.assert_array_equal(block.x[1:], store.features[existing])
    np.testing.assert_array_equal(block.dense(), adj)


def test_cache_is_bounded_by_bytes_and_counts_hits() -> None:
    store = csr_store(*CSR)
    one = store.block(0).nbytes
    cache = BlockCache(store, budget_bytes=one + 1)
    assert cache.fill() == 1  # only node 0 fits
    cache.get(0)
    cache.get(1)  # miss, evicts 0 to stay in budget
    assert (cache.hits, cache.misses) == (1, 1)
    assert cache.bytes <= cache.budget and list(cache._lru) == [1]
    big = BlockCache(store, budget_bytes=1 << 20)
    assert big.fill() == store.num_nodes


def test_cached_blocks_cost_their_entries_not_n_squared() -> None:
    # A ring of 40 nodes, each with in-edges from its two neighbours: a 4-hop block has 9 nodes and
    # fewer than 9 * 2 entries among them, against 81 dense cells.
    n = 40
    indices = [j for i in range(n) for j in ((i - 1) % n, (i + 1) % n)]
    store = csr_store(list(range(0, 2 * n + 1, 2)), indices, [0.5] * (2 * n), k_hops=4)
    block = store.block(0)
    assert block.size == 9 and block.adj is not None and len(block.adj.weight) < 9 * 2
    assert block.adj.nbytes < 4 * 9 * 9
    assert block.nbytes == BLOCK_OVERHEAD + ADJ_OVERHEAD + block.nodes.nbytes + block.adj.nbytes
    np.testing.assert_array_equal(block.dense(), store.csr.dense_block(block.nodes))


def test_fill_builds_blocks_in_batches_equal_to_one_at_a_time() -> None:
    n = FILL_BATCH * 2 + 17  # a ring again: every block has the same size, so the budget fixes the count
    indices = [j for i in range(n) for j in ((i - 1) % n, (i + 1) % n)]
    store = csr_store(list(range(0, 2 * n + 1, 2)), indices, [0.5] * (2 * n), k_hops=2)
    one = store.block(0).nbytes
    cache = BlockCache(store, budget_bytes=one * (FILL_BATCH + 3))
    assert cache.fill() == FILL_BATCH + 3 and list(cache._lru) == list(range(FILL_BATCH + 3))
    full = BlockCache(store, budget_bytes=1 << 30)
    assert full.fill() == n
    for node, block in full._lru.items():
        alone = store.block(node)
        assert block.adj is not None and block.nbytes == alone.nbytes
        np.testing.assert_array_equal(block.nodes, alone.nodes)
        np.testing.assert_array_equal(block.dense(), alone.dense())
