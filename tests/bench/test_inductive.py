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
