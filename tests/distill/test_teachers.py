"""Teacher families: the GCNII teacher, the per-group weight decay hook of `fit`, and --teacher auto
(every family trained in order, the best on validation kept, a time budget on starting more)."""

import copy
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from distill import teacher as teachers
from distill.artefacts import TrainedTeacher
from distill.cli import main
from distill.config import AUTO_TEACHERS, RunConfig
from distill.data import load_dataset
from distill.errors import ConfigError, DistillError
from distill.models import NodeOutputs
from distill.teacher_models import build_teacher
from distill.train import Edges, param_groups

SMALL = "synthetic:nodes=120,avg_degree=6,features=5,seed=2"
EDGES = torch.tensor([[i for i in range(10)] + [(i + 1) % 10 for i in range(10)],
                      [(i + 1) % 10 for i in range(10)] + [i for i in range(10)]])


def _gcnii(**kw: object) -> nn.Module:
    torch.manual_seed(0)
    return build_teacher("gcnii", in_channels=4, hidden_channels=8, num_layers=3, out_channels=3, **kw).eval()


def test_gcnii_run_and_forward_shapes():
    model, x = _gcnii(), torch.randn(10, 4)
    out = model.run(x, EDGES)
    assert out.logits.shape == (10, 3) and out.attention == []
    assert len(out.hidden) == 3 and all(h.shape == (10, 8) for h in out.hidden)
    assert torch.equal(model(x, EDGES), out.logits)


def test_build_teacher_passes_gcnii_its_arguments_and_drops_the_rest():
    model = _gcnii(alpha=0.2, theta=1.0, heads=4, jk="cat")  # heads, jk: gat-only, ignored
    assert [c.alpha for c in model.convs] == [0.2] * 3
    assert [c.beta for c in model.convs] == pytest.approx([math.log(1.0 / layer + 1) for layer in (1, 2, 3)])
    with pytest.raises(ConfigError, match="gcnii"):
        build_teacher("nope", in_channels=4, hidden_channels=8, num_layers=1, out_channels=3)


def test_gcnii_edge_weight_of_ones_is_the_unweighted_graph_and_has_a_gradient():
    model, x = _gcnii(), torch.randn(10, 4)
    weight = torch.ones(EDGES.size(1), requires_grad=True)
    logits = model(x, EDGES, weight)
    assert torch.allclose(logits, model(x, EDGES), atol=1e-6)
    logits.logsumexp(-1).sum().backward()  # what gradient edge importance differentiates
    assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_gradient_edge_importance_scores_every_edge_of_a_gcnii_teacher():
    from distill.structure import edge_importance

    model, x = _gcnii(), torch.randn(10, 4)
    importance = edge_importance(RunConfig(), model, x, EDGES, Edges(EDGES), "gcnii")
    assert importance.edges.shape == (EDGES.size(1),) and importance.self_loops is None
    assert torch.isfinite(importance.edges).all() and (importance.edges > 0).any()


