"""Tail classes: a validation-chosen logit shift for the rarest class, shipped inside the student.

Distillation copies the teacher's confidence, and a teacher trained on few rare-class labels is
least confident exactly there, so a distilled student tends to predict the rare class less often
than a student trained alone and gives rare-class recall away. The mitigation is a post-hoc logit
adjustment (in the spirit of Menon et al., ICLR 2021) aimed at that one class: add `shift` to the
rarest labelled class's logit, which lowers its decision threshold and leaves the order of every
other class untouched. Shifting every class by `-tau * log(prior)` instead costs far more accuracy
for the same rare-class recall (README "Results", "Tail classes"). The rarest class comes from the
training and validation labels together: a benchmark's training split may be class-balanced by
construction (Planetoid: 20 per class), and would then say nothing about which class is rare.

`shift` is chosen through the one "keep the best on validation" helper, from 0 and shifts placed
at quantiles of the margins by which nodes miss the rare class (`candidate_shifts`: the grid
follows the logits' scale, which differs between students, temperatures and graphs). With the scratch student's
`Floor` (what `distill run` passes): the smallest shift at which the distilled student both recalls
the rarest class on validation at least as well as the scratch student, and predicts it at least
as often over all nodes. The second condition is what makes the floor hold beyond validation: it
counts predictions on every node of the graph (labels are not needed), where validation recall
rests on a few dozen rare nodes. No shift may give back more than half of the distillation's
validation gain on the selection metric (none at all when the distilled student is below scratch
there); if none reaches the floor within that, the allowed shift with the highest rare-class recall,
then share. Without a floor: the highest mean of balanced accuracy and the
selection metric. A binary task's AUROC and PR-AUC are unchanged by construction (a constant logit
shift keeps the ranking); only its argmax threshold moves (the bundle's served decision threshold,
distill.served.choose_decision, is chosen afterwards for F1 on validation and does not follow it).
The offsets become a buffer of the model, so the ONNX file, and so the service, apply them: what
is evaluated is what is served.
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

STEPS = 200  # shifts tried besides 0


def candidate_shifts(logits: Tensor, rare: int, steps: int = STEPS) -> tuple[float, ...]:
    """0 and `steps` shifts of class `rare`'s logit, each just past a quantile of the margins by
    which the nodes not predicted `rare` miss it, quantiles (j / steps)^2: dense where a shift turns
    few nodes, and in the units of the logits at hand, whatever their scale. logits [N, C] -> sorted."""
    others = logits.detach().clone()
    others[:, rare] = -torch.inf
    margin = (others.max(dim=1).values - logits[:, rare]).double().numpy()
    missed = margin[margin > 0]
    if not len(missed):
        return (0.0,)
    q = np.quantile(missed, (np.arange(1, steps + 1) / steps) ** 2)
    return (0.0, *sorted({float(v) for v in q * (1 + 1e-6) + 1e-6}))


def class_prior(y: Tensor, mask: Tensor, num_classes: int) -> Tensor:
    """Label frequencies [C] over `mask`, with one pseudo-count per class so no class has prior 0."""
    counts = torch.bincount(y[mask].cpu(), minlength=num_classes).double() + 1.0
    return (counts / counts.sum()).float()


def labelled_prior(data: Data, num_classes: int) -> Tensor:
    """The prior of the labelled nodes, training and validation together -> [C]."""
    return class_prior(data.y, (data.train_mask | data.val_mask).cpu(), num_classes)


def rarest_class(data: Data, num_classes: int) -> int:
    """The rarest labelled class (training and validation labels together)."""
    return int(torch.argmin(labelled_prior(data, num_classes)))


@dataclass(frozen=True)
class Floor:
    """What the scratch student reaches on the rarest class: validation recall, the share of all
    nodes it predicts as that class, and its validation selection metric."""

    recall: float
    rate: float
    metric: float


@dataclass(frozen=True)
class _Validation:
    """One set of logits on validation (balanced accuracy, selection metric, rarest-class recall)
    and over all nodes (the share predicted as the rarest class)."""

    balanced: float
    metric: float
    recall: float
    rate: float


def _validation(logits: Tensor, data: Data, metric: str, rare: int) -> _Validation:
    """Balanced accuracy, selection metric and recall of class `rare` on the validation nodes, and
    the share of all nodes predicted as `rare`, under logits [N, C]."""
    mask = data.val_mask.cpu()
    probs = F.softmax(logits[mask], dim=-1).numpy()
    m = evaluate(probs, data.y.cpu()[mask].numpy())
    recall: list[float] = m["per_class_recall"]  # type: ignore[assignment]
    balanced = float(np.mean([r for r in recall if not np.isnan(r)]))
    rate = float((logits.argmax(dim=-1) == rare).float().mean())
    return _Validation(balanced, float(m[metric]), float(recall[rare]), rate)  # type: ignore[arg-type]


def floor(logits: Tensor, data: Data) -> Floor:
    """The scratch student's logits [N, C] -> the floor `choose` holds the distilled student to."""
    v = _validation(logits, data, selection_metric(logits.size(1)), rarest_class(data, logits.size(1)))
    return Floor(v.recall, v.rate, v.metric)


