"""Distillation objectives: response (soft logits), feature (intermediate embeddings), structure
(neighbourhood similarity, LSP) and the teacher's per-edge importance.

The loop in `train.py` never changes; `Objective` turns a student's `NodeOutputs` into one loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.utils import softmax

from distill import losses
from distill.config import KD_KINDS as KINDS
from distill.models import NodeOutputs

# bench/accuracy.py variant name -> the objectives it switches on.
VARIANTS: dict[str, tuple[str, ...]] = {
    "scratch": (),
    "response": ("response",),
    "response+feature": ("response", "feature"),
    "response+structure": ("response", "structure"),
    "all": KINDS,
}
LSP_TAU = 0.1  # temperature of the cosine-similarity softmax over a node's neighbours


@dataclass
class TeacherSignals:
    """What a trained teacher hands the student: logits [N, C], hidden [N, H_t] per layer (detached)."""

    logits: Tensor
    hidden: list[Tensor]


def feature_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """MSE between L2-normalised embeddings, i.e. mean over nodes of 2 - 2 cos(s_i, t_i).

    Normalising makes the target scale-free: the teacher's residual stream grows with depth, and a
    raw MSE would spend the projection's capacity on matching norms rather than directions.
    student [N, H], teacher [N, H] -> scalar.
    """
    return (F.normalize(student, dim=-1) - F.normalize(teacher, dim=-1)).pow(2).sum(-1).mean()


def neighbour_distribution(h: Tensor, edge_index: Tensor, num_nodes: int) -> Tensor:
    """For each edge j -> i: softmax over i's in-neighbours of cos(h_i, h_j) / tau. [N, H] -> [E]."""
    z = F.normalize(h, dim=-1)
    src, dst = edge_index
    return softmax((z[src] * z[dst]).sum(-1) / LSP_TAU, dst, num_nodes=num_nodes)


def lsp_loss(student: Tensor, teacher: Tensor, edge_index: Tensor) -> Tensor:
    """Local structure preservation (Yang et al., CVPR 2020): KL(teacher || student) between each
    node's similarity distributions over its neighbours, averaged over nodes with neighbours.
    student [N, Hs], teacher [N, Ht] (widths may differ), edge_index [2, E] without self-loops."""
    n = student.size(0)
    p_t = neighbour_distribution(teacher, edge_index, n)
    p_s = neighbour_distribution(student, edge_index, n)
    per_edge = p_t * (torch.log(p_t.clamp_min(1e-12)) - torch.log(p_s.clamp_min(1e-12)))
    per_node = torch.zeros(n, device=student.device).index_add_(0, edge_index[1], per_edge)
    has_neighbours = torch.bincount(edge_index[1], minlength=n) > 0
    return per_node[has_neighbours].mean()


class Objective(nn.Module):
    """The student's loss for a set of distillation kinds. Holds the learned projections that
    bridge student and teacher widths (trained with the student, not exported)."""

    def __init__(self, kinds: tuple[str, ...], pairs: list[tuple[int, int]], student_widths: list[int],
                 teacher_widths: list[int], alpha: float, temperature: float, beta: float, gamma: float) -> None:
        super().__init__()
        self.kinds, self.pairs = kinds, pairs
        self.alpha, self.temperature, self.beta, self.gamma = alpha, temperature, beta, gamma
        self.proj = nn.ModuleList(
            nn.Linear(student_widths[s - 1], teacher_widths[t - 1]) for t, s in pairs
        ) if "feature" in kinds else nn.ModuleList()
        self.last_terms: dict[str, float] = {}

    def forward(self, out: NodeOutputs, y: Tensor, train_mask: Tensor, teacher: TeacherSignals | None,
                edge_index: Tensor) -> Tensor:
        """Total loss; `edge_index` [2, E] = the student's graph without self-loops (for LSP)."""
        terms: dict[str, Tensor] = {}
        if "response" in self.kinds and teacher is not None:
            terms["response"] = losses.response_kd(out.logits, teacher.logits, y, train_mask,
                                                   self.temperature, self.alpha)
        else:
            terms["ce"] = losses.supervised(out.logits, y, train_mask)
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


def importance_on_edges(edge_index: Tensor, scored_index: Tensor, score: Tensor, num_nodes: int) -> Tensor:
    """Look up a per-edge score given on `scored_index` [2, E'] for every edge of `edge_index` [2, E];
    edges the teacher never saw score 0 (the policy's hash then decides among them). -> [E]."""
    keys = (scored_index[0] * num_nodes + scored_index[1]).cpu().numpy()
    order = np.argsort(keys)
    wanted = (edge_index[0] * num_nodes + edge_index[1]).cpu().numpy()
    pos = np.clip(np.searchsorted(keys[order], wanted), 0, max(len(keys) - 1, 0))
    found = keys[order][pos] == wanted if len(keys) else np.zeros(len(wanted), dtype=bool)
    values = score.detach().cpu().numpy()[order][pos]
    return torch.from_numpy(np.where(found, values, 0.0).astype(np.float32))
