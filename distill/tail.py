"""Tail classes: a validation-chosen logit adjustment shipped inside the student.

Distillation copies the teacher's confidence, and a teacher trained on few rare-class labels is
least confident exactly there, so a distilled student tends to give rare-class recall away. The
mitigation is post-hoc logit adjustment (Menon et al., ICLR 2021): add `-tau * log(prior_c)` to
class c's logit, which lowers the decision threshold of rare classes. The prior comes from the
training and validation labels together: a benchmark's training split may be class-balanced by
construction (Planetoid: 20 per class), and would then say nothing about which class is rare.

`tau` is chosen on the validation nodes through the one "keep the best on validation" helper,
never at the price of validation AUROC (ranking quality is what distillation gained). With the
scratch student's validation recall of the rarest class as a floor (what `distill run` passes):
the smallest `tau` whose rarest-class recall reaches the floor, so the shipped student keeps the
tail at least as well as a student trained alone and moves no further than needed; if none
reaches it, the `tau` with the highest rarest-class recall. Without a floor: the highest mean of
balanced accuracy and the selection metric. A binary task's AUROC and PR-AUC are unchanged by
construction (a constant logit shift keeps the ranking); only its decision threshold moves. The
offsets become a buffer of the model, so the ONNX file, and so the service, apply them: what is
evaluated is what is served.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Data

from distill.artefacts import TailAdjustment, Trained
from distill.choose import best_on_validation
from distill.metrics import evaluate
from distill.train import selection_metric, test_metrics

TAUS = (0.0, 0.25, 0.5, 0.75, 1.0)


def class_prior(y: Tensor, mask: Tensor, num_classes: int) -> Tensor:
    """Label frequencies [C] over `mask`, with one pseudo-count per class so no class has prior 0."""
    counts = torch.bincount(y[mask].cpu(), minlength=num_classes).double() + 1.0
    return (counts / counts.sum()).float()


def labelled_prior(data: Data, num_classes: int) -> Tensor:
    """The prior of the labelled nodes, training and validation together -> [C]."""
    return class_prior(data.y, (data.train_mask | data.val_mask).cpu(), num_classes)


@dataclass(frozen=True)
class _Scored:
    adjustment: TailAdjustment
    auroc: float


def _validation(logits: Tensor, data: Data, metric: str, rare: int) -> tuple[float, float, float, float]:
    """(balanced accuracy, selection metric, AUROC, recall of class `rare`) on the validation nodes."""
    mask = data.val_mask.cpu()
    probs = F.softmax(logits[mask], dim=-1).numpy()
    m = evaluate(probs, data.y.cpu()[mask].numpy())
    recall: list[float] = m["per_class_recall"]  # type: ignore[assignment]
    balanced = float(np.mean([r for r in recall if not np.isnan(r)]))
    return balanced, float(m[metric]), float(m["auroc"]), float(recall[rare])  # type: ignore[arg-type]


def rare_recall(logits: Tensor, data: Data) -> float:
    """Validation recall of the rarest labelled class under logits [N, C] (the floor `choose` takes)."""
    rare = int(torch.argmin(labelled_prior(data, logits.size(1))))
    return _validation(logits, data, selection_metric(logits.size(1)), rare)[3]


def choose(logits: Tensor, data: Data, floor: float | None = None, taus: tuple[float, ...] = TAUS
           ) -> TailAdjustment:
    """logits [N, C] (CPU, before any adjustment) -> the adjustment kept on validation (module doc)."""
    num_classes = logits.size(1)
    metric = selection_metric(num_classes)
    log_prior = labelled_prior(data, num_classes).log()
    rare = int(torch.argmin(log_prior))
    base = _validation(logits, data, metric, rare)

    def candidate(tau: float) -> _Scored:
        offsets = -tau * log_prior
        offsets = offsets - offsets.mean()  # only differences between classes matter; keep logits centred
        balanced, value, auroc, recall = _validation(logits + offsets, data, metric, rare)
        return _Scored(TailAdjustment(tau, offsets.tolist(), base[0], balanced, base[1], value, rare, base[3],
                                      recall, floor), auroc)

    def key(scored: _Scored) -> tuple[float, ...]:
        adj = scored.adjustment
        if scored.auroc < base[2] - 1e-9:  # nan (a class absent from validation) passes
            return (-np.inf,)
        if floor is None:
            return ((adj.val_balanced_after + adj.val_metric_after) / 2, -adj.tau)
        reaches = adj.val_rare_after >= floor
        return (float(reaches), -adj.tau if reaches else adj.val_rare_after, -adj.tau)

    best = best_on_validation(((f"tau {t:g}", lambda t=t: candidate(t)) for t in taus), key=key)
    return best.item.adjustment


def adjust(trained: Trained, data: Data, floor: float | None = None) -> Trained:
    """The same student with the validation-chosen offsets inside it (`floor`: the scratch
    student's `rare_recall`, or None): its logits [N, C] and test metrics recomputed, the choice
    recorded. The model is changed in place."""
    adj = choose(trained.logits, data, floor)
    offsets = torch.tensor(adj.offsets, dtype=trained.logits.dtype)
    trained.model.class_offset = offsets if adj.tau > 0 else torch.zeros(0)
    logits = trained.logits + offsets if adj.tau > 0 else trained.logits
    return replace(trained, logits=logits, test=test_metrics(logits, data), tail=adj)
