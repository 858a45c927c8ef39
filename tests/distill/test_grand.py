"""The GRAND teacher: mixed-order propagation read by an MLP, random views while training, the
consistency term, and the loss that averages the views."""

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from distill.config import RunConfig
from distill.models import NodeOutputs
from distill.objectives import supervised, supervised_views
from distill.structure import edge_importance
from distill.teacher_models import GRAND, build_teacher
from distill.train import Edges

EDGES = torch.tensor([[i for i in range(10)] + [(i + 1) % 10 for i in range(10)],
                      [(i + 1) % 10 for i in range(10)] + [i for i in range(10)]])


def _grand(in_channels: int = 4, **kw: float) -> GRAND:
    torch.manual_seed(0)
    return GRAND(in_channels, 8, 3, 3, **kw).eval()


def test_build_teacher_makes_a_grand_of_the_run_shape():
    model = build_teacher("grand", in_channels=4, hidden_channels=8, num_layers=5, out_channels=3, dropout=0.3,
                          heads=4, alpha=0.1)  # heads, alpha: other families', ignored
    assert isinstance(model, GRAND) and model.order == 5 and model.dropout == 0.3
    assert model.lin1.out_features == 8 and model.lin2.out_features == 3


def _by_hand(model: GRAND, x: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """The paper's evaluation pass written out densely: mean of A_hat^k x for k = 0..K, then the MLP."""
    n = x.size(0)
    ei, ew = gcn_norm(edges, None, n, add_self_loops=True)
    a_hat = torch.zeros(n, n).index_put_((ei[1], ei[0]), ew, accumulate=True)
    powers = [x]
    for _ in range(model.order):
        powers.append(a_hat @ powers[-1])
    return model.lin2(F.relu(model.lin1(torch.stack(powers).mean(0))))


@pytest.mark.parametrize("in_channels", [4, 20])  # narrower than the hidden layer, and wider (projected first)
def test_grand_evaluation_is_the_mixed_order_propagation_read_by_the_mlp(in_channels):
    model, x = _grand(in_channels=in_channels), torch.randn(11, in_channels)
    edges = torch.cat([EDGES, torch.tensor([[10, 10], [0, 1]])], dim=1)  # node 10: out-edges only
    out = model.run(x, edges)
    assert out.logits.shape == (11, 3) and len(out.hidden) == 1 and out.hidden[0].shape == (11, 8)
    assert out.views == [] and out.regulariser is None
    torch.testing.assert_close(out.logits, _by_hand(model, x, edges), atol=1e-5, rtol=1e-5)
    assert RunConfig().layer_pairs_for(len(out.hidden)) == [(1, 1), (1, 2)]  # both student layers learn from it


def test_grand_reads_mostly_zero_features_through_their_non_zeros():
    """Bag-of-words-like input (wider than the hidden layer, 5 % non-zero): the sparse first layer
    gives the dense maths, evaluating and training alike, and dropout there keeps the scale."""
    torch.manual_seed(3)
    x = torch.rand(10, 40) * (torch.rand(10, 40) < 0.05)
    model = _grand(in_channels=40)
    assert model._entries(model.feature_norm(x)) is not None
    torch.testing.assert_close(model(x, EDGES), _by_hand(model, x, EDGES), atol=1e-5, rtol=1e-5)
    keep = torch.tensor([2.0, 0.0] * 5)
    model.input_drop = 0.0
    model.train()
    torch.testing.assert_close(model._project(x, keep), (x * keep.unsqueeze(-1)) @ model.lin1.weight.t())
    model.input_drop = 0.5
    mean = torch.stack([model._project(x, None) for _ in range(2000)]).mean(0)
    torch.testing.assert_close(mean, x @ model.lin1.weight.t(), atol=0.02, rtol=0.05)


def test_grand_edge_weight_of_ones_is_the_unweighted_graph_and_has_a_gradient():
    model, x = _grand(), torch.randn(10, 4)
    weight = torch.ones(EDGES.size(1), requires_grad=True)
    logits = model(x, EDGES, weight)
    torch.testing.assert_close(logits, model(x, EDGES), atol=1e-5, rtol=1e-5)
    logits.logsumexp(-1).sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    importance = edge_importance(RunConfig(), model, x, EDGES, Edges(EDGES), "grand")
    assert importance.edges.shape == (EDGES.size(1),) and (importance.edges > 0).any()


def test_grand_training_pass_returns_its_views_and_the_consistency_term():
    model = _grand(samples=3).train()
    torch.manual_seed(1)
    out = model.run(torch.randn(10, 4), EDGES)
    assert out.logits.shape == (10, 3) and len(out.views) == 2
    assert out.regulariser is not None and out.regulariser.requires_grad
    assert not torch.allclose(out.logits, out.views[0])  # different nodes dropped in each view
    torch.testing.assert_close(out.regulariser, model._consistency([out.logits, *out.views]))


def test_grand_consistency_golden_numbers():
    """Two views of one node, (0.6, 0.4) and (0.2, 0.8): mean (0.4, 0.6), sharpened at T = 0.5 to
    (0.16, 0.36) / 0.52; each view's squared distance to it, averaged."""
    model = _grand(temperature=0.5, consistency=1.0)
    views = [torch.tensor([[0.6, 0.4]]).log(), torch.tensor([[0.2, 0.8]]).log()]
    sharp = torch.tensor([0.16, 0.36]) / 0.52
    expected = ((torch.tensor([0.6, 0.4]) - sharp).pow(2).sum() + (torch.tensor([0.2, 0.8]) - sharp).pow(2).sum()) / 2
    torch.testing.assert_close(model._consistency(views), expected)
    assert float(expected) == pytest.approx(0.09704, abs=1e-5)
    identical = [views[0], views[0].clone()]  # agreeing views are still pulled towards a sharper target
    assert float(model._consistency(identical)) > 0


def test_supervised_views_averages_the_views_and_adds_the_regulariser():
    y, mask = torch.tensor([0, 1, 2]), torch.tensor([True, True, False])
    a, b = torch.randn(3, 3), torch.randn(3, 3)
    plain = NodeOutputs(a)
    assert supervised_views(plain, y, mask) == supervised(a, y, mask)
    both = NodeOutputs(a, views=[b], regulariser=torch.tensor(0.25))
    expected = (supervised(a, y, mask) + supervised(b, y, mask)) / 2 + 0.25
    torch.testing.assert_close(supervised_views(both, y, mask), expected)


def test_grand_refuses_impossible_settings():
    from distill.errors import ConfigError

    with pytest.raises(ConfigError, match="drop_node"):
        GRAND(4, 8, 2, 3, drop_node=1.0)
    with pytest.raises(ConfigError, match="samples"):
        GRAND(4, 8, 2, 3, samples=0)
