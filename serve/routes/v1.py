"""The scoring API: GET /v1/model and POST /v1/score."""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter

from serve.body import JsonRoute
from serve.dependencies import MetricsDep, ScoringDep, ServiceDep, SettingsDep
from serve.errors import BatchTooLarge, EmptyBatch
from serve.runtime import Service
from serve.schemas import OVERLOADED, ErrorResponse, ModelInfo, NodeScore, ScoreRequest, ScoreResponse
from serve.scoring import NewNode, Scores

router = APIRouter(route_class=JsonRoute)
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in (
        (404, "unknown_nodes / unknown_neighbors: ids not in the graph (listed in error.detail)"),
        (413, "batch_too_large (over SERVE_MAX_BATCH) or body_too_large (over SERVE_MAX_BODY_BYTES)"),
        (415, "unsupported_media_type (Content-Type missing or not application/json) or unsupported_encoding "
              "(a Content-Encoding such as gzip; send the body uncompressed)"),
        (422, "empty_batch, invalid_features (wrong length, not finite as float32), malformed_json (not "
              "UTF-8 JSON), invalid_request (schema violation: wrong types, NaN/Infinity literals, extra keys)"),
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
    new = [NewNode(n.features, n.neighbors) for n in request.new_nodes]
    scores = service.scorer.score(request.node_ids, new)
    response = ScoreResponse(model_version=service.bundle.version, results=results(service, request, scores))
    metrics.scored["existing"].inc(len(request.node_ids))
    metrics.scored["new"].inc(len(new))
    metrics.observe_score(scores.cache_s, scores.inference_s, time.perf_counter() - started)
    metrics.observe_predictions(service.bundle.class_names, scores.labels, len(request.node_ids))
    return response


def results(service: Service, request: ScoreRequest, scores: Scores) -> list[NodeScore]:
    names = service.bundle.class_names
    version = service.bundle.version
    probs = scores.probabilities.tolist()
    labels = scores.labels.tolist()
    keys: list[tuple[Literal["existing", "new"], int | None, int | None]]
    keys = [("existing", i, None) for i in request.node_ids]
    keys += [("new", None, j) for j in range(len(request.new_nodes))]
    return [NodeScore(kind=kind, node_id=node_id, new_node_index=index, label=names[label], label_index=label,
                      probabilities=dict(zip(names, p, strict=True)), model_version=version)
            for (kind, node_id, index), p, label in zip(keys, probs, labels, strict=True)]


def model_info(service: Service) -> ModelInfo:
    """The manifest as written (JSON, absent fields left out), summarised."""
    m: dict[str, Any] = service.bundle.manifest.model_dump(mode="json", exclude_none=True)
    return ModelInfo(
        version=service.bundle.version, created_at=m.get("created_at"),
        dataset={k: m["dataset"].get(k) for k in DATASET_KEYS},
        student=m["model"], policy=m["policy"], metrics=m.get("metrics", {}),
        parity=m.get("parity"), cache=service.scorer.cache.stats(),
        lineage={k: m[k] for k in LINEAGE_KEYS if k in m},
    )
