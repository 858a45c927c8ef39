"""The scoring API: GET /v1/model and POST /v1/score."""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError

from bundle import ids
from serve.body import JsonRoute
from serve.dependencies import MetricsDep, ScoringDep, ServiceDep, SettingsDep
from serve.errors import MAX_DETAIL, BatchTooLarge, EmptyBatch
from serve.runtime import Service
from serve.schemas import (
    OVERLOADED,
    ClassScore,
    ErrorResponse,
    ModelInfo,
    NodeScore,
    ScoreRequest,
    ScoreResponse,
)
from serve.scoring import NewNode, Scores, decide, top_classes
from serve.typed import check_request

router = APIRouter(route_class=JsonRoute)
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in (
        (404, "unknown_nodes / unknown_neighbors: ids not in the graph (listed in error.detail; for `links`, "
              "with the node type)"),
        (413, "batch_too_large (over SERVE_MAX_BATCH) or body_too_large (over SERVE_MAX_BODY_BYTES)"),
        (415, "unsupported_media_type (Content-Type missing or not application/json) or unsupported_encoding "
              "(a Content-Encoding such as gzip; send the body uncompressed)"),
        (422, "empty_batch, invalid_features (wrong length, not finite as float32), malformed_json (not "
              "UTF-8 JSON), invalid_request (schema violation: wrong types, NaN/Infinity literals, extra keys; "
              "ids of the other kind than the bundle's: strings for an int64 bundle or integers for a string one; "
              "a threshold outside [0, 1] or on a multi-class model; top_k outside 1..classes), "
              "new_nodes_unsupported (new_nodes sent to a temporal bundle); for `links`: invalid_request on an "
              "unknown node type, `links` with `neighbors`, or `links` to a homogeneous bundle"),
        (503, "not_ready (the bundle is loading or was refused), model_output_invalid (the model produced "
              f"non-finite scores) or {OVERLOADED}"),
    )
}
NOT_READY = {"model": ErrorResponse, "description": f"not_ready (the bundle is loading or was refused) or {OVERLOADED}"}
DATASET_KEYS = ("name", "spec", "num_nodes", "num_features", "num_classes", "class_names")
LINEAGE_KEYS = ("parent", "refresh", "selection")


@router.get("/v1/model", response_model=ModelInfo, responses={503: NOT_READY}, summary="the served bundle")
async def model(service: ServiceDep) -> ModelInfo:
    return model_info(service)


# async on purpose: scoring is ~sub-millisecond CPU work, about what a hop to the thread pool
# costs; with one worker on one core, running it on the event loop is the fastest path.
@router.post("/v1/score", response_model=ScoreResponse, responses=ERRORS, summary="score existing and new nodes")
async def score(scoring: ScoringDep, settings: SettingsDep, metrics: MetricsDep) -> ScoreResponse:
    started = time.perf_counter()
    request, service = scoring.request, scoring.service
    size = len(request.node_ids) + len(request.new_nodes)
    if size == 0:
        raise EmptyBatch("give at least one of node_ids / new_nodes")
    if size > settings.max_batch:
        raise BatchTooLarge(f"{size} nodes in one request; the limit is {settings.max_batch}",
                            {"max_batch": settings.max_batch})
    check_id_kind(request, service.scorer.store.id_type)
    check_request(request, service.scorer.typed)
    positive, threshold = decision_rule(service, request)
    new = [NewNode(n.features, n.neighbors, n.links) for n in request.new_nodes]
    scores = service.scorer.score(request.node_ids, new, request.as_of)
    names = service.bundle.class_names
    response = ScoreResponse(model_version=service.bundle.version, threshold=threshold,
                             positive_class=None if positive is None else names[positive],
                             results=results(service, request, scores, positive, threshold))
    metrics.scored["existing"].inc(len(request.node_ids))
    metrics.scored["new"].inc(len(new))
    metrics.observe_score(scores.cache_s, scores.inference_s, time.perf_counter() - started)
    metrics.observe_predictions(service.bundle.class_names, scores.labels, len(request.node_ids))
    return response


def _invalid(field: str, kind: str, message: str) -> RequestValidationError:
    """A 422 `invalid_request` naming `field`, shaped like the schema's own (its limit depends on the
    bundle, so the schema cannot state it)."""
    return RequestValidationError([{"type": kind, "loc": ("body", field), "msg": message}])


