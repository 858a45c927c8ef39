"""One training loop for every temporal model (baseline, teacher, scratch and distilled student).

Not distill.train.fit: that loop trains on one full graph (x, edge_index, edge_weight) with node masks,
while a temporal example is its own block as of its own time, with edge features the teacher needs;
so examples are collated into disjoint-union mini-batches here. Same rules otherwise: Adam, early
stopping on validation AUROC (mean over the evaluated k), best validation state kept.

Loss: cross-entropy on examples with a label; with soft targets (distillation), plus `kd_weight` *
T^2 * KL(teacher || student at temperature T) on every example that has one (labelled or not).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from bundle.temporal import TemporalBlock
from distill.metrics import average_precision, binary_auroc
from distill.temporal.batch import collate


@dataclass(frozen=True)
class LoopConfig:
    epochs: int = 60
    patience: int = 12
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    kd_weight: float = 1.0
    temperature: float = 1.0


@dataclass(frozen=True)
class TrainSet:
    """blocks [m]; label int64 [m] (-1 unknown); soft float32 [m, 2] teacher probabilities or None."""

    blocks: Sequence[TemporalBlock]
    label: np.ndarray
    soft: np.ndarray | None = None


@dataclass(frozen=True)
class EvalSet:
    """blocks [m] with label int64 [m] (all known) and the k of each example, int64 [m]."""

    blocks: Sequence[TemporalBlock]
    label: np.ndarray
    k: np.ndarray


@dataclass(frozen=True)
class Scores:
    auroc: float
    pr_auc: float


@dataclass(frozen=True)
class LoopResult:
    best_epoch: int
    best_val: float


def per_k_scores(prob: np.ndarray, label: np.ndarray, k: np.ndarray) -> dict[int, Scores]:
    """AUROC and PR-AUC of positive-class probabilities prob [m] at each k present."""
    return {int(kk): Scores(binary_auroc(prob[k == kk], label[k == kk] == 1),
                            average_precision(prob[k == kk], label[k == kk] == 1)) for kk in np.unique(k)}


def mean_auroc(prob: np.ndarray, data: EvalSet) -> float:
    return float(np.mean([s.auroc for s in per_k_scores(prob, data.label, data.k).values()]))


def train(model: nn.Module, data: TrainSet, val: EvalSet, cfg: LoopConfig, seed: int, desc: str,
          progress: bool = True) -> LoopResult:
    """Train `model` (it has `.norm` and `.score(batch)`) in place; keep its best validation state."""
    model.norm.fit_to(torch.from_numpy(np.concatenate([b.x for b in data.blocks])))  # type: ignore[operator]
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best, best_epoch, best_state = -np.inf, 0, copy.deepcopy(model.state_dict())
    bar = tqdm(range(cfg.epochs), desc=desc, disable=not progress, leave=False, mininterval=1.0)
    for epoch in bar:
        model.train()
        order = rng.permutation(len(data.blocks))
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            loss = _loss(model.score(collate([data.blocks[i] for i in idx])), data, idx, cfg)  # type: ignore[operator]
            opt.zero_grad()
            loss.backward()
            opt.step()
        score = mean_auroc(predict(model, val.blocks), val)
        if score > best:
            best, best_epoch, best_state = score, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= cfg.patience:
            break
        bar.set_postfix(val=f"{best:.3f}", refresh=False)
    model.load_state_dict(best_state)
    return LoopResult(best_epoch, float(best))


def _loss(logits: Tensor, data: TrainSet, idx: np.ndarray, cfg: LoopConfig) -> Tensor:
    label = torch.from_numpy(data.label[idx])
    known = label >= 0
    loss = F.cross_entropy(logits[known], label[known]) if bool(known.any()) else logits.sum() * 0.0
    if data.soft is not None:
        soft = torch.from_numpy(data.soft[idx]).float()
        log_student = F.log_softmax(logits / cfg.temperature, dim=1)
        teacher = F.softmax(torch.log(soft.clamp_min(1e-8)) / cfg.temperature, dim=1)
        kl = F.kl_div(log_student, teacher, reduction="batchmean") * cfg.temperature**2
        loss = loss + cfg.kd_weight * kl
    return loss


@torch.no_grad()
def predict(model: nn.Module, blocks: Sequence[TemporalBlock], batch_size: int = 256) -> np.ndarray:
    """Eval-mode positive-class probability per block, float64 [m]."""
    model.eval()
    out = [F.softmax(model.score(collate(blocks[i:i + batch_size])), dim=1)[:, 1]  # type: ignore[operator]
           for i in range(0, len(blocks), batch_size)]
    return torch.cat(out).double().numpy() if out else np.zeros(0)