def test_the_sage_res_teacher_takes_raw_features_and_its_fast_mean_equals_message_passing():
    """Unweighted it aggregates with one sparse product; with edge weights (what gradient
    importance differentiates) by message passing: the same numbers, a node without in-edges
    included (node 10 below), and the weights get a gradient."""
    torch.manual_seed(0)
    model = build_teacher("sage-res", in_channels=4, hidden_channels=8, num_layers=3, out_channels=3,
                          heads=4).eval()
    x = torch.randn(11, 4)
    edges = torch.cat([EDGES, torch.tensor([[10, 10], [0, 1]])], dim=1)  # node 10: out-edges only
    out = model.run(x, edges)
    assert out.logits.shape == (11, 3) and len(out.hidden) == 3 and out.hidden[0].shape == (11, 8)
    weight = torch.ones(edges.size(1), requires_grad=True)
    weighted = model(x, edges, weight)
    torch.testing.assert_close(weighted, out.logits, atol=1e-5, rtol=1e-5)
    weighted.logsumexp(-1).sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_gcnii_propagates_unweighted_by_a_sparse_product_equal_to_message_passing():
    """Unweighted, one CSR product per layer with the normalised adjacency; weighted (unit weights),
    PyG's message passing: the same logits, a node without in-edges included; the kept adjacency
    follows the edges (other edges, or the same tensor changed in place, are read afresh)."""
    torch.manual_seed(0)
    model = build_teacher("gcnii", in_channels=4, hidden_channels=8, num_layers=4, out_channels=3).eval()
    x = torch.randn(11, 4)
    edges = torch.cat([EDGES, torch.tensor([[10, 10], [0, 1]])], dim=1)  # node 10: out-edges only
    fast = model.run(x, edges)
    weighted = model.run(x, edges, torch.ones(edges.size(1)))
    torch.testing.assert_close(fast.logits, weighted.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.hidden[-1], weighted.hidden[-1], atol=1e-5, rtol=1e-5)
    assert model._adjacency(edges, 11, x.dtype) is model._adjacency(edges, 11, x.dtype)  # built once per graph
    grads = []
    for weight in (None, torch.ones(edges.size(1))):  # dropout off: the two passes see the same units
        model.zero_grad()
        model.run(x, edges, weight).logits.logsumexp(-1).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for fast_grad, mp_grad in zip(*grads, strict=True):
        torch.testing.assert_close(fast_grad, mp_grad, atol=1e-5, rtol=1e-4)
    copy.deepcopy(model)  # a kept CSR adjacency does not block copying the model
    flipped = edges.flip(0)
    torch.testing.assert_close(model(x, flipped), model(x, flipped, torch.ones(edges.size(1))), atol=1e-5, rtol=1e-5)
    before = model(x, edges)  # kept for this tensor, then changed in place
    edges[1, 0] = 10
    after = model(x, edges)
    torch.testing.assert_close(after, model(x, edges, torch.ones(edges.size(1))), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(before, after)


def test_the_sage_res_teacher_sees_a_nodes_degree():
    """Two nodes with the same features and the same neighbour mean, one with more in-edges: the
    log-degree column it adds is the only thing that tells them apart."""
    torch.manual_seed(0)
    model = build_teacher("sage-res", in_channels=2, hidden_channels=8, num_layers=2, out_channels=2).eval()
    x = torch.ones(5, 2)
    edges = torch.tensor([[2, 3, 4], [0, 1, 1]])  # node 0: one in-edge, node 1: two
    logits = model(x, edges)
    assert not torch.allclose(logits[0], logits[1])
    # The operators it keeps between forwards follow the edges: other edges, or the same tensor
    # changed in place, are read afresh.
    other = torch.tensor([[2, 3, 4], [1, 0, 0]])
    torch.testing.assert_close(model(x, other), logits[[1, 0, 2, 3, 4]])
    edges[1] = torch.tensor([1, 0, 0])
    torch.testing.assert_close(model(x, edges), logits[[1, 0, 2, 3, 4]])


def test_param_groups_hook_gives_gcnii_convs_their_own_weight_decay():
    model = _gcnii()
    groups = param_groups(model, 5e-4, extra=nn.Linear(2, 2))
    convs = {id(p) for p in model.convs.parameters()}
    assert [g["weight_decay"] for g in groups] == [0.01, 5e-4, 5e-4]
    assert {id(p) for p in groups[0]["params"]} == convs
    assert not convs & {id(p) for g in groups[1:] for p in g["params"]}
    plain = nn.Linear(3, 2)
    assert [(len(g["params"]), g["weight_decay"]) for g in param_groups(plain, 1e-3)] == [(2, 1e-3)]


def test_param_groups_hook_must_cover_every_parameter_once():
    model = _gcnii()
    model.param_groups = lambda wd: [{"params": list(model.convs.parameters())}]
    with pytest.raises(ValueError, match="exactly once"):
        param_groups(model, 5e-4)


class _Fixed(nn.Module):
    """A stand-in teacher: uniform logits [N, C]."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes

    def forward(self, x, edge_index, edge_weight=None):
        return torch.zeros(x.size(0), self.classes)

    def run(self, x, edge_index, edge_weight=None):
        return NodeOutputs(self(x, edge_index))


def _fake_families(monkeypatch, val: dict[str, float]) -> list[str]:
    """Replace per-family training by fixed validation scores; returns the families trained, in order."""
    trained: list[str] = []

    def train_family(cfg, ds, norm, tcfg, device, progress, family):
        trained.append(family)
        return TrainedTeacher(_Fixed(ds.num_classes), Edges(ds.data.edge_index),
                              {"best_val": val[family], "family": family, "restarts_val": [val[family]],
                               "epochs_run": 1, "seconds": 0.0})

    monkeypatch.setattr(teachers, "train_family", train_family)
    return trained


def _train(cfg: RunConfig) -> dict:
    ds = load_dataset(cfg.dataset)
    return teachers.train_teacher(cfg, ds, teachers.feature_norm(cfg, ds), cfg.train_config,
                                  torch.device("cpu"), progress=False).metrics


def test_auto_trains_every_family_in_order_and_keeps_the_best_on_validation(monkeypatch):
    val = {"gat": 0.81, "gat-sep": 0.80, "gcnii": 0.83, "grand": 0.825, "sage-res": 0.82}
    trained = _fake_families(monkeypatch, val)
    m = _train(RunConfig(dataset=SMALL, teacher="auto"))
    assert trained == list(AUTO_TEACHERS) == ["gat", "gat-sep", "gcnii", "grand", "sage-res"]
    assert m["family"] == "gcnii" and m["families_val"] == val and m["families_skipped"] == []
    assert RunConfig(teacher="auto").teacher_name(m) == f"gcnii-{RunConfig().gcnii_layers}"
    trained.clear()
    one = _train(RunConfig(dataset=SMALL, teacher="gat-sep"))
    assert trained == ["gat-sep"] and one["family"] == "gat-sep" and one["families_val"] == {"gat-sep": 0.80}


def test_auto_budget_stops_starting_families_but_always_runs_the_first(monkeypatch):
    trained = _fake_families(monkeypatch, {"gat": 0.7, "gat-sep": 0.9, "gcnii": 0.9, "grand": 0.9, "sage-res": 0.9})
    m = _train(RunConfig(dataset=SMALL, teacher_budget=1e-9))
    assert trained == ["gat"] and m["family"] == "gat"
    assert m["families_val"] == {"gat": 0.7} and m["families_skipped"] == ["gat-sep", "gcnii", "grand", "sage-res"]


def test_auto_really_trains_each_family(monkeypatch):
    m = _train(RunConfig(dataset=SMALL, teacher_layers=2, gcnii_layers=2, teacher_hidden=8, epochs=3,
                         min_epochs=0, patience=2))
    assert list(m["families_val"]) == list(AUTO_TEACHERS)
    assert m["best_val"] == max(m["families_val"].values()) == m["families_val"][m["family"]]


def test_depth_and_layer_map_follow_the_family():
    cfg = RunConfig(teacher_layers=6, gcnii_layers=16)
    assert cfg.teacher_depth("gat") == 6 and cfg.teacher_depth("gcnii") == 16
    assert cfg.layer_pairs == [(3, 1), (6, 2)] and cfg.layer_pairs_for(16) == [(8, 1), (16, 2)]
    with pytest.raises(ConfigError, match="outside teacher 1..6"):  # auto may keep the 6-layer gat
        RunConfig(layer_map="16:2")
    assert RunConfig(teacher="gcnii", layer_map="16:2").layer_pairs_for(16) == [(16, 2)]
    assert RunConfig(teacher_layers=1).layer_pairs == [(1, 1), (1, 2)]  # never teacher layer 0 (hidden[-1])


def test_bad_teacher_options_exit_2_naming_the_value(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--out", str(tmp_path / "b"), "--teacher", "nope"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and all(name in err for name in ("auto", "gat-sep", "gcnii"))
    for flag, value in (("--teacher-budget", "-1"), ("--gcnii-layers", "0"), ("--gcnii-alpha", "1.5")):
        assert main(["run", "--out", str(tmp_path / "b"), flag, value]) == 2
        assert f"{flag} {float(value) if 'budget' in flag else value}" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    with pytest.raises(ConfigError, match="'nope' is not one of"):
        RunConfig(teacher="nope")


def test_reused_teacher_of_an_auto_parent_is_the_family_it_kept():
    from distill.refresh import reused_family

    def parent(metrics):
        return SimpleNamespace(metrics={"teacher": metrics})

    root = Path("parent")
    assert reused_family(RunConfig(), parent({"family": "gcnii"}), root).teacher == "gcnii"
    old = RunConfig(teacher="gat")  # manifests before auto: the config names the family
    assert reused_family(old, parent({}), root) is old
    with pytest.raises(DistillError, match="drop --reuse-teacher"):
        reused_family(RunConfig(), parent({}), root)


def test_configs_of_older_manifests_still_load():
    new = {"gcnii_layers", "gcnii_alpha", "gcnii_theta", "teacher_budget"}
    old = {k: v for k, v in RunConfig(teacher="gat").to_dict().items() if k not in new}
    cfg = RunConfig.from_dict(old)
    assert cfg.teacher == "gat" and cfg.families == ("gat",) and cfg.teacher_name({}) == "gat-6"
    assert RunConfig.from_dict(RunConfig().to_dict()).families == AUTO_TEACHERS


def test_an_ensemble_teacher_is_the_mean_of_its_members_and_reloads_from_its_state():
    cfg = RunConfig(dataset=SMALL, teacher="gcn", teacher_layers=2, teacher_hidden=8, epochs=6, patience=3,
                    min_epochs=0, seed=3, teacher_ensemble=2)
    ds, cpu = load_dataset(cfg.dataset), torch.device("cpu")
    norm = teachers.feature_norm(cfg, ds)
    ens = teachers.train_teacher(cfg, ds, norm, cfg.train_config, cpu, progress=False)
    singles = [teachers.train_teacher(replace(cfg, teacher_ensemble=1, seed=s), ds, norm, cfg.train_config, cpu,
                                      progress=False) for s in (3, 4)]
    x, ei = ds.data.x, ds.data.edge_index
    want = torch.stack([s.model.eval()(x, ei).softmax(-1) for s in singles]).mean(0).log()
    got = ens.model.eval()(x, ei)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    m = ens.metrics
    assert [r["seed"] for r in m["members"]] == [3, 4]
    assert [r["accuracy"] for r in m["members"]] == [s.metrics["accuracy"] for s in singles]
    test = ds.data.test_mask
    assert m["accuracy"] == pytest.approx(float((got[test].argmax(-1) == ds.data.y[test]).float().mean()))
    assert m["epochs_run"] == sum(s.metrics["epochs_run"] for s in singles)
    assert cfg.teacher_name(m) == "gcn-2 x2"
    # What a bundle's teacher.pt and the bench cache hold loads back into teacher_model's ensemble.
    fresh, _ = teachers.teacher_model(cfg, ds, norm, cpu)
    fresh.load_state_dict(ens.model.state_dict())
    assert torch.equal(fresh.eval()(x, ei), got)


def test_an_ensemble_needs_the_full_graph_and_at_least_one_member():
    with pytest.raises(ConfigError, match="--teacher-ensemble 3 needs the full graph"):
        RunConfig(teacher_ensemble=3, teacher_fanout=16)
    with pytest.raises(ConfigError, match="--teacher-ensemble 0 must be >= 1"):
        RunConfig(teacher_ensemble=0)


def test_ensemble_members_after_the_first_keep_the_family_it_chose(monkeypatch):
    trained = _fake_families(monkeypatch, {"gat": 0.81, "gat-sep": 0.80, "gcnii": 0.83, "grand": 0.8, "sage-res": 0.82})
    m = _train(RunConfig(dataset=SMALL, teacher="auto", teacher_ensemble=3, seed=7))
    assert trained == [*AUTO_TEACHERS, "gcnii", "gcnii"]
    assert [(r["seed"], r["family"]) for r in m["members"]] == [(7, "gcnii"), (8, "gcnii"), (9, "gcnii")]


def test_keep_on_loss_ranks_restarts_and_families_by_validation_loss():
    m = _train(RunConfig(dataset=SMALL, teacher_layers=2, gcnii_layers=2, teacher_hidden=8, epochs=4, min_epochs=0,
                         patience=2, teacher_restarts=2, teacher_keep_on="loss"))
    assert m["keep_on"] == "loss" and list(m["families_val"]) == list(AUTO_TEACHERS)
    assert m["best_val_loss"] == min(m["families_val"].values()) == m["families_val"][m["family"]]


def test_an_ensemble_seed_must_stay_below_two_to_the_63():
    with pytest.raises(ConfigError, match="--teacher-ensemble 2 needs seeds up to"):
        RunConfig(seed=2**63 - 1, teacher_ensemble=2)
    RunConfig(seed=2**63 - 2, teacher_ensemble=2)


def test_an_ensemble_of_type_aware_teachers_keeps_their_typed_outputs():
    from distill.hetero_models import TypedOutputs

    cfg = RunConfig(dataset="synthetic-hetero", teacher="hetero-sage", teacher_layers=2, teacher_hidden=8, epochs=2,
                    patience=2, min_epochs=0, teacher_ensemble=2)
    ds, cpu = load_dataset(cfg.dataset), torch.device("cpu")
    norm = teachers.feature_norm(cfg, ds)
    ens = teachers.train_teacher(cfg, ds, norm, cfg.train_config, cpu, progress=False)
    out = ens.model.eval().run(ds.data.x, ens.edges.edge_index)
    assert isinstance(out, TypedOutputs) and [r["family"] for r in ens.metrics["members"]] == ["hetero-sage"] * 2
    fresh, _ = teachers.teacher_model(cfg, ds, norm, cpu)
    fresh.load_state_dict(ens.model.state_dict())
    assert torch.equal(fresh.eval()(ds.data.x, ens.edges.edge_index), ens.model(ds.data.x, ens.edges.edge_index))