def choose(logits: Tensor, data: Data, floor: Floor | None = None, shifts: tuple[float, ...] | None = None
           ) -> TailAdjustment:
    """logits [N, C] (CPU, before any adjustment) -> the adjustment kept on validation (module doc);
    `shifts`: those tried (default `candidate_shifts`)."""
    num_classes = logits.size(1)
    metric, rare = selection_metric(num_classes), rarest_class(data, num_classes)
    shifts = candidate_shifts(logits, rare) if shifts is None else shifts
    base = _validation(logits, data, metric, rare)
    # The validation metric may fall by at most half of what distillation gained over scratch.
    allowed = base.metric - max(0.0, base.metric - floor.metric) / 2 if floor is not None else -np.inf

    def candidate(shift: float) -> TailAdjustment:
        offsets = torch.zeros(num_classes)
        offsets[rare] = shift
        offsets = offsets - offsets.mean()  # only differences between classes matter; keep logits centred
        v = _validation(logits + offsets, data, metric, rare)
        return TailAdjustment(shift, offsets.tolist(), base.balanced, v.balanced, base.metric, v.metric, rare,
                              base.recall, v.recall, None if floor is None else floor.recall,
                              base.rate, v.rate, None if floor is None else floor.rate)

    def key(adj: TailAdjustment) -> tuple[float, ...]:
        if floor is None:
            return ((adj.val_balanced_after + adj.val_metric_after) / 2, -adj.shift)
        if adj.val_metric_after < allowed - 1e-9:
            return (-np.inf,)
        # A rare class absent from validation has no recall (nan); the share floor needs no labels.
        recall = -1.0 if np.isnan(adj.val_rare_after) else adj.val_rare_after
        reaches = (np.isnan(floor.recall) or recall >= floor.recall) and adj.rate_after >= floor.rate
        if reaches:
            return (1.0, -adj.shift)
        return (0.0, recall, adj.rate_after, -adj.shift)

    best = best_on_validation(((f"shift {s:.4g}", lambda s=s: candidate(s)) for s in shifts), key=key)
    return best.item


def adjust(trained: Trained, data: Data, floor: Floor | None = None) -> Trained:
    """The same student with the validation-chosen offsets inside it (`floor`: the scratch
    student's, or None): its logits [N, C] and test metrics recomputed, the choice recorded. The
    model is changed in place."""
    adj = choose(trained.logits, data, floor)
    offsets = torch.tensor(adj.offsets, dtype=trained.logits.dtype)
    trained.model.class_offset = offsets if adj.shift > 0 else torch.zeros(0)
    logits = trained.logits + offsets if adj.shift > 0 else trained.logits
    return replace(trained, logits=logits, test=test_metrics(logits, data), tail=adj)
