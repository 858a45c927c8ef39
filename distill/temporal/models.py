"""Temporal models, all scoring a batch of blocks (distill.temporal.batch.Batch) at their targets.

- `baseline`: logistic regression on the target's own rating statistics as of t (no graph).
- `teacher`: TGAT-style attention over the temporal neighbourhood (both directions), PyG
  TransformerConv with edge features [time encoding of log1p(edge age in days), rating / 10,
  relation one-hot]; residual connections and LayerNorm. The experiment's teacher averages the
  probabilities of several of these (ExperimentConfig.teacher_members).
- `student`: a small relational mean-aggregation network over the block's dense adjacencies
  (bundle.temporal.RELATIONS), exported to ONNX with inputs x [n, F] and adj [R, n, n].
Each model standardises its input with training-set statistics held as buffers, so the exported
student takes the kernel's raw features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import TransformerConv
from torch_geometric.nn.models.tgn import TimeEncoder

from bundle.temporal import FEATURES, RELATIONS
from distill.errors import ConfigError
from distill.temporal.batch import Batch

NUM_CLASSES = 2


class Standardise(nn.Module):
    """(x - mean) / std with buffers set by `fit_to` from training features x [n, F]."""

    mean: Tensor
    std: Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit_to(self, x: Tensor) -> None:
        self.mean.copy_(x.mean(dim=0))
        self.std.copy_(x.std(dim=0).clamp_min(1e-3))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class Baseline(nn.Module):
    """Logistic regression on the target's own features: [B, F] -> logits [B, 2]."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.norm = Standardise(in_dim)
        self.linear = nn.Linear(in_dim, NUM_CLASSES)

    def score(self, batch: Batch) -> Tensor:
        return self.linear(self.norm(batch.x[batch.target]))


class TemporalTeacher(nn.Module):
    """Attention over temporal neighbours; `score(batch)` -> logits [B, 2] at the targets."""

    def __init__(self, in_dim: int, hidden: int = 64, heads: int = 4, layers: int = 3, time_dim: int = 16,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.norm = Standardise(in_dim)
        self.time = TimeEncoder(time_dim)
        edge_dim = time_dim + 1 + len(RELATIONS)
        self.inp = nn.Linear(in_dim, hidden)
        self.convs = nn.ModuleList(
            TransformerConv(hidden, hidden // heads, heads=heads, edge_dim=edge_dim, dropout=dropout)
            for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.out = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, NUM_CLASSES))
        self.dropout = dropout

    def score(self, batch: Batch) -> Tensor:
        edge_attr = torch.cat([
            self.time(torch.log1p(batch.edge_age_days.clamp_min(0))),
            batch.edge_rating.unsqueeze(1) / 10.0,
            F.one_hot(batch.edge_relation, len(RELATIONS)).float(),
        ], dim=1)
        h0 = F.relu(self.inp(self.norm(batch.x)))
        h = h0
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = norm(h + F.dropout(F.relu(conv(h, batch.edge_index, edge_attr)), self.dropout, self.training))
        return self.out(torch.cat([h0, h], dim=1)[batch.target])


class TemporalStudent(nn.Module):
    """Per layer: h <- LayerNorm(h + relu(W_self h + W_rel [A_1 h, ..., A_R h])).

    `forward(x [n, F], adj)` -> logits [n, 2], adj either dense [R, n, n] (export, serving) or a
    sequence of R sparse [n, n] (training on disjoint-union batches); both give the same numbers."""

    def __init__(self, in_dim: int, hidden: int = 32, layers: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm = Standardise(in_dim)
        self.inp = nn.Linear(in_dim, hidden)
        self.self_lins = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
        self.rel_lins = nn.ModuleList(nn.Linear(len(RELATIONS) * hidden, hidden, bias=False) for _ in range(layers))
        self.lns = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.out = nn.Linear(hidden, NUM_CLASSES)
        self.dropout = dropout

    def forward(self, x: Tensor, adj: Tensor | Sequence[Tensor]) -> Tensor:
        h = F.relu(self.inp(self.norm(x)))
        for self_lin, rel_lin, ln in zip(self.self_lins, self.rel_lins, self.lns, strict=True):
            agg = _aggregate(adj, h)
            h = ln(h + F.dropout(F.relu(self_lin(h) + rel_lin(agg)), self.dropout, self.training))
        return self.out(h)

    def score(self, batch: Batch) -> Tensor:
        return self(batch.x, batch.adj)[batch.target]


def _aggregate(adj: Tensor | Sequence[Tensor], h: Tensor) -> Tensor:
    """[A_1 h | ... | A_R h] -> [n, R * hidden]."""
    if isinstance(adj, Tensor):
        stacked = torch.matmul(adj, h)  # [R, n, hidden]
        return stacked.permute(1, 0, 2).reshape(h.shape[0], -1)
    return torch.cat([torch.sparse.mm(a, h) for a in adj], dim=1)


MODELS = ("baseline", "teacher", "student")


def make_model(name: str, seed: int) -> nn.Module:
    """A fresh model by name (MODELS), initialised from `seed`."""
    if name not in MODELS:
        raise ConfigError(f"unknown temporal model {name!r}; choose one of {', '.join(MODELS)}")
    torch.manual_seed(seed)
    dim = len(FEATURES)
    if name == "baseline":
        return Baseline(dim)
    return TemporalTeacher(dim) if name == "teacher" else TemporalStudent(dim)
