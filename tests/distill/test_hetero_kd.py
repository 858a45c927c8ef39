"""Type-specific (and pooled) distillation losses on tiny fixed tensors, against hand-computed values
or an independent numpy formula."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from distill.errors import ConfigError
from distill.hetero_kd import (
    TypedKD,
    TypedKDConfig,
    linear_cka,
    per_relation_lsp,
    per_type_feature_loss,
    pooled_feature_loss,
    pooled_lsp,
)
from distill.hetero_models import TypedOutputs
from distill.objectives import response_kd
from distill.structure import LSP_TAU

# Two types of different sizes: "a" (2 nodes) whose centred states are orthogonal between student
# and teacher, "b" (2 nodes) whose centred states agree.
S = {"a": torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), "b": torch.tensor([[4.0, 4.0], [2.0, 2.0]])}
T = {"a": torch.tensor([[0.0, 1.0], [0.0, -1.0]]), "b": torch.tensor([[2.0, 2.0], [0.0, 0.0]])}


def _feature_np(s: np.ndarray, t: np.ndarray) -> float:
    """mean over nodes of 2 - 2 cos(s_i - mean(s), t_i - mean(t))."""
    s, t = s - s.mean(0), t - t.mean(0)
    cos = [u @ v / (np.linalg.norm(u) * np.linalg.norm(v)) for u, v in zip(s, t, strict=True)]
    return float(np.mean([2 - 2 * c for c in cos]))


def test_per_type_feature_loss_weighs_types_equally():
    # a: orthogonal unit vectors, |u - v|^2 = 2 per node; b: identical directions, 0. Mean of types: 1.
    assert per_type_feature_loss(S, T).item() == pytest.approx(1.0, abs=1e-6)


def test_pooled_feature_loss_is_one_set_centred_by_one_mean():
    expected = _feature_np(np.concatenate([S["a"], S["b"]]).astype(float),
                           np.concatenate([T["a"], T["b"]]).astype(float))
    # By hand: pooled means (1.5, 1.5) and (0.5, 0.5); cosines -1/sqrt(5), 3.5/sqrt(21.25), 1 and -1: the
    # second "b" node, a perfect match within its type, points the opposite way once centred by the pool.
    assert expected == pytest.approx((2 + 2 / math.sqrt(5) + 2 - 7 / math.sqrt(21.25) + 0 + 4) / 4, abs=1e-9)
    assert pooled_feature_loss(S, T).item() == pytest.approx(expected, abs=1e-6)


def _lsp_np(s: np.ndarray, t: np.ndarray, edges: list[tuple[int, int]]) -> float:
    """KL(teacher || student) of each destination's softmax over cos / tau to its sources, mean over
    destinations (node ids index the stacked rows of s and t)."""
    def dist(h: np.ndarray, dst: int) -> np.ndarray:
        cos = np.array([h[j] @ h[dst] / (np.linalg.norm(h[j]) * np.linalg.norm(h[dst])) for j, d in edges if d == dst])
        e = np.exp(cos / LSP_TAU)
        return e / e.sum()

    kl = [float((dist(t, d) * np.log(dist(t, d) / dist(s, d))).sum()) for d in sorted({d for _, d in edges})]
    return float(np.mean(kl))


# Paper 0 reads authors 0, 1 and subject 0; paper 1 reads author 1.
PS = {"paper": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "author": torch.tensor([[1.0, 1.0], [0.0, 1.0]]),
      "subject": torch.tensor([[-1.0, 0.5]])}
PT = {"paper": torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
      "author": torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.2, 0.0]]), "subject": torch.tensor([[1.0, 0.0, 1.0]])}
EDGES = {("author", "writes", "paper"): torch.tensor([[0, 1, 1], [0, 0, 1]]),
         ("subject", "of", "paper"): torch.tensor([[0], [0]])}


def test_per_relation_lsp_averages_relations():
    # Stacked rows: paper 0, 1, then author 0, 1 (relation 1), subject 0 (relation 2).
    s_a, t_a = np.concatenate([PS["paper"], PS["author"]]), np.concatenate([PT["paper"], PT["author"]])
    by_authors = _lsp_np(s_a, t_a, [(2, 0), (3, 0), (3, 1)])
    # A single subject neighbour: both distributions are 1, KL 0.
    assert by_authors > 0.01
    got = per_relation_lsp(PS, PT, EDGES).item()
    assert got == pytest.approx((by_authors + 0.0) / 2, abs=1e-6)


def test_pooled_lsp_merges_relations_into_one_neighbourhood():
    order = ("paper", "author", "subject")
    s = np.concatenate([PS[t] for t in order])
    t = np.concatenate([PT[t] for t in order])
    # Paper 0's one distribution over author 0 (row 2), author 1 (row 3) and subject 0 (row 4).
    expected = _lsp_np(s, t, [(2, 0), (3, 0), (4, 0), (3, 1)])
    assert pooled_lsp(PS, PT, EDGES).item() == pytest.approx(expected, abs=1e-6)
    assert expected != pytest.approx(per_relation_lsp(PS, PT, EDGES).item(), abs=1e-3)


def _identity(kd: TypedKD) -> None:
    for proj in kd.proj.values():
        assert isinstance(proj, nn.Linear)
        with torch.no_grad():
            proj.weight.copy_(torch.eye(*proj.weight.shape))
            proj.bias.zero_()


@pytest.mark.parametrize("kd_types", ["per-type", "pooled"])
def test_typed_kd_sums_its_weighted_terms(kd_types):
    logits, t_logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 1.0], [0.0, 3.0]])
    y, mask = torch.tensor([0, 1]), torch.tensor([True, False])
    student = TypedOutputs(logits, [], [], [{k: v[:, :2] for k, v in PS.items()}])
    teacher = TypedOutputs(t_logits, [], [], [{k: v[:, :2] for k, v in PT.items()}])
    cfg = TypedKDConfig(kd_types=kd_types, alpha=0.5, temperature=2.0, beta=0.7, gamma=0.3)
    kd = TypedKD(cfg, ("paper", "author", "subject"), 2, 2)
    _identity(kd)
    assert len(kd.proj) == (3 if kd_types == "per-type" else 1)
    feature = per_type_feature_loss if kd_types == "per-type" else pooled_feature_loss
    structure = per_relation_lsp if kd_types == "per-type" else pooled_lsp
    expected = (response_kd(logits, t_logits, y, mask, 2.0, 0.5) + 0.7 * feature(student.typed[0], teacher.typed[0])
                + 0.3 * structure(student.typed[0], teacher.typed[0], EDGES))
    assert kd(student, y, mask, teacher, EDGES).item() == pytest.approx(expected.item(), abs=1e-6)
    assert set(kd.last_terms) == {"response", "feature", "structure"}


def test_balanced_response_weighs_each_node_by_its_teacher_class_share():
    # Teacher argmax 0, 0, 1: shares 2/3, 2/3, 1/3 -> weights 1.5, 1.5, 3, scaled to mean 1: 0.75, 0.75, 1.5.
    # alpha 1 leaves only the KL term; with T = 1 it is sum_c p_t (log p_t - log p_s) per node.
    t_logits = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0], [0.0, math.log(3.0)]])
    logits = torch.zeros(3, 2)  # p_s = (1/2, 1/2) everywhere
    out, teacher = TypedOutputs(logits, [], [], []), TypedOutputs(t_logits, [], [], [])
    y, mask = torch.tensor([0, 0, 1]), torch.tensor([True, False, False])
    per_node = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # the same KL for all three
    kinds = ("response",)
    plain = TypedKD(TypedKDConfig(kinds=kinds, alpha=1.0), ("paper",), 2, 2)(out, y, mask, teacher, {})
    balanced = TypedKD(TypedKDConfig(kinds=kinds, alpha=1.0, balanced=True), ("paper",), 2, 2)(out, y, mask,
                                                                                               teacher, {})
    # Equal KL on every node: the weights' mean of 1 leaves the term as it was (the golden value);
    # the unequal case below is where the weighting shows.
    assert plain.item() == pytest.approx(per_node, rel=1e-6)
    assert balanced.item() == pytest.approx(per_node, rel=1e-6)
    unequal = TypedOutputs(torch.tensor([[0.0, 0.0], [0.0, 0.0], [2.0, 0.0]]), [], [], [])
    w_plain = TypedKD(TypedKDConfig(kinds=kinds, alpha=1.0), ("paper",), 2, 2)(unequal, y, mask, teacher, {})
    w_bal = TypedKD(TypedKDConfig(kinds=kinds, alpha=1.0, balanced=True), ("paper",), 2, 2)(unequal, y, mask,
                                                                                            teacher, {})
    assert w_bal.item() > w_plain.item()  # the misfit node is the rare-class one, weighed 1.5 instead of 1


def test_without_a_teacher_only_cross_entropy_counts():
    kd = TypedKD(TypedKDConfig(kinds=()), ("paper",), 2, 2)
    out = TypedOutputs(torch.tensor([[math.log(3.0), 0.0]]), [], [], [])
    # softmax = (3/4, 1/4); CE of label 0 = log(4/3).
    assert kd(out, torch.tensor([0]), torch.tensor([True]), None, {}).item() == pytest.approx(math.log(4 / 3))


@pytest.mark.parametrize("kwargs, needle", [({"kd_types": "mixed"}, "choose one of \\['pooled', 'per-type'\\]"),
                                            ({"kinds": ("attention",)}, "unknown distillation kinds"),
                                            ({"kinds": ("feature",), "balanced": True}, "need the response term"),
                                            ({"alpha": 1.5}, "alpha in \\[0, 1\\]")])
def test_bad_kd_settings_are_named(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        TypedKDConfig(**kwargs)


def _cka_gram_np(a: np.ndarray, b: np.ndarray) -> float:
    """Kornblith et al.'s debiased CKA through n x n Gram matrices (their `center_gram(unbiased=True)`)."""
    def centre(g: np.ndarray) -> np.ndarray:
        g, n = g.copy(), g.shape[0]
        np.fill_diagonal(g, 0)
        means = g.sum(0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        g -= means[:, None] + means[None, :]
        np.fill_diagonal(g, 0)
        return g

    a, b = a - a.mean(0), b - b.mean(0)
    k, l_ = centre(a @ a.T), centre(b @ b.T)
    return float((k * l_).sum() / np.sqrt((k * k).sum() * (l_ * l_).sum()))


def test_debiased_cka_matches_the_gram_formula_and_ignores_rotation_and_scale():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(12, 5, generator=gen), torch.randn(12, 7, generator=gen)
    assert linear_cka(a, b) == pytest.approx(_cka_gram_np(a.double().numpy(), b.double().numpy()), abs=1e-10)
    rotation, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen))
    assert linear_cka(a, 3.0 * a @ rotation + 1.0) == pytest.approx(1.0, abs=1e-6)