def check_id_kind(request: ScoreRequest, id_type: ids.IdType) -> None:
    """A 422 `invalid_request` (type `node_id_type`) naming each id of the other kind than the bundle's
    (the schema admits both: which one is right depends on the served bundle)."""
    sent: list[tuple[tuple[str | int, ...], ids.NodeKey]] = [(("node_ids", i), key)
                                                             for i, key in enumerate(request.node_ids)]
    sent += [(("new_nodes", j, "neighbors", i), key) for j, node in enumerate(request.new_nodes)
             for i, key in enumerate(node.neighbors)]
    wrong = [(loc, problem) for loc, key in sent if (problem := ids.key_problem(key, id_type)) is not None]
    if wrong:
        raise RequestValidationError([{"type": "node_id_type", "loc": ("body", *loc), "msg": problem}
                                      for loc, problem in wrong[:MAX_DETAIL]])


def decision_rule(service: Service, request: ScoreRequest) -> tuple[int | None, float | None]:
    """(positive class index, threshold) for this request: binary models flag the positive class at
    the request's threshold, else the bundle's (manifest `decision`); a binary bundle without one
    (earlier releases) takes class 1 as positive and the argmax (threshold None) unless the request
    gives one. Multi-class: (None, None), the argmax. Raises a 422 for a threshold on a multi-class
    model and a top_k over the number of classes, before any scoring."""
    names = service.bundle.class_names
    if request.top_k is not None and request.top_k > len(names):
        raise _invalid("top_k", "less_than_equal", f"Input should be less than or equal to {len(names)}, "
                                                   "the model's number of classes")
    if len(names) != 2:
        if request.threshold is not None:
            raise _invalid("threshold", "threshold_not_applicable", f"threshold applies to binary models; this "
                                                                     f"one has {len(names)} classes (argmax)")
        return None, None
    bundled = service.bundle.manifest.decision
    positive = 1 if bundled is None else names.index(bundled.positive_class)
    if request.threshold is not None:
        return positive, request.threshold
    return positive, None if bundled is None else bundled.threshold


def results(service: Service, request: ScoreRequest, scores: Scores, positive: int | None = None,
            threshold: float | None = None) -> list[NodeScore]:
    """One NodeScore per scored row (existing nodes, then new ones): the argmax `label`, the
    thresholded `decision` and positive-class `score` (binary), and the `top_k` classes when asked."""
    names = service.bundle.class_names
    version = service.bundle.version
    probs = scores.probabilities.tolist()
    labels = scores.labels.tolist()
    chosen = labels if positive is None or threshold is None else decide(scores.probabilities, positive,
                                                                         threshold).tolist()
    tops = top_classes(scores.probabilities, request.top_k).tolist() if request.top_k else [None] * len(labels)
    keys: list[tuple[Literal["existing", "new"], ids.NodeKey | None, int | None]]
    keys = [("existing", i, None) for i in request.node_ids]
    keys += [("new", None, j) for j in range(len(request.new_nodes))]
    typed = service.scorer.typed
    ignored = [None] * len(request.node_ids) + [None if typed is None else typed.ignored_in(n.links)
                                                for n in request.new_nodes]
    return [NodeScore(kind=kind, node_id=node_id, new_node_index=index, label=names[label], label_index=label,
                      probabilities=dict(zip(names, p, strict=True)), decision=names[decided],
                      score=None if positive is None else p[positive],
                      top_k=None if top is None else [ClassScore(label=names[c], label_index=c, probability=p[c])
                                                      for c in top],
                      ignored_links=skipped, model_version=version)
            for (kind, node_id, index), p, label, decided, top, skipped
            in zip(keys, probs, labels, chosen, tops, ignored, strict=True)]


def model_info(service: Service) -> ModelInfo:
    """The manifest as written (JSON, absent fields left out), summarised."""
    m: dict[str, Any] = service.bundle.manifest.model_dump(mode="json", exclude_none=True)
    return ModelInfo(
        version=service.bundle.version, created_at=m.get("created_at"),
        dataset={k: m["dataset"].get(k) for k in DATASET_KEYS}, id_type=service.scorer.store.id_type,
        student=m["model"], policy=m["policy"], metrics=m.get("metrics", {}),
        parity=m.get("parity"), decision=m.get("decision"), cache=service.scorer.cache.stats(),
        types=None if service.scorer.typed is None else service.scorer.typed.info(),
        lineage={k: m[k] for k in LINEAGE_KEYS if k in m},
    )
