"""bench/inductive.py: hiding nodes' soft labels restricts the KL term to the rest, and only while asked."""

import pytest
import torch

from distill import objectives
from tests.bench.scripts import load

S = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0], [0.0, 2.0, 0.0]])
T = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0], [1.0, 1.0, 1.0]])


def test_hidden_soft_labels_covers_only_the_visible_nodes_and_puts_the_objective_back():
    inductive = load("inductive")
    real = objectives.soft_target_kl
    visible = torch.tensor([True, False, True])
    with inductive.hidden_soft_labels(visible):
        assert objectives.soft_target_kl(S, T, 2.0).item() == pytest.approx(real(S[visible], T[visible], 2.0).item())
        assert objectives.soft_target_kl(S, T, 2.0).item() != pytest.approx(real(S, T, 2.0).item())
    assert objectives.soft_target_kl is real
    with pytest.raises(RuntimeError), inductive.hidden_soft_labels(visible):
        raise RuntimeError("a failed run")
    assert objectives.soft_target_kl is real
    with inductive.hidden_soft_labels(None):
        assert objectives.soft_target_kl is real


def test_hidden_nodes_do_not_count_in_the_class_balanced_weights():
    inductive = load("inductive")
    real = objectives.soft_target_kl
    teacher = torch.tensor([[3.0, 0.0], [3.0, 0.0], [0.0, 3.0], [0.0, 3.0], [0.0, 3.0]])  # argmax 0 0 1 1 1
    student = torch.zeros(5, 2)
    visible = torch.tensor([True, True, True, False, False])  # visible argmax 0 0 1: shares 2/3, 1/3
    with inductive.hidden_soft_labels(visible):
        got = objectives.soft_target_kl(student, teacher, 1.0, objectives.class_balanced_weights(teacher))
    # Weights 1/(2/3), 1/(2/3), 1/(1/3) = 1.5, 1.5, 3, scaled to mean 1: 0.75, 0.75, 1.5.
    want = real(student[visible], teacher[visible], 1.0, torch.tensor([0.75, 0.75, 1.5]))
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
