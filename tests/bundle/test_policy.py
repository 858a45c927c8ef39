"""The contract's policy kernels, torch-free: golden values from docs/bundle.md on hand-made graphs."""

import numpy as np
import pytest

from bundle import policy

I = np.int64  # noqa: E741


def test_splitmix64_known_values():
    # Reference values of the splitmix64 finaliser (the first outputs of the splitmix64 generator seeded 0).
    out = policy.splitmix64(np.array([0, 0x9E3779B97F4A7C15], dtype=np.uint64))
    assert out.tolist() == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]


def test_edge_rank_is_the_documented_composition():
    src, dst = np.array([3, 4], dtype=I), np.array([7, 7], dtype=I)
    inner = policy.splitmix64(np.uint64(5) ^ dst.astype(np.uint64))
    np.testing.assert_array_equal(policy.edge_rank(src, dst, 5), policy.splitmix64(inner ^ src.astype(np.uint64)))


def _star(n_in: int = 8):
    """Node 0 with in-edges from 1..n_in; node 1 with an in-edge from 0."""
    src = np.array([*range(1, n_in + 1), 0], dtype=I)
    dst = np.array([0] * n_in + [1], dtype=I)
    return src, dst


def test_prune_caps_in_degree_by_lowest_rank_and_is_seeded():
    src, dst = _star()
    kept = policy.prune(src, dst, 9, 3, seed=0)
    assert np.bincount(dst[kept], minlength=9).tolist() == [3, 1, 0, 0, 0, 0, 0, 0, 0]
    rank = policy.edge_rank(src[:8], dst[:8], 0)
    assert sorted(src[kept][:3].tolist()) == sorted(src[np.argsort(rank)[:3]].tolist())
    assert not np.array_equal(kept, policy.prune(src, dst, 9, 3, seed=1))
    np.testing.assert_array_equal(kept, policy.prune(src, dst, 9, 3, seed=0))


def test_prune_prefers_high_scores():
    src, dst = np.array([1, 2, 3, 4], dtype=I), np.zeros(4, dtype=I)
    kept = policy.prune(src, dst, 5, 2, seed=0, score=np.array([0.1, 0.9, 0.5, 0.2]))
    assert sorted(src[kept].tolist()) == [2, 3]


def test_gcn_weights_follow_the_documented_formula():
    src, dst = np.array([1, 2, 0, 0], dtype=I), np.array([0, 0, 1, 0], dtype=I)  # 0 -> 0 is a stored self-loop
    csr = policy.CSR.from_entries(policy.propagation(src, dst, 3, "gcn"), 3)
    # d = entries per row incl. one self-loop: d0 = 3 (1, 2, self), d1 = 2 (0, self), d2 = 1 (self).
    dense = np.zeros((3, 3))
    dense[np.repeat(np.arange(3), csr.degree), csr.indices] = csr.weights
    d = np.array([3, 2, 1])
    expected = np.array([[1 / 3, 1 / np.sqrt(6), 1 / np.sqrt(3)], [1 / np.sqrt(6), 1 / 2, 0], [0, 0, 1]])
    np.testing.assert_allclose(dense, expected, rtol=1e-6)
    assert csr.degree.tolist() == d.tolist()


def test_mean_weights_and_empty_rows():
    csr = policy.CSR.from_entries(policy.propagation(np.array([1, 2], dtype=I), np.array([0, 0], dtype=I), 3,
                                                     "mean"), 3)
    assert csr.indptr.tolist() == [0, 2, 2, 2] and csr.weights.tolist() == [0.5, 0.5]


def test_attention_is_the_row_normalised_teacher_attention_with_a_floor():
    # Node 0 keeps in-edges from 1 and 2 (attention 0.2, 0.6) and its self-loop (0.2); node 1 keeps 0 -> 1.
    entries = policy.propagation(np.array([1, 2, 0], dtype=I), np.array([0, 0, 1], dtype=I), 3, "attention",
                                 (np.array([0.2, 0.6, 0.0], dtype=np.float32), np.array([0.2, 0.5, 0.7], np.float32)))
    dense = np.zeros((3, 3))
    dense[entries.dst, entries.src] = entries.weight
    floor = policy.ATTENTION_FLOOR
    expected = [[0.2, 0.2, 0.6], [floor / (floor + 0.5), 0.5 / (floor + 0.5), 0.0], [0.0, 0.0, 1.0]]
    np.testing.assert_allclose(dense, expected, rtol=1e-5)
    assert len(entries.src) == 3 + 3  # every kept edge plus one self-loop per node


def test_unknown_propagation_raises_listing_the_choices():
    with pytest.raises(ValueError, match="gcn"):
        policy.propagation(np.zeros(0, dtype=I), np.zeros(0, dtype=I), 2, "attention")


# A 4-node CSR: row 0 <- {1, 2}, row 1 <- {0}, row 2 <- {3}, row 3 <- {} (weights = row * 10 + col).
HAND = policy.CSR(np.array([0, 2, 3, 4, 4], dtype=I), np.array([1, 2, 0, 3], dtype=I),
                  np.array([1.0, 2.0, 10.0, 23.0], dtype=np.float32))


def test_k_hop_and_dense_block_on_a_hand_graph():
    nodes = HAND.k_hop(np.array([0], dtype=I), 2)
    assert nodes.tolist() == [0, 1, 2, 3]
    adj = HAND.dense_block(nodes)
    expected = np.zeros((4, 4), dtype=np.float32)
    expected[0, 1], expected[0, 2], expected[1, 0], expected[2, 3] = 1.0, 2.0, 10.0, 23.0
    np.testing.assert_array_equal(adj, expected)
    assert HAND.k_hop(np.array([3], dtype=I), 2).tolist() == [3]
    assert len(HAND.k_hop(np.array([0], dtype=I), 2)) <= policy.max_block_nodes(2, 2)


