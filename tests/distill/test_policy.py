import numpy as np
import torch

from distill import policy
from distill.data import load_dataset
from distill.models import GCN, SAGE


def _graph():
    return load_dataset("synthetic:nodes=300,avg_degree=12,features=6,seed=1").data


def test_splitmix64_known_values():
    # Reference values of the splitmix64 finaliser (the first outputs of the splitmix64 generator seeded 0).
    out = policy.splitmix64(np.array([0, 0x9E3779B97F4A7C15], dtype=np.uint64))
    assert out.tolist() == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]


def test_prune_caps_in_degree_deterministically():
    d = _graph()
    a = policy.prune(d.edge_index, d.num_nodes, 5, seed=0)
    b = policy.prune(d.edge_index, d.num_nodes, 5, seed=0)
    c = policy.prune(d.edge_index, d.num_nodes, 5, seed=1)
    in_deg = torch.bincount(a[1], minlength=d.num_nodes)
    full_deg = torch.bincount(d.edge_index[1], minlength=d.num_nodes)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(in_deg, full_deg.clamp(max=5))


def test_prune_prefers_high_scores():
    edge_index = torch.tensor([[1, 2, 3, 4], [0, 0, 0, 0]])
    kept = policy.prune(edge_index, 5, 2, seed=0, score=torch.tensor([0.1, 0.9, 0.5, 0.2]))
    assert sorted(kept[0].tolist()) == [2, 3]


def test_gcn_propagation_matches_docs_formula():
    d = _graph()
    pruned = policy.prune(d.edge_index, d.num_nodes, 4, seed=0)
    ei, w = policy.propagation(pruned, d.num_nodes, "gcn")
    csr = policy.to_csr(ei, w, d.num_nodes)
    deg = np.diff(csr["indptr"])  # row length, self-loop included
    rows = np.repeat(np.arange(d.num_nodes), deg)
    expected = 1.0 / np.sqrt(deg[rows] * deg[csr["indices"]])
    np.testing.assert_allclose(csr["weights"], expected, rtol=1e-6)


def test_neighbourhood_reproduces_full_graph_output_exactly():
    """train = serve: the student on a cached k-hop neighbourhood equals the full pruned-graph pass."""
    d = _graph()
    pruned = policy.prune(d.edge_index, d.num_nodes, 4, seed=0)
    for model, kind in ((GCN(6, 8, 2, 3), "gcn"), (SAGE(6, 8, 2, 3), "mean")):
        model.eval()
        ei, w = policy.propagation(pruned, d.num_nodes, kind)
        full = model(d.x, ei, w)
        pol = policy.NeighbourhoodPolicy(4, 2, kind)
        for node in (0, 17, int(torch.bincount(ei[1]).argmax())):
            subset, adj, local = policy.neighbourhood(node, 2, ei, w, d.num_nodes)
            assert len(subset) <= pol.max_nodes
            sub = model.forward_dense(d.x[subset], adj)[local]
            torch.testing.assert_close(sub, full[node], atol=1e-5, rtol=0)


def test_attention_propagation_is_the_row_normalised_teacher_attention():
    # Node 0 keeps in-edges from 1 and 2 (attention 0.2, 0.6) and its self-loop (0.2); node 1 keeps 0 -> 1.
    edge_index = torch.tensor([[1, 2, 0], [0, 0, 1]])
    ei, w = policy.propagation(edge_index, 3, "attention",
                               (torch.tensor([0.2, 0.6, 0.0]), torch.tensor([0.2, 0.5, 0.7])))
    dense = torch.zeros(3, 3)
    dense[ei[1], ei[0]] = w
    expected = torch.tensor([[0.2, 0.2, 0.6],
                             [1e-6 / (1e-6 + 0.5), 0.5 / (1e-6 + 0.5), 0.0],  # zero attention floored, not dropped
                             [0.0, 0.0, 1.0]])
    torch.testing.assert_close(dense, expected)
    assert ei.size(1) == 3 + 3  # every kept edge plus one self-loop per node
