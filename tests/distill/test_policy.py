"""The contract's policy applied to torch graphs: same weights as PyG, and train = serve."""

import numpy as np
import torch
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from distill import policy
from distill.data import load_dataset
from distill.models import GCN, SAGE, ResSAGE


def _graph():
    return load_dataset("synthetic:nodes=300,avg_degree=12,features=6,seed=1").data


def test_prune_adapter_caps_in_degree_deterministically():
    d = _graph()
    a = policy.prune(d.edge_index, d.num_nodes, 5, seed=0)
    in_deg = torch.bincount(a[1], minlength=d.num_nodes)
    full_deg = torch.bincount(d.edge_index[1], minlength=d.num_nodes)
    assert torch.equal(a, policy.prune(d.edge_index, d.num_nodes, 5, seed=0))
    assert not torch.equal(a, policy.prune(d.edge_index, d.num_nodes, 5, seed=1))
    assert torch.equal(in_deg, full_deg.clamp(max=5))


def test_gcn_weights_equal_pyg_gcn_norm():
    d = _graph()
    sg = policy.student_graph(d.edge_index, d.num_nodes, policy.make_policy(4, 2, "gcn", 0))
    ei, w = gcn_norm(sg.kept, None, d.num_nodes, add_self_loops=True)
    dense_pyg = torch.zeros(d.num_nodes, d.num_nodes).index_put_((ei[1], ei[0]), w, accumulate=True)
    dense = torch.zeros(d.num_nodes, d.num_nodes).index_put_(
        (sg.edges.edge_index[1], sg.edges.edge_index[0]), sg.edges.edge_weight, accumulate=True)
    torch.testing.assert_close(dense, dense_pyg, atol=1e-7, rtol=1e-6)


def test_served_neighbourhood_reproduces_the_full_graph_output():
    """train = serve: the student on the contract's cached k-hop block equals the full pruned-graph pass."""
    d = _graph()
    for model, kind in ((GCN(6, 8, 2, 3), "gcn"), (SAGE(6, 8, 2, 3), "mean"), (ResSAGE(6, 8, 2, 3), "mean")):
        model.eval()
        pol = policy.make_policy(4, 2, kind, 0, degree_input=model.takes_degree, mean_input=model.takes_mean)
        sg = policy.student_graph(d.edge_index, d.num_nodes, pol, x=d.x)
        x = sg.inputs(d.x)
        assert x.size(1) == d.x.size(1) * (1 + model.takes_mean) + model.takes_degree
        full = model(x, sg.edges.edge_index, sg.edges.edge_weight)
        for node in (0, 17, int(np.argmax(sg.csr.degree))):
            nodes, adj = policy.neighbourhood(sg, node)
            assert nodes[0] == node and len(nodes) <= sg.policy.max_nodes
            sub = model.forward_dense(x[torch.from_numpy(nodes)], torch.from_numpy(adj))[0]
            torch.testing.assert_close(sub, full[node], atol=1e-5, rtol=0)


def test_attention_graph_keeps_the_same_edges_and_rows_sum_to_one():
    d = _graph()
    pol = policy.make_policy(4, 2, "gcn", 0)
    scores = torch.rand(d.edge_index.size(1))
    fixed = policy.student_graph(d.edge_index, d.num_nodes, pol, scores)
    att = policy.weigh(fixed.kept, d.edge_index, d.num_nodes, pol.model_copy(update={"propagation": "attention"}),
                       (scores, torch.rand(d.num_nodes)))
    np.testing.assert_array_equal(att.csr.indptr, fixed.csr.indptr)
    np.testing.assert_array_equal(att.csr.indices, fixed.csr.indices)
    row_sums = np.add.reduceat(att.csr.weights.astype(np.float64), att.csr.indptr[:-1])
    np.testing.assert_allclose(row_sums, 1.0, rtol=1e-5)


def test_the_propagated_mean_is_the_linear_systems_solution():
    """m = M (r x + (1 - r) m) over distinct in-neighbours (self-loops, duplicates out), solved directly:
    (I - (1 - r) M) m = r M x. The iteration stops within MEAN_TOLERANCE of it."""
    x = np.array([[1, 2], [3, 4], [5, 6], [7, 8]], dtype=np.float32)
    src = np.array([0, 0, 2, 1, 1, 3, 3, 3], dtype=np.int64)
    dst = np.array([1, 1, 1, 1, 0, 0, 0, 3], dtype=np.int64)
    # Row-normalised distinct in-neighbours: 0 <- {1, 3}, 1 <- {0, 2}, 2 and 3 <- none.
    operator = np.array([[0, .5, 0, .5], [.5, 0, .5, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    for r in (0.1, 0.5):
        exact = np.linalg.solve(np.eye(4) - (1 - r) * operator, r * operator @ x)
        got = policy.neighbour_mean(src, dst, x, 4, r)
        np.testing.assert_allclose(got, exact, atol=policy.MEAN_TOLERANCE * np.abs(exact).max(), rtol=0)
        assert np.abs(got - operator @ x).max() > 0.1  # not the raw mean
    np.testing.assert_array_equal(policy.neighbour_mean(src, dst, x, 4, 1.0), operator.astype(np.float32) @ x)
