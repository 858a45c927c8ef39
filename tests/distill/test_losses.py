import pytest
import torch

from distill import losses

S = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
T = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
Y = torch.tensor([0, 2])
TRAIN = torch.tensor([True, False])

# Golden numbers, computed once by hand-written numpy (softmax, KL, CE) independent of torch:
# KL(softmax(t/2) || softmax(s/2)) averaged over both nodes * 2^2, and CE of node 0 only.
GOLDEN_KL_T2 = 0.5920946257268127
GOLDEN_CE = 0.40760596444438046


def test_soft_target_kl_golden():
    assert losses.soft_target_kl(S, T, 2.0).item() == pytest.approx(GOLDEN_KL_T2, abs=1e-6)


def test_supervised_uses_train_nodes_only():
    assert losses.supervised(S, Y, TRAIN).item() == pytest.approx(GOLDEN_CE, abs=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 1.0])
def test_response_kd_is_the_weighted_sum(alpha):
    value = losses.response_kd(S, T, Y, TRAIN, temperature=2.0, alpha=alpha).item()
    assert value == pytest.approx(alpha * GOLDEN_KL_T2 + (1 - alpha) * GOLDEN_CE, abs=1e-6)


def test_kl_is_zero_for_identical_logits_and_grad_reaches_student():
    s = S.clone().requires_grad_(True)
    assert losses.soft_target_kl(S, S, 4.0).item() == pytest.approx(0.0, abs=1e-7)
    losses.response_kd(s, T, Y, TRAIN, 4.0, 0.5).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert s.grad[1].abs().sum() > 0  # unlabelled node 1 is taught by the teacher alone
