"""Feature and structure distillation: golden numbers on a tiny graph, and proof each term trains."""

import pytest
import torch

from distill import kd
from distill.config import RunConfig, layer_map, parse_kinds
from distill.errors import ConfigError
from distill.models import GAT, GCN, NodeOutputs

# A 3-node path 0 - 1 - 2, both directions.
EDGES = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
H_S = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
H_T = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def test_alpha_is_a_weight_or_the_auto_grid():
    from distill.config import ALPHA_GRID, RunConfig

    assert RunConfig().alphas == ALPHA_GRID == (0.0, 0.2, 0.8)
    assert RunConfig(alpha="0.5").alphas == (0.5,)
    assert RunConfig.from_dict({"alpha": 0.5}).alpha == "0.5"  # manifests written before `auto`


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
    assert kd.feature_loss(H_S, t).item() == pytest.approx(expected, abs=1e-6)


def test_lsp_loss_golden():
    # Node 1 is the only node with two neighbours; nodes 0 and 2 have one (KL = 0 for them).
    # cos sims to node 1's neighbours 0 and 2: student (0, 1/sqrt2), teacher (1/sqrt2, 0).
    # With tau = 0.1, a = 7.0711: p_s = softmax([0, a]), p_t = softmax([a, 0]), so
    # KL(p_t || p_s) = a * tanh(a / 2) = 7.05907.
    a = (0.5**0.5) / kd.LSP_TAU
    p_s = torch.softmax(torch.tensor([0.0, a]), 0)
    p_t = torch.softmax(torch.tensor([a, 0.0]), 0)
    kl_node1 = float((p_t * (p_t.log() - p_s.log())).sum())
    golden = kl_node1 / 3  # averaged over the 3 nodes that have neighbours
    assert golden == pytest.approx(7.05907 / 3, abs=1e-4)
    assert kd.lsp_loss(H_S, H_T, EDGES).item() == pytest.approx(golden, abs=1e-5)
    assert kd.lsp_loss(H_T, H_T, EDGES).item() == pytest.approx(0.0, abs=1e-7)


def test_importance_lookup_defaults_to_zero():
    scored = torch.tensor([[0, 2], [1, 1]])
    score = torch.tensor([0.7, 0.2])
    out = kd.importance_on_edges(EDGES, scored, score, 3)
    assert out.tolist() == pytest.approx([0.7, 0.0, 0.0, 0.2])


@pytest.mark.parametrize("kinds", [("response",), ("response", "feature"), ("response", "structure"), kd.KINDS])
def test_each_term_is_nonzero_and_reaches_the_student(kinds):
    torch.manual_seed(0)
    x = torch.randn(3, 4)
    teacher = GAT(4, 8, 2, 2, heads=2)
    teacher.eval()
    t_out = teacher.run(x, EDGES)
    signals = kd.TeacherSignals(t_out.logits.detach(), [h.detach() for h in t_out.hidden])
    student = GCN(4, 5, 2, 2)
    objective = kd.Objective(kinds, layer_map("", 2, 2), [5, 2], [8, 8], 0.5, 4.0, 1.0, 1.0)
    out: NodeOutputs = student.run(x, EDGES)
    loss = objective(out, torch.tensor([0, 1, 0]), torch.tensor([True, False, False]), signals, EDGES)
    loss.backward()
    for kind in kinds:
        assert objective.last_terms[kind] > 0, kind
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    if "feature" in kinds:
        assert all(p.grad is not None for p in objective.proj.parameters())
    # without the teacher the same objective is plain cross-entropy
    assert set(kd.Objective((), [], [5, 2], [], 0.5, 4.0, 1, 1)(out, torch.tensor([0, 1, 0]),
                                                                   torch.tensor([True, True, False]), None,
                                                                   EDGES).shape) == set()


@pytest.mark.parametrize("weights, expected", [("fixed", ["gcn"]), ("attention", ["attention"]),
                                               ("auto", ["gcn", "attention"])])
def test_structure_weights_candidates_and_validation_choice(weights, expected):
    """Structure KD from a GAT teacher trains on the candidate propagations and keeps the best on validation."""
    from dataclasses import replace

    from distill import pipeline
    from distill.config import RunConfig

    cfg = RunConfig(dataset="synthetic:nodes=200,avg_degree=8,features=6,seed=3", teacher_layers=2,
                    teacher_hidden=16, epochs=20, patience=5, min_epochs=0, kd="response,structure",
                    structure_weights=weights, fanout=3)
    prep = pipeline.prepare(cfg, progress=False)
    _, _, m, sg = pipeline.train_distilled(cfg, prep, cfg.kd_kinds, progress=False)
    names = [pipeline.candidate_name(p, a) for p in expected for a in (0.0, 0.2, 0.8)]
    assert list(m["candidates_val"]) == names
    best = max(names, key=lambda k: (m["candidates_val"][k], -names.index(k)))
    assert pipeline.candidate_name(m["propagation"], m["alpha"]) == best
    assert m["propagation"] == sg.policy.propagation and m["best_val"] == m["candidates_val"][best]
    assert sg.score == "teacher_attention"
    _, _, scratch, scratch_sg = pipeline.train_distilled(replace(cfg, kd="none"), prep, (), progress=False)
    assert scratch["candidates_val"] == {"gcn": scratch["best_val"]} and scratch_sg.score == "hash"
    assert scratch["alpha"] is None
