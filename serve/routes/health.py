"""Probes and metrics: /livez (the process answers), /readyz (the bundle is loaded), /metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from serve.dependencies import MetricsDep, RuntimeDep
from serve.schemas import OVERLOADED, ErrorResponse, Status

router = APIRouter()
# Built once: /livez is probed often and its answer never changes.
LIVE = Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/livez", response_model=Status, summary="liveness: the process answers")
async def livez() -> Response:
    return LIVE


@router.get("/readyz", response_model=Status, summary="readiness: 200 once the bundle is verified, loaded and warm",
            responses={503: {"model": Status, "description": "loading, bundle refused (reason), or draining"}})
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    if runtime.draining:  # first: a shutting-down process must leave the load balancer at once
        return JSONResponse({"status": "draining", "reason": "shutting down"}, status_code=503)
    body = Status(status=runtime.status, reason=runtime.reason)
    return JSONResponse(body.model_dump(), status_code=200 if runtime.status == "ready" else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response, responses={
    200: {"description": "Prometheus text exposition 0.0.4", "content": {"text/plain": {"schema": {"type": "string"}}}},
    503: {"model": ErrorResponse, "description": OVERLOADED}})
async def prometheus(metrics: MetricsDep) -> Response:
    content, media_type = metrics.exposition()
    return Response(content, media_type=media_type)
