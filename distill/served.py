"""The job's view through the service: a staged bundle is opened with serve's own loader, graph
store, block cache and onnxruntime session (serve.runtime.open_service), and every number the
report gives for the served student comes from there. So "what is evaluated is what is served"
holds by construction, not by a second implementation kept in step by tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bundle.manifest import Decision, Parity
from bundle.typed import metapath_neighbours
from distill.errors import DistillError, ParityError
from distill.metrics import evaluate
from serve.errors import BundleError
from serve.runtime import Service, open_service
from serve.scoring import NewNode, decide

TOLERANCE = 1e-4  # max |served logit - torch logit|: float32 dense vs sparse summation order
PARITY_NODES = 64
CHUNK = 64  # node ids per scoring call, as a client batches them
POSITIVE = 1  # binary tasks: class 1 is the positive (fraud) class, as in distill.metrics
DIGITS = 6  # thresholds and rates are stored rounded like every report number (distill.report._clean)


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
    """Score internal node indices [b] by their external ids (int64 or strings, as a client sends
    them), in request-sized chunks."""
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


def max_f1_threshold(score: np.ndarray, positive: np.ndarray) -> float | None:
    """The threshold on `score` [n] (the positive class's probability) that maximises F1 of the
    positive class over `positive` [n] (bool), or None without a positive node. Cuts are tried between
    consecutive distinct scores; the best cut's threshold is the midpoint of the two scores around it
    (the widest margin on both sides), rounded to DIGITS. Ties go to the higher threshold (fewer
    nodes flagged for the same F1)."""
    n_pos = int(positive.sum())
    if n_pos == 0:
        return None
    values = score.astype(np.float64)
    order = np.argsort(-values, kind="stable")
    ranked, hits = values[order], positive[order]
    last = np.r_[ranked[1:] != ranked[:-1], True]  # the last row of each run of equal scores
    tp, flagged = np.cumsum(hits)[last], np.flatnonzero(last) + 1.0
    f1 = 2.0 * tp / (flagged + n_pos)  # 2 TP / (2 TP + FP + FN)
    best = int(np.argmax(f1))
    cuts = ranked[last]
    below = cuts[best + 1] if best + 1 < len(cuts) else 0.0
    return round(float((cuts[best] + below) / 2.0), DIGITS)


def rates_at(probabilities: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, float | None]:
    """Precision, recall and F1 of the positive class under the service's own decision rule
    (serve.scoring.decide) at `threshold`; None where undefined (nothing flagged / no positives)."""
    flagged = decide(probabilities, POSITIVE, threshold) == POSITIVE
    truth = y == POSITIVE
    tp = int((flagged & truth).sum())

    def ratio(num: float, den: float) -> float | None:
        return round(num / den, DIGITS) if den else None

    return {"precision": ratio(tp, int(flagged.sum())), "recall": ratio(tp, int(truth.sum())),
            "f1": ratio(2 * tp, int(flagged.sum()) + int(truth.sum()))}


def choose_decision(scores: ServedScores, y: np.ndarray, val_mask: np.ndarray, test_mask: np.ndarray,
                    class_names: list[str]) -> Decision | None:
    """The binary decision threshold, chosen on the validation nodes' served probabilities only (test
    labels never reach the choice), with its precision / recall / F1 on validation and test. None
    for multi-class tasks (the decision is the argmax) or a validation set without positives."""
    if len(class_names) != 2:
        return None
    val_rows, test_rows = (np.flatnonzero(m[scores.nodes]) for m in (val_mask, test_mask))
    val_p, val_y = scores.probabilities[val_rows], y[scores.nodes[val_rows]]
    threshold = max_f1_threshold(val_p[:, POSITIVE], val_y == POSITIVE)
    if threshold is None:
        return None
    val = rates_at(val_p, val_y, threshold)
    test = rates_at(scores.probabilities[test_rows], y[scores.nodes[test_rows]], threshold)
    return Decision(positive_class=class_names[POSITIVE], threshold=threshold,
                    **{f"{split}_{k}": v for split, rates in (("val", val), ("test", test)) for k, v in rates.items()})


@dataclass(frozen=True)
class ServedCheck:
    """A staged bundle, checked: parity with torch, the served student's metrics and, for a binary
    task, the decision threshold chosen on validation (None otherwise)."""

    parity: Parity
    val: dict[str, Any]
    test: dict[str, Any]
    scores: ServedScores
    decision: Decision | None = None


def check(service: Service, torch_logits: np.ndarray, y: np.ndarray, val_mask: np.ndarray, test_mask: np.ndarray,
          seed: int, tolerance: float | None = TOLERANCE) -> ServedCheck:
    """Score validation, test and parity nodes through `service` (a staged bundle opened with
    `open_served`) and compare with the torch student's full-graph logits [N, C]. Raises ParityError
    past `tolerance` (None: recorded, not enforced, for an int8 copy). Binary tasks also get their
    decision threshold, chosen on the served validation probabilities (`choose_decision`)."""
    csr = service.scorer.store.csr
    nodes = check_nodes(csr.num_nodes, csr.degree, [val_mask, test_mask], seed)
    scores = score(service, nodes)
    worst = float(np.abs(scores.logits - torch_logits[nodes]).max())
    if tolerance is not None and not worst <= tolerance:
        raise ParityError(f"the served student differs from torch by {worst:.3g} (> {tolerance}) "
                          f"over {len(nodes)} nodes")
    parity = Parity(max_abs_diff=worst, nodes_checked=len(nodes), tolerance=tolerance)
    decision = choose_decision(scores, y, val_mask, test_mask, service.bundle.class_names)
    return ServedCheck(parity, metrics_on(scores, y, val_mask), metrics_on(scores, y, test_mask), scores, decision)


TYPED_SCORED = 16  # typed new nodes also scored through the service's request path


def check_typed(service: Service, links: dict[str, tuple[str, np.ndarray, np.ndarray]], edge_index: np.ndarray,
                nodes: np.ndarray, features: np.ndarray) -> int:
    """A typed bundle's links must reproduce the meta-path graph the student was trained on. Each
    target of `nodes` (internal [b]) has its typed links (`links`: via type -> (relation, target [E],
    via [E]) of the source graph, distill.writer.typed_links); expanded by
    bundle.typed.metapath_neighbours over the served incidence, they must give its in-neighbours in
    `edge_index` [2, E'] plus itself (a node shares its via nodes with itself). The first
    TYPED_SCORED, sent as typed new nodes (features [N, F]), must score exactly like the same nodes
    sent with those neighbours. ParityError otherwise -> the number of nodes checked."""
    typed = service.scorer.typed
    if typed is None:
        raise ParityError("the staged bundle has no typed section but the dataset is heterogeneous")
    keys = {name: typed.indexes[name].ids for name in links}
    target_ids = service.scorer.store.node_ids
    for count, node in enumerate(nodes.tolist()):
        mine = {name: np.unique(v[t == node]) for name, (_, t, v) in links.items()}
        got = metapath_neighbours(typed.incidence, mine)
        expected = np.unique(np.concatenate([edge_index[0, edge_index[1] == node],
                                             [node] if any(len(v) for v in mine.values()) else []])).astype(np.int64)
        if not np.array_equal(got, expected):
            raise ParityError(f"typed links of node {target_ids[node]!r} expand to {len(got)} meta-path neighbours; "
                              f"the training graph has {len(expected)}: the bundle's typed incidence is wrong")
        if count < TYPED_SCORED:
            x = features[node].tolist()
            via = {name: keys[name][v].tolist() for name, v in mine.items()}
            a = service.scorer.score([], [NewNode(x, [], via)]).logits
            b = service.scorer.score([], [NewNode(x, target_ids[got].tolist())]).logits
            if not np.array_equal(a, b):
                raise ParityError(f"a typed new node scores unlike its neighbours request at node {target_ids[node]!r}")
    return len(nodes)
