"""The objectives: golden numbers for every loss on tiny inputs, and proof each term trains."""

import pytest
import torch
import torch.nn.functional as F

from distill import objectives, structure
from distill.artefacts import TeacherSignals
from distill.config import KD_KINDS, RunConfig, layer_map, parse_kinds
from distill.errors import ConfigError
from distill.models import GCN, NodeOutputs
from distill.policy import scores_on
from distill.teacher_models import GAT

# A 3-node path 0 - 1 - 2, both directions.
EDGES = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
H_S = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
H_T = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def test_alpha_is_a_weight_or_the_auto_grid():
    from distill.config import ALPHA_GRID, RunConfig

    assert RunConfig().alphas == ALPHA_GRID == (0.0, 0.2, 0.8)
    assert RunConfig(alpha="0.5").alphas == (0.5,)
    assert RunConfig.from_dict({"alpha": 0.5}).alpha == "0.5"  # manifests written before `auto`


def test_temperature_is_a_positive_number_or_the_auto_grid():
    from distill.config import TEMPERATURE_GRID, RunConfig

    assert RunConfig().temperatures == TEMPERATURE_GRID == (1.0, 4.0)
    assert RunConfig(temperature="2").temperatures == (2.0,)
    assert RunConfig.from_dict({"temperature": 4.0}).temperatures == (4.0,)  # manifests written before `auto`
    for bad in ("0", "-1", "inf", "nan", "warm"):
        with pytest.raises(ConfigError, match="--temperature"):
            RunConfig(temperature=bad)


def test_layer_map_default_and_explicit():
    assert layer_map("", 6, 2) == [(3, 1), (6, 2)]
    assert layer_map("2:1,6:2", 6, 2) == [(2, 1), (6, 2)]
    assert layer_map("", 4, 3) == [(1, 1), (3, 2), (4, 3)]
    with pytest.raises(ConfigError, match="outside"):
        layer_map("7:1", 6, 2)
    with pytest.raises(ConfigError, match="TEACHER:STUDENT"):
        layer_map("a:b", 6, 2)
    with pytest.raises(ConfigError, match="unknown"):
        parse_kinds("response,logits")
    assert parse_kinds("structure,response") == ("response", "structure") and parse_kinds("none") == ()
    with pytest.raises(ConfigError):
        RunConfig(layer_map="9:1")


def test_feature_loss_golden():
    # 2 - 2 cos per node: cos = 1 -> 0; cos((0,1),(1,1)) = 1/sqrt2 -> 2 - sqrt2; opposite -> 4.
    t = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, -1.0]])
    expected = (0.0 + (2 - 2 ** 0.5) + 4.0) / 3
    assert objectives.feature_loss(H_S, t).item() == pytest.approx(expected, abs=1e-6)


def test_lsp_loss_golden():
    # Node 1 is the only node with two neighbours; nodes 0 and 2 have one (KL = 0 for them).
    # cos sims to node 1's neighbours 0 and 2: student (0, 1/sqrt2), teacher (1/sqrt2, 0).
    # With tau = 0.1, a = 7.0711: p_s = softmax([0, a]), p_t = softmax([a, 0]), so
    # KL(p_t || p_s) = a * tanh(a / 2) = 7.05907.
    a = (0.5**0.5) / structure.LSP_TAU
    p_s = torch.softmax(torch.tensor([0.0, a]), 0)
    p_t = torch.softmax(torch.tensor([a, 0.0]), 0)
    kl_node1 = float((p_t * (p_t.log() - p_s.log())).sum())
    golden = kl_node1 / 3  # averaged over the 3 nodes that have neighbours
    assert golden == pytest.approx(7.05907 / 3, abs=1e-4)
    assert structure.lsp_loss(H_S, H_T, EDGES).item() == pytest.approx(golden, abs=1e-5)
    assert structure.lsp_loss(H_T, H_T, EDGES).item() == pytest.approx(0.0, abs=1e-7)


def test_importance_lookup_defaults_to_zero():
    scored = torch.tensor([[0, 2], [1, 1]])
    score = torch.tensor([0.7, 0.2])
    out = scores_on(EDGES, scored, score, 3)
    assert out.tolist() == pytest.approx([0.7, 0.0, 0.0, 0.2])


@pytest.mark.parametrize("kinds", [("response",), ("response", "feature"), ("response", "structure"), KD_KINDS])
def test_each_term_is_nonzero_and_reaches_the_student(kinds):
    torch.manual_seed(0)
    x = torch.randn(3, 4)
    teacher = GAT(4, 8, 2, 2, heads=2)
    teacher.eval()
    t_out = teacher.run(x, EDGES)
    signals = TeacherSignals(t_out.logits.detach(), [h.detach() for h in t_out.hidden])
    student = GCN(4, 5, 2, 2)
    objective = objectives.Objective(kinds, layer_map("", 2, 2), [5, 2], [8, 8], 0.5, 4.0, 1.0, 1.0)
    out: NodeOutputs = student.run(x, EDGES)
    loss = objective(out, torch.tensor([0, 1, 0]), torch.tensor([True, False, False]), signals, EDGES)
    loss.backward()
    for kind in kinds:
        assert objective.last_terms[kind] > 0, kind
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    if "feature" in kinds:
        assert all(p.grad is not None for p in objective.proj.parameters())


