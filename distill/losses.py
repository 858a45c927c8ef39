"""Training losses. The loop is shared; only the loss differs between teacher, scratch and distilled."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def supervised(logits: Tensor, y: Tensor, train_mask: Tensor) -> Tensor:
    """Cross-entropy on labelled training nodes. logits [N, C], y [N], train_mask [N] -> scalar."""
    return F.cross_entropy(logits[train_mask], y[train_mask])


def soft_target_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over nodes. Both [N, C] -> scalar.

    The T^2 factor keeps the gradient scale independent of T (Hinton et al., 2015).
    """
    log_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * temperature**2


def response_kd(student_logits: Tensor, teacher_logits: Tensor, y: Tensor, train_mask: Tensor,
                temperature: float, alpha: float) -> Tensor:
    """alpha * KL(softmax(t/T) || softmax(s/T)) * T^2 + (1 - alpha) * CE(s, y).

    The KL term covers every node passed in (unlabelled ones too, as GLNN / CPF do); CE only the
    training nodes. student_logits, teacher_logits [N, C]; y, train_mask [N] -> scalar.
    """
    kd = soft_target_kl(student_logits, teacher_logits, temperature)
    return alpha * kd + (1 - alpha) * supervised(student_logits, y, train_mask)
