"""The student's training objectives: hard labels, response (soft logits), feature (intermediate
embeddings) and structure (LSP, from distill/structure.py), combined by `Objective`.

The loop in `train.py` never changes; `Objective` turns a student's `NodeOutputs` into one loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.artefacts import TeacherSignals
from distill.models import NodeOutputs
from distill.structure import lsp_loss


def supervised(logits: Tensor, y: Tensor, train_mask: Tensor) -> Tensor:
    """Cross-entropy on labelled training nodes. logits [N, C], y [N], train_mask [N] -> scalar."""
    return F.cross_entropy(logits[train_mask], y[train_mask])


def supervised_views(out: NodeOutputs, y: Tensor, train_mask: Tensor) -> Tensor:
    """`supervised` averaged over the pass's views (`out.logits` and `out.views`), plus the model's
    own `out.regulariser`: a teacher's training loss. -> scalar."""
    loss = torch.stack([supervised(z, y, train_mask) for z in (out.logits, *out.views)]).mean()
    return loss if out.regulariser is None else loss + out.regulariser


def soft_target_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float,
                   weight: Tensor | None = None) -> Tensor:
    """KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over nodes (weighted by `weight` [N], mean 1,
    when given). Both logits [N, C] -> scalar.

    The T^2 factor keeps the gradient scale independent of T (Hinton et al., 2015).
    """
    log_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    if weight is None:
        return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * temperature**2
    per_node = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(-1)
    return (weight * per_node).mean() * temperature**2


def class_balanced_weights(teacher_logits: Tensor) -> Tensor:
    """Per-node weights [N] of the soft-target KL under --kd-balance on: the inverse share of the
    node's teacher-predicted class, scaled to mean 1, so every predicted class carries the same total
    weight (class-balanced loss, Cui et al. 2019, with the teacher's argmax standing in for labels
    the unlabelled nodes lack). teacher_logits [N, C] -> [N]."""
    predicted = teacher_logits.argmax(dim=-1)
    share = torch.bincount(predicted, minlength=teacher_logits.size(1)).float() / predicted.numel()
    weight = 1.0 / share[predicted]
    return weight / weight.mean()


def response_kd(student_logits: Tensor, teacher_logits: Tensor, y: Tensor, train_mask: Tensor,
                temperature: float, alpha: float, weight: Tensor | None = None) -> Tensor:
    """alpha * KL(softmax(t/T) || softmax(s/T)) * T^2 + (1 - alpha) * CE(s, y).

    The KL term covers every node passed in (unlabelled ones too, as GLNN / CPF do), each weighted
    by `weight` [N] when given (`class_balanced_weights`); CE only the training nodes.
    student_logits, teacher_logits [N, C]; y, train_mask [N] -> scalar.
    """
    kd = soft_target_kl(student_logits, teacher_logits, temperature, weight)
    return alpha * kd + (1 - alpha) * supervised(student_logits, y, train_mask)


def feature_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """MSE between L2-normalised embeddings, i.e. mean over nodes of 2 - 2 cos(s_i, t_i).

    Normalising makes the target scale-free: the teacher's residual stream grows with depth, and a
    raw MSE would spend the projection's capacity on matching norms rather than directions.
    student [N, H], teacher [N, H] -> scalar.
    """
    return (F.normalize(student, dim=-1) - F.normalize(teacher, dim=-1)).pow(2).sum(-1).mean()


class Objective(nn.Module):
    """The student's loss for a set of distillation kinds. Holds the learned projections that
    bridge student and teacher widths (trained with the student, not exported)."""

    def __init__(self, kinds: tuple[str, ...], pairs: list[tuple[int, int]], student_widths: list[int],
                 teacher_widths: list[int], alpha: float, temperature: float, beta: float, gamma: float,
                 kd_weight: Tensor | None = None) -> None:
        super().__init__()
        self.kinds, self.pairs, self.kd_weight = kinds, pairs, kd_weight
        self.alpha, self.temperature, self.beta, self.gamma = alpha, temperature, beta, gamma
        self.proj = nn.ModuleList(
            nn.Linear(student_widths[s - 1], teacher_widths[t - 1]) for t, s in pairs
        ) if "feature" in kinds else nn.ModuleList()
        self.last_terms: dict[str, float] = {}

    def forward(self, out: NodeOutputs, y: Tensor, train_mask: Tensor, teacher: TeacherSignals | None,
                edge_index: Tensor) -> Tensor:
        """Total loss; `edge_index` [2, E] = the student's kept edges without self-loops (for LSP)."""
        terms: dict[str, Tensor] = {}
        if "response" in self.kinds and teacher is not None:
            terms["response"] = response_kd(out.logits, teacher.logits, y, train_mask, self.temperature, self.alpha,
                                            self.kd_weight)
        else:
            terms["ce"] = supervised(out.logits, y, train_mask)
        if "feature" in self.kinds and teacher is not None:
            terms["feature"] = self.beta * torch.stack([
                feature_loss(proj(out.hidden[s - 1]), teacher.hidden[t - 1])
                for proj, (t, s) in zip(self.proj, self.pairs, strict=True)
            ]).mean()
        if "structure" in self.kinds and teacher is not None:
            terms["structure"] = self.gamma * torch.stack([
                lsp_loss(out.hidden[s - 1], teacher.hidden[t - 1], edge_index) for t, s in self.pairs
            ]).mean()
        self.last_terms = {k: float(v.detach()) for k, v in terms.items()}
        return torch.stack(list(terms.values())).sum()