def test_without_a_teacher_the_objective_is_plain_cross_entropy_on_train_nodes():
    torch.manual_seed(0)
    out = GCN(4, 5, 2, 3).run(torch.randn(3, 4), EDGES)
    y, train = torch.tensor([0, 1, 2]), torch.tensor([True, True, False])
    for kinds in ((), KD_KINDS):  # the kinds are inert without teacher signals
        loss = objectives.Objective(kinds, layer_map("", 2, 2), [5, 3], [8, 8], 0.5, 4.0, 1.0, 1.0)(
            out, y, train, None, EDGES)
        expected = F.cross_entropy(out.logits[:2], y[:2])
        assert loss.item() == pytest.approx(expected.item(), abs=1e-7)


@pytest.mark.parametrize("weights, expected", [("fixed", ["gcn"]), ("attention", ["attention"]),
                                               ("auto", ["gcn", "attention"])])
def test_structure_weights_candidates_and_validation_choice(weights, expected):
    """Structure KD from a GAT teacher trains on the candidate propagations and keeps the best on validation."""
    from dataclasses import replace

    from distill import pipeline
    from distill.students import candidate_name, train_candidates

    cfg = RunConfig(dataset="synthetic:nodes=200,avg_degree=8,features=6,seed=3", teacher_layers=2,
                    teacher_hidden=16, epochs=20, patience=5, min_epochs=0, kd="response,structure", student="gcn",
                    structure_weights=weights, fanout=3)
    prep = pipeline.prepare(cfg, progress=False)
    trained = train_candidates(cfg, prep, cfg.kd_kinds, progress=False)
    m = trained.record()
    settings = [(0.0, None, True)] + [(a, t, True) for a in (0.2, 0.8) for t in (1.0, 4.0)]  # T where soft targets
    names = [candidate_name(p, a, t, reg) for p in expected for a, t, reg in settings]
    assert list(m["candidates_val"]) == names
    best = max(names, key=lambda k: (m["candidates_val"][k], -names.index(k)))
    assert candidate_name(m["propagation"], m["alpha"], m["temperature"], m["regularised"]) == best
    assert m["propagation"] == trained.graph.policy.propagation and m["best_val"] == m["candidates_val"][best]
    assert trained.graph.policy.score == "teacher_attention"
    scratch = train_candidates(replace(cfg, kd="none"), prep, (), progress=False)
    assert scratch.candidates_val == {"gcn": scratch.fit.best_val} and scratch.graph.policy.score == "hash"
    assert scratch.alpha is None


# Response KD: golden numbers computed once by hand-written numpy (softmax, KL, CE), independent of torch:
# KL(softmax(t/2) || softmax(s/2)) averaged over both nodes * 2^2, and CE of node 0 only.
S = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
T = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
Y = torch.tensor([0, 2])
TRAIN = torch.tensor([True, False])
GOLDEN_KL_T2 = 0.5920946257268127
GOLDEN_CE = 0.40760596444438046


def test_soft_target_kl_golden():
    assert objectives.soft_target_kl(S, T, 2.0).item() == pytest.approx(GOLDEN_KL_T2, abs=1e-6)


def test_supervised_uses_train_nodes_only():
    assert objectives.supervised(S, Y, TRAIN).item() == pytest.approx(GOLDEN_CE, abs=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 1.0])
def test_response_kd_is_the_weighted_sum(alpha):
    value = objectives.response_kd(S, T, Y, TRAIN, temperature=2.0, alpha=alpha).item()
    assert value == pytest.approx(alpha * GOLDEN_KL_T2 + (1 - alpha) * GOLDEN_CE, abs=1e-6)


def test_kl_is_zero_for_identical_logits_and_grad_reaches_student():
    s = S.clone().requires_grad_(True)
    assert objectives.soft_target_kl(S, S, 4.0).item() == pytest.approx(0.0, abs=1e-7)
    objectives.response_kd(s, T, Y, TRAIN, 4.0, 0.5).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert s.grad[1].abs().sum() > 0  # unlabelled node 1 is taught by the teacher alone


def test_a_gat_sep_teacher_ranks_neighbours_but_offers_no_attention_propagation():
    """gat-sep never attends to the node itself, so there is no self weight to build an attention P from."""
    from distill import pipeline
    from distill.students import train_candidates

    cfg = RunConfig(dataset="synthetic:nodes=200,avg_degree=8,features=6,seed=3", teacher="gat-sep", teacher_layers=2,
                    teacher_hidden=16, epochs=10, patience=5, min_epochs=0, kd="response,structure", student="gcn",
                    alpha="0.2", fanout=3, soft_regularise="on")
    prep = pipeline.prepare(cfg, progress=False)
    trained = train_candidates(cfg, prep, cfg.kd_kinds, progress=False)
    assert list(trained.candidates_val) == ["gcn, alpha 0.2, T 1", "gcn, alpha 0.2, T 4"]
    assert trained.graph.policy.score == "teacher_attention" and trained.graph.policy.propagation == "gcn"
