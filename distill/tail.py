"""Tail classes: a validation-chosen logit adjustment shipped inside the student.

Distillation copies the teacher's confidence, and a teacher trained on few rare-class labels is
least confident exactly there, so a distilled student tends to give rare-class recall away. The
mitigation is post-hoc logit adjustment (Menon et al., ICLR 2021): add `-tau * log(prior_c)` to
class c's logit, which lowers the decision threshold of rare classes. `tau` is chosen on the
validation nodes through the one "keep the best on validation" helper: the highest mean of balanced
accuracy (mean per-class recall) and the run's selection metric (accuracy, or AUROC for binary
tasks), among the values of `tau` that do not lower validation AUROC: the tail is served without
giving back ranking quality. A binary task's AUROC and PR-AUC are unchanged by construction (a
constant logit shift keeps the ranking), so there the choice is balanced accuracy alone; only the
argmax threshold moves. The offsets become a buffer of the model, so the ONNX file, and so the service, apply them:
what is evaluated is what is served.
"""

from __future__ import annotations

from dataclasses import replace

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


def class_prior(y: Tensor, train_mask: Tensor, num_classes: int) -> Tensor:
    """Training-label frequencies [C], with one pseudo-count per class so no class has prior 0."""
    counts = torch.bincount(y[train_mask].cpu(), minlength=num_classes).double() + 1.0
    return (counts / counts.sum()).float()


def _validation(logits: Tensor, data: Data, metric: str) -> tuple[float, float, float]:
    """(balanced accuracy, selection metric, AUROC) on the validation nodes."""
    mask = data.val_mask.cpu()
    probs = F.softmax(logits[mask], dim=-1).numpy()
    m = evaluate(probs, data.y.cpu()[mask].numpy())
    recall = [r for r in m["per_class_recall"] if not np.isnan(r)]  # type: ignore[attr-defined]
    return float(np.mean(recall)), float(m[metric]), float(m["auroc"])  # type: ignore[arg-type]


def choose(logits: Tensor, data: Data, taus: tuple[float, ...] = TAUS) -> TailAdjustment:
    """logits [N, C] (CPU, before any adjustment) -> the adjustment kept on validation."""
    num_classes = logits.size(1)
    metric = selection_metric(num_classes)
    log_prior = class_prior(data.y, data.train_mask, num_classes).log()
    base_balanced, base_metric, base_auroc = _validation(logits, data, metric)

    def candidate(tau: float) -> tuple[TailAdjustment, float]:
        offsets = -tau * log_prior
        offsets = offsets - offsets.mean()  # only differences between classes matter; keep logits centred
        balanced, value, auroc = _validation(logits + offsets, data, metric)
        return TailAdjustment(tau, offsets.tolist(), base_balanced, balanced, base_metric, value), auroc

    def key(scored: tuple[TailAdjustment, float]) -> tuple[float, ...]:
        adj, auroc = scored
        keeps_ranking = not auroc < base_auroc - 1e-9  # nan (a class absent from validation) passes
        score = (adj.val_balanced_after + adj.val_metric_after) / 2
        return (score if keeps_ranking else -np.inf, -adj.tau)

    return best_on_validation(((f"tau {t:g}", lambda t=t: candidate(t)) for t in taus), key=key).item[0]


def adjust(trained: Trained, data: Data) -> Trained:
    """The same student with the validation-chosen offsets inside it: its logits [N, C] and test
    metrics recomputed, the choice recorded. The model is changed in place."""
    adj = choose(trained.logits, data)
    offsets = torch.tensor(adj.offsets, dtype=trained.logits.dtype)
    trained.model.class_offset = offsets if adj.tau > 0 else torch.zeros(0)
    logits = trained.logits + offsets if adj.tau > 0 else trained.logits
    return replace(trained, logits=logits, test=test_metrics(logits, data), tail=adj)
