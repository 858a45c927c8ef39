"""The job's view through the service: a staged bundle is opened with serve's own loader, graph
store, block cache and onnxruntime session (serve.runtime.open_service), and every number the
report gives for the served student comes from there. So "what is evaluated is what is served"
holds by construction, not by a second implementation kept in step by tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bundle.manifest import Parity
from distill.errors import DistillError, ParityError
from distill.metrics import evaluate
from serve.errors import BundleError
from serve.runtime import Service, open_service

TOLERANCE = 1e-4  # max |served logit - torch logit|: float32 dense vs sparse summation order
PARITY_NODES = 64
CHUNK = 64  # node ids per scoring call, as a client batches them


def open_served(root: Path, key: bytes | None = None) -> Service:
    """serve.runtime.open_service (signed under `key`, when given), with the service's refusal
    turned into the job's error (exit 2)."""
    try:
        return open_service(root, key=key)
    except BundleError as exc:
        raise DistillError(f"{root} does not load as the service loads it: {exc.message}") from None


@dataclass(frozen=True)
class ServedScores:
    """Scores of `nodes` (internal ids [b]) through the service's scoring path: logits and
    probabilities float32 [b, C]."""

    nodes: np.ndarray
    logits: np.ndarray
    probabilities: np.ndarray


def score(service: Service, nodes: np.ndarray) -> ServedScores:
    """Score internal node indices [b] by their external ids, in request-sized chunks."""
    ids = service.scorer.store.node_ids[nodes]
    if not len(ids):
        empty = np.zeros((0, service.scorer.model.num_classes), dtype=np.float32)
        return ServedScores(nodes, empty, empty.copy())
    logits, probs = [], []
    for start in range(0, len(ids), CHUNK):
        scores = service.scorer.score(ids[start:start + CHUNK].tolist())
        logits.append(scores.logits)
        probs.append(scores.probabilities)
    return ServedScores(nodes, np.concatenate(logits), np.concatenate(probs))


def metrics_on(scores: ServedScores, y: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Metrics of the served probabilities on the nodes of `mask` [N] (a subset of scores.nodes)."""
    rows = np.flatnonzero(mask[scores.nodes])
    return evaluate(scores.probabilities[rows], y[scores.nodes[rows]])


def check_nodes(num_nodes: int, degree: np.ndarray, masks: list[np.ndarray], seed: int) -> np.ndarray:
    """Nodes the parity check scores: every node of `masks` (validation and test), the busiest nodes
    (largest neighbourhoods) and a random sample -> sorted unique int64."""
    top = np.argsort(-degree, kind="stable")[: PARITY_NODES // 4]
    rand = np.random.default_rng(seed).choice(num_nodes, size=min(num_nodes, PARITY_NODES), replace=False)
    return np.unique(np.concatenate([top, rand, *(np.flatnonzero(m) for m in masks)])).astype(np.int64)


@dataclass(frozen=True)
class ServedCheck:
    """A staged bundle, checked: parity with torch and the served student's metrics."""

    parity: Parity
    val: dict[str, Any]
    test: dict[str, Any]
    scores: ServedScores


def check(service: Service, torch_logits: np.ndarray, y: np.ndarray, val_mask: np.ndarray, test_mask: np.ndarray,
          seed: int, tolerance: float | None = TOLERANCE) -> ServedCheck:
    """Score validation, test and parity nodes through `service` (a staged bundle opened with
    `open_served`) and compare with the torch student's full-graph logits [N, C]. Raises ParityError
    past `tolerance` (None: recorded, not enforced, for an int8 copy)."""
    csr = service.scorer.store.csr
    nodes = check_nodes(csr.num_nodes, csr.degree, [val_mask, test_mask], seed)
    scores = score(service, nodes)
    worst = float(np.abs(scores.logits - torch_logits[nodes]).max())
    if tolerance is not None and not worst <= tolerance:
        raise ParityError(f"the served student differs from torch by {worst:.3g} (> {tolerance}) "
                          f"over {len(nodes)} nodes")
    parity = Parity(max_abs_diff=worst, nodes_checked=len(nodes), tolerance=tolerance)
    return ServedCheck(parity, metrics_on(scores, y, val_mask), metrics_on(scores, y, test_mask), scores)