def test_block_adj_is_the_dense_block_kept_sparse():
    p = np.zeros((4, 4), dtype=np.float32)  # HAND as a dense P[target, source]
    p[0, 1], p[0, 2], p[1, 0], p[2, 3] = 1.0, 2.0, 10.0, 23.0
    nodes = np.array([2, 0, 3, 1], dtype=I)  # not sorted: local rows and columns follow `nodes`
    sparse = HAND.block_adj(nodes)
    np.testing.assert_array_equal(sparse.dense(), p[np.ix_(nodes, nodes)])
    assert sparse.row.dtype == np.uint16 and sparse.nbytes == 4 * (2 + 2 + 4)  # 4 entries, not 16 cells
    part = HAND.block_adj(np.array([0, 2], dtype=I))  # 0 <- 1 and 2 <- 3 leave the block
    assert (part.row.tolist(), part.col.tolist(), part.weight.tolist()) == ([0], [1], [2.0])
    packed = np.full((7, 7), -1.0, dtype=np.float32)
    packed[3:, 3:] = 0.0
    sparse.write(packed, 3)
    np.testing.assert_array_equal(packed[3:, 3:], p[np.ix_(nodes, nodes)])
    assert (packed[:3] == -1.0).all() and (packed[:, :3] == -1.0).all()
    assert HAND.block_adj(np.zeros(0, dtype=I)).dense().shape == (0, 0)


def test_blocks_built_together_equal_one_seed_at_a_time():
    rng = np.random.default_rng(0)
    n = 60
    src, dst = rng.integers(0, n, 300).astype(I), rng.integers(0, n, 300).astype(I)  # repeats and self-loops too
    kept = policy.prune(src, dst, n, 4, seed=0)
    csr = policy.CSR.from_entries(policy.propagation(src[kept], dst[kept], n, "mean"), n)
    seeds = np.array([5, 0, 59, 5, 17], dtype=I)  # unsorted, one twice
    for hops in (0, 1, 2, 3):
        together = csr.blocks(seeds, hops)
        assert len(together) == len(seeds)
        for seed, (nodes, adj) in zip(seeds.tolist(), together, strict=True):
            alone = csr.k_hop(np.array([seed], dtype=I), hops)
            expected = csr.block_adj(alone)
            np.testing.assert_array_equal(nodes, alone)
            assert adj.n == expected.n and adj.row.dtype == expected.row.dtype
            for got, want in ((adj.row, expected.row), (adj.col, expected.col), (adj.weight, expected.weight)):
                np.testing.assert_array_equal(got, want)
    assert len(csr.blocks(seeds, 2)[0][1].weight) > 0 and csr.blocks(np.zeros(0, dtype=I), 2) == []


def test_new_node_rows_per_propagation():
    kept = np.array([0, 2], dtype=I)
    gcn = policy.new_node_row(kept, "gcn", HAND.degree)
    np.testing.assert_allclose(gcn, [1 / 3, 1 / np.sqrt(3 * 2), 1 / np.sqrt(3 * 1)], rtol=1e-6)
    assert policy.new_node_row(kept, "mean", HAND.degree).tolist() == [0.0, 0.5, 0.5]
    np.testing.assert_allclose(policy.new_node_row(kept, "attention", HAND.degree), [1 / 3] * 3)
    assert policy.new_node_row(np.zeros(0, dtype=I), "mean", HAND.degree).tolist() == [0.0]


def test_kept_neighbours_dedupe_and_cap_by_rank():
    kept = policy.kept_neighbours(np.array([3, 1, 3, 2, 0], dtype=I), 4, 2, seed=0)
    unique = np.array([0, 1, 2, 3], dtype=I)
    rank = policy.edge_rank(unique, np.full(4, 4, dtype=I), 0)
    assert kept.tolist() == unique[np.argsort(rank, kind="stable")[:2]].tolist()


def test_new_node_block_layout():
    existing, adj = policy.new_node_block(HAND, np.array([1, 2], dtype=I), 2, "mean")
    assert existing[:2].tolist() == [1, 2] and sorted(existing[2:].tolist()) == [0, 3]
    assert adj[0].tolist()[:3] == [0.0, 0.5, 0.5] and adj[1:, 0].tolist() == [0.0] * len(existing)
    np.testing.assert_array_equal(adj[1:, 1:], HAND.dense_block(existing))


def test_in_degree_counts_distinct_in_neighbours_like_a_new_node():
    src = np.array([0, 1, 1, 2, 2, 2, 0])
    dst = np.array([1, 0, 0, 2, 1, 0, 1])  # a duplicate 1->0, a self-loop 2->2, a duplicate 0->1
    assert policy.in_degree(src, dst, 3).tolist() == [2, 2, 0]
    assert policy.new_node_degree(np.array([4, 4, 7])).tolist() == [2]


def test_node_inputs_appends_log1p_degree():
    x = np.ones((2, 3), dtype=np.float32)
    out = policy.node_inputs(x, np.array([0, 9]))
    assert out.dtype == np.float32 and out.shape == (2, 4)
    np.testing.assert_allclose(out[:, 3], [0.0, np.log(10.0)], rtol=1e-6)
    assert policy.node_inputs(x, None) is x
