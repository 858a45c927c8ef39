"""--kd-balance: the soft-target KL weighted by the inverse share of each node's teacher-predicted class."""

from dataclasses import replace

import pytest
import torch

from distill import objectives, pipeline
from distill.config import RunConfig
from distill.errors import ConfigError
from distill.objectives import class_balanced_weights, soft_target_kl
from distill.students import train_candidates

TEACHER = torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])  # predicts class 0 three times, 1 once
STUDENT = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]])


def test_each_predicted_class_carries_the_same_total_weight():
    w = class_balanced_weights(TEACHER)
    assert torch.allclose(w, torch.tensor([2 / 3, 2 / 3, 2 / 3, 2.0]))
    assert float(w[:3].sum()) == pytest.approx(float(w[3]))  # class 0's three nodes weigh as its one node
    assert float(w.mean()) == pytest.approx(1.0)


def test_weighted_kl_golden_numbers():
    # Per-node KL(t || s) at T = 1: 0.06716, 0.32783, 0.82890, 0.32783 (hand-computed from the softmaxes).
    assert soft_target_kl(STUDENT, TEACHER, 1.0) == pytest.approx(0.387870, abs=1e-5)
    assert soft_target_kl(STUDENT, TEACHER, 1.0, class_balanced_weights(TEACHER)) == pytest.approx(0.367851, abs=1e-5)
    # Equal weights are the unweighted mean.
    unweighted = float(soft_target_kl(STUDENT, TEACHER, 2.0))
    assert soft_target_kl(STUDENT, TEACHER, 2.0, torch.ones(4)) == pytest.approx(unweighted)


def test_on_trains_every_soft_target_candidate_with_the_weights(monkeypatch):
    cfg = RunConfig(dataset="synthetic:nodes=200,avg_degree=8,features=6,seed=3", teacher="gcn", teacher_layers=2,
                    teacher_hidden=16, epochs=4, patience=4, min_epochs=0, student="mlp", kd="response",
                    alpha="0.8", temperature="1")
    prep = pipeline.prepare(cfg, progress=False)
    seen: list[torch.Tensor | None] = []
    real = objectives.soft_target_kl

    def spy(s, t, temperature, weight=None):
        seen.append(weight)
        return real(s, t, temperature, weight)

    monkeypatch.setattr(objectives, "soft_target_kl", spy)
    assert not train_candidates(cfg, prep, cfg.kd_kinds, progress=False).balanced
    assert seen and all(w is None for w in seen)  # off, the default
    seen.clear()
    trained = train_candidates(replace(cfg, kd_balance="on"), prep, cfg.kd_kinds, progress=False)
    assert trained.balanced and trained.record()["balanced"]
    expected = class_balanced_weights(prep.signals.logits)
    assert seen and all(w is not None and torch.equal(w, expected) for w in seen)


def test_unknown_value_is_refused():
    with pytest.raises(ConfigError, match="--kd-balance 'maybe' is not one of"):
        RunConfig(kd_balance="maybe")
