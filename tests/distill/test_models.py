"""Model building blocks whose speed-ups must not change the maths."""

import torch
import torch.nn.functional as F

from distill.models import FeatureNorm, input_dropout


def test_feature_norm_reuses_only_an_unchanged_input():
    norm = FeatureNorm("row")
    x = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    first = norm(x)
    assert norm(x) is first  # same tensor, not modified: the cached result
    x[0, 0] = 3.0  # in place: must be recomputed
    assert torch.allclose(norm(x), torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    assert torch.allclose(norm(x.clone()), norm(x))
    std = FeatureNorm("standard", torch.zeros(2), torch.ones(2))
    y = torch.ones(2, 2)
    assert torch.equal(std(y), y)
    std.load_state_dict({"mean": torch.ones(2), "std": torch.ones(2)})  # new statistics, same input
    assert torch.equal(std(y), torch.zeros(2, 2))


def test_feature_norm_reuses_the_same_view_of_an_unchanged_input():
    """ResSAGE and ppr-mlp normalise a reshaped slice of their input: a new view every call."""
    norm = FeatureNorm("row")
    x = torch.tensor([[1.0, 3.0, 2.0, 2.0, 9.0], [2.0, 2.0, 1.0, 1.0, 9.0]])
    first = norm(x[:, :4].reshape(-1, 2, 2))
    assert norm(x[:, :4].reshape(-1, 2, 2)) is first  # the same view of the same tensor
    other = norm(x[:, 1:5].reshape(-1, 2, 2))  # another view of it: recomputed
    assert torch.allclose(other[0, 1], torch.tensor([2.0, 9.0]) / 11.0)
    first = norm(x[:, :4].reshape(-1, 2, 2))
    x[0, 4] = 1.0  # in place, outside the view, through the base: recomputed all the same
    assert norm(x[:, :4].reshape(-1, 2, 2)) is not first
    y = x.clone()
    assert torch.equal(norm(y[:, :4].reshape(-1, 2, 2)), norm(x[:, :4].reshape(-1, 2, 2)))


def test_input_dropout_on_sparse_input_keeps_zeros_and_scales_survivors():
    torch.manual_seed(0)
    x = torch.zeros(200, 50)
    x[torch.arange(200), torch.arange(200) % 50] = 2.0  # 2 % non-zero: the sparse path
    out = input_dropout(x, 0.5, training=True)
    assert torch.all(out[x == 0] == 0)
    survivors = out[x != 0]
    assert set(survivors.unique().tolist()) <= {0.0, 4.0}  # dropped, or kept and scaled by 1 / (1 - p)
    assert 70 < int((survivors > 0).sum()) < 130  # about half of 200 kept
    assert input_dropout(x, 0.5, training=False) is x


def test_input_dropout_on_dense_input_is_plain_dropout():
    x = torch.randn(20, 4)
    torch.manual_seed(1)
    expected = F.dropout(x, 0.3, True)
    torch.manual_seed(1)
    assert torch.equal(input_dropout(x, 0.3, True), expected)


def test_gat_sep_attends_to_neighbours_only_and_keeps_the_node_apart():
    from distill.teacher_models import build_teacher

    torch.manual_seed(0)
    edges = torch.tensor([[1, 2, 0], [0, 0, 1]])
    sep = build_teacher("gat-sep", in_channels=4, hidden_channels=8, num_layers=2, out_channels=3, heads=2)
    plain = build_teacher("gat", in_channels=4, hidden_channels=8, num_layers=2, out_channels=3, heads=2)
    sep.eval()
    plain.eval()
    x = torch.randn(3, 4)
    scored = sep.run(x, edges).attention[0][0]
    assert not bool((scored[0] == scored[1]).any())  # no self-loop in the attention
    assert bool((plain.run(x, edges).attention[0][0][0] == plain.run(x, edges).attention[0][0][1]).any())
    # Node 2 has no in-neighbour: its output depends on its own features through the ego transform.
    moved = x.clone()
    moved[2] += 1.0
    assert not torch.allclose(sep(x, edges)[2], sep(moved, edges)[2])
    assert sum(p.numel() for p in sep.parameters()) > sum(p.numel() for p in plain.parameters())


def _res_sage_case(mode: str):
    """A ResSAGE with mean input under FeatureNorm `mode` on a 60-node synthetic graph -> (model, x
    [N, 2F + 1] (features, neighbour mean, log-degree), student graph)."""
    from distill import policy
    from distill.data import load_dataset
    from distill.models import ResSAGE

    d = load_dataset("synthetic:nodes=60,avg_degree=6,features=5,seed=3").data
    torch.manual_seed(0)
    model = ResSAGE(5, 8, 2, 3).eval()
    model.feature_norm = FeatureNorm(mode, d.x.mean(0), d.x.std(0).clamp(min=1e-6))
    pol = policy.make_policy(3, 2, "mean", 0, degree_input=True, mean_input=True)
    sg = policy.student_graph(d.edge_index, d.num_nodes, pol, x=d.x)
    return model, sg.inputs(d.x), sg


def test_res_sage_with_the_neighbour_mean_dense_equals_sparse():
    for mode in ("standard", "row", "none"):
        model, x, sg = _res_sage_case(mode)
        assert model.takes_mean and x.size(1) == 2 * 5 + 1 and model.lin_in.in_features == 10
        with torch.no_grad():
            sparse = model(x, sg.edges.edge_index, sg.edges.edge_weight)
            adj = torch.zeros(x.size(0), x.size(0)).index_put_(
                (sg.edges.edge_index[1], sg.edges.edge_index[0]), sg.edges.edge_weight, accumulate=True)
            dense = model.forward_dense(x, adj)
        torch.testing.assert_close(dense, sparse, atol=1e-5, rtol=0)


def test_res_sage_reads_the_mean_columns_normalised_like_the_features():
    model, x, sg = _res_sage_case("standard")
    f = 5
    with torch.no_grad():
        base = model(x, sg.edges.edge_index, sg.edges.edge_weight)
        moved = x.clone()
        moved[:, f: 2 * f] += 1.0
        assert not torch.allclose(model(moved, sg.edges.edge_index, sg.edges.edge_weight), base)
        # lin_in reads [z(features) | z(mean)], both z-scored with the features' train statistics.
        seen = []
        hook = model.lin_in.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
        model(x, sg.edges.edge_index, sg.edges.edge_weight)
        hook.remove()
    mu, sd = model.feature_norm.mean, model.feature_norm.std
    expected = torch.cat([(x[:, :f] - mu) / sd, (x[:, f: 2 * f] - mu) / sd], dim=1)
    torch.testing.assert_close(seen[0], expected, atol=1e-6, rtol=0)


def test_wide_inputs_leave_the_neighbour_mean_out_and_res_sage_still_matches_dense():
    """Past MEAN_INPUT_MAX_FEATURES the policy carries no mean (it would double the first layer's cost
    per block node); ResSAGE then reads [features | log-degree] and its dense path still equals sparse."""
    from distill import policy
    from distill.data import load_dataset
    from distill.models import MEAN_INPUT_MAX_FEATURES, ResSAGE, takes_mean

    assert takes_mean("sage-res", MEAN_INPUT_MAX_FEATURES) and not takes_mean("sage-res", MEAN_INPUT_MAX_FEATURES + 1)
    assert not takes_mean("gcn", 5)
    d = load_dataset("synthetic:nodes=60,avg_degree=6,features=5,seed=3").data
    torch.manual_seed(0)
    model = ResSAGE(5, 8, 2, 3, mean_input=False).eval()
    pol = policy.make_policy(3, 2, "mean", 0, degree_input=True, mean_input=False)
    sg = policy.student_graph(d.edge_index, d.num_nodes, pol, x=d.x)
    x = sg.inputs(d.x)
    assert not model.takes_mean and x.size(1) == 5 + 1 and model.lin_in.in_features == 5
    with torch.no_grad():
        sparse = model(x, sg.edges.edge_index, sg.edges.edge_weight)
        adj = torch.zeros(x.size(0), x.size(0)).index_put_(
            (sg.edges.edge_index[1], sg.edges.edge_index[0]), sg.edges.edge_weight, accumulate=True)
        torch.testing.assert_close(model.forward_dense(x, adj), sparse, atol=1e-5, rtol=0)


def test_ppr_mlp_reads_one_row_dense_equals_sparse_and_needs_the_mean():
    import pytest

    from distill import policy
    from distill.data import load_dataset
    from distill.errors import ConfigError
    from distill.models import MEAN_INPUT_MAX_FEATURES, build_student, mean_restart, takes_mean

    torch.manual_seed(0)
    d = load_dataset("synthetic:nodes=120,features=5,seed=1").data
    model, kind = build_student("ppr-mlp", in_channels=5, hidden_channels=8, num_layers=2, out_channels=3)
    assert kind == "none" and takes_mean("ppr-mlp", MEAN_INPUT_MAX_FEATURES + 1)  # one row: no width cap
    pol = policy.make_policy(4, 0, kind, 0, degree_input=True, mean_input=True, mean_restart=mean_restart("ppr-mlp"))
    sg = policy.student_graph(d.edge_index, d.num_nodes, pol, x=d.x)
    x = sg.inputs(d.x)
    assert x.size(1) == 2 * 5 + 1 and model.lin_in.in_features == 10
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_dense(x, torch.zeros(0, 0)), model(x, sg.edges.edge_index),
                                   atol=1e-6, rtol=0)
        moved = x.clone()
        moved[:, 5:10] += 1.0  # the mean columns are read
        assert (model(moved, sg.edges.edge_index) - model(x, sg.edges.edge_index)).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="mean_input"):
        build_student("ppr-mlp", in_channels=5, hidden_channels=8, num_layers=2, out_channels=3, mean_input=False)

