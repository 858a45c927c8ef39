"""The temporal bundle's served check: the staged bundle is opened with the service's own code
(distill.served.open_served -> serve.runtime.open_service) and every validation / test (user, t)
is scored through serve's Scorer as of t. Parity with the torch student, the per-k metrics and the
decision threshold (chosen on validation) all come from those served scores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bundle.manifest import Decision, Parity
from distill.errors import ParityError
from distill.served import POSITIVE, TOLERANCE, max_f1_threshold, rates_at
from distill.temporal.loop import per_k_scores
from distill.temporal.protocol import Examples
from serve.model import softmax
from serve.runtime import Service


@dataclass(frozen=True)
class TemporalCheck:
    """Served scores of the checked examples: parity, per-k metrics of validation and test
    ({k: {"auroc", "pr_auc"}}), and the decision threshold."""

    parity: Parity
    val: dict[int, dict[str, float]]
    test: dict[int, dict[str, float]]
    decision: Decision | None


def served_logits(service: Service, examples: Examples) -> np.ndarray:
    """Each example's target logits through the service, as of its own t -> float32 [m, 2]."""
    ids = service.scorer.store.node_ids[examples.node]
    rows = [service.scorer.score([key], as_of=float(t)).logits[0] for key, t in zip(ids.tolist(), examples.t.tolist(),
                                                                                   strict=True)]
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, 2), np.float32)


def _per_k(prob: np.ndarray, ex: Examples) -> dict[int, dict[str, float]]:
    return {k: {"auroc": round(s.auroc, 6), "pr_auc": round(s.pr_auc, 6)}
            for k, s in per_k_scores(prob[:, POSITIVE].astype(np.float64), ex.label, ex.k).items()}


def check(service: Service, val: Examples, test: Examples, torch_val: np.ndarray, torch_test: np.ndarray,
          class_names: list[str], tolerance: float = TOLERANCE) -> TemporalCheck:
    """Score `val` and `test` through `service` as of each example's t, compare with the torch
    student's logits [m, 2] of the same examples; raises ParityError past `tolerance`."""
    logits = {name: served_logits(service, ex) for name, ex in (("val", val), ("test", test))}
    worst = float(max(np.abs(logits["val"] - torch_val).max(initial=0.0),
                      np.abs(logits["test"] - torch_test).max(initial=0.0)))
    checked = len(val) + len(test)
    if not worst <= tolerance:
        raise ParityError(f"the served temporal student differs from torch by {worst:.3g} (> {tolerance}) "
                          f"over {checked} (user, t) examples")
    probs = {name: softmax(v) for name, v in logits.items()}  # the service's own rule
    threshold = max_f1_threshold(probs["val"][:, POSITIVE], val.label == POSITIVE)
    decision = None
    if threshold is not None:
        rates = {name: rates_at(probs[name], ex.label, threshold) for name, ex in (("val", val), ("test", test))}
        decision = Decision(positive_class=class_names[POSITIVE], threshold=threshold,
                            **{f"{s}_{k}": v for s, r in rates.items() for k, v in r.items()})
    return TemporalCheck(Parity(max_abs_diff=worst, nodes_checked=checked, tolerance=tolerance),
                         _per_k(probs["val"], val), _per_k(probs["test"], test), decision)


def report_rows(check_: TemporalCheck) -> dict[str, Any]:
    """The served metrics as JSON-ready records (string keys)."""
    return {split: {str(k): v for k, v in per_k.items()} for split, per_k in (("val", check_.val),
                                                                                ("test", check_.test))}
