"""The temporal kernel on a hand-made graph: features and blocks as of t, exactly."""

from __future__ import annotations

import numpy as np
import pytest

from bundle.temporal import FEATURES, RELATIONS, TemporalPolicy, TemporalStore, block, node_features

DAY = 86400.0
# src, dst, rating, day
EDGES = [(0, 1, 5, 1), (2, 1, -10, 2), (1, 0, 2, 3), (3, 1, 1, 4), (1, 2, -4, 5)]


def tiny() -> TemporalStore:
    s, d, r, t = (np.array(c) for c in zip(*EDGES, strict=True))
    return TemporalStore.from_arrays(s, d, t * DAY, r, 4)


def test_node_features_exact_as_of_t() -> None:
    x = node_features(tiny(), [1], 4.5 * DAY)[0]
    assert x.dtype == np.float32 and x.shape == (len(FEATURES),)
    std = np.sqrt((25 + 100 + 1) / 3 - (4 / 3) ** 2)
    received = [np.log1p(3), -4 / 30, -1.0, 0.5, std / 10, 1 / 3, np.log1p(3.5), np.log1p(0.5), np.log1p(3)]
    given = [np.log1p(1), 0.2, 0.2, 0.2, 0.0, 0.0, np.log1p(1.5), np.log1p(1.5), np.log1p(1)]
    np.testing.assert_allclose(x, np.array(received + given, dtype=np.float32), rtol=1e-6, atol=1e-6)


def test_edges_at_exactly_t_count_and_later_ones_do_not() -> None:
    x = node_features(tiny(), [1, 1, 1], np.array([2.0, 2.0 - 1e-6, 0.5]) * DAY)
    assert x[:, FEATURES.index("received_log_count")] == pytest.approx(np.log1p([2, 1, 0]))
    assert (x[2] == 0).all()  # nothing known yet: all zero, no nan from empty groups


def test_block_most_recent_fanout_both_directions() -> None:
    b = block(tiny(), 1, 4.5 * DAY, TemporalPolicy(fanout=2, k_hops=1))
    assert b.nodes.tolist() == [1, 3, 2, 0]  # target, received newest first (3 at day 4, 2 at day 2), given
    edges = sorted(zip(b.edge_to.tolist(), b.edge_from.tolist(), b.edge_relation.tolist(), strict=True))
    assert edges == [(0, 1, 0), (0, 2, 1), (0, 3, 2)]
    np.testing.assert_allclose(sorted(b.edge_age_days.tolist()), [0.5, 1.5, 2.5])
    adj = b.adjacency()
    assert adj.shape == (len(RELATIONS), 4, 4)
    assert adj[0, 0, 1] == adj[1, 0, 2] == adj[2, 0, 3] == 1.0 and adj.sum() == 3.0
    np.testing.assert_array_equal(b.x, node_features(tiny(), b.nodes, 4.5 * DAY))


def test_block_two_hops_and_row_normalised_weights() -> None:
    b = block(tiny(), 1, 4.5 * DAY, TemporalPolicy(fanout=1, k_hops=2))
    assert b.nodes.tolist() == [1, 3, 0]
    b2 = block(tiny(), 1, 4.5 * DAY, TemporalPolicy(fanout=3, k_hops=1, both_directions=False))
    adj = b2.adjacency()
    # received: +5 from 0 and +1 from 3 are positive; weights |rating| normalised per row
    pos = {int(b2.nodes[j]): float(adj[0, 0, j]) for j in range(len(b2.nodes)) if adj[0, 0, j] > 0}
    assert pos == pytest.approx({0: 5 / 6, 3: 1 / 6})


def test_extended_store_sees_new_edges_only_from_their_time() -> None:
    store = tiny().extended([3], [1], [10 * DAY], [-7])
    assert node_features(store, [1], 4.5 * DAY).tolist() == node_features(tiny(), [1], 4.5 * DAY).tolist()
    assert node_features(store, [1], 10 * DAY)[0, FEATURES.index("received_log_count")] == pytest.approx(np.log1p(4))


def test_bad_edges_and_policy_are_refused() -> None:
    with pytest.raises(ValueError, match="0..3"):
        TemporalStore.from_arrays([0], [4], [1.0], [1.0], 4)
    with pytest.raises(ValueError, match="fanout"):
        TemporalPolicy(fanout=0)
    assert TemporalPolicy(fanout=10, k_hops=2).max_nodes() == 1 + 20 + 400
