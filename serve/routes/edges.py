"""The graph that grows: POST /v1/edges (durable writes, serve/writes.py) and GET /v1/graph.

Checks run in this order, each answered by its own status: writes disabled (404 `writes_disabled`,
no SERVE_EDGE_LOG), the bearer token (401), the body (415 / 422), readiness (503), then the write's
own rules (404 / 409 / 413 / 422)."""

from __future__ import annotations

import hmac
import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials

from serve.body import JsonRoute, read_model
from serve.dependencies import BEARER, MetricsDep, RuntimeDep, ServiceDep, SettingsDep
from serve.dynamic import DynamicStore
from serve.errors import Unauthorized, WritesDisabled
from serve.schemas import OVERLOADED, ErrorResponse
from serve.schemas_edges import EdgesRequest, EdgesResponse, GraphInfo
from serve.temporal_store import TemporalGraph

router = APIRouter(tags=["graph"], route_class=JsonRoute)
RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in (
        (401, "unauthorized: missing or wrong bearer token (SERVE_WRITE_TOKEN, else SERVE_ADMIN_TOKEN)"),
        (404, "writes_disabled (no SERVE_EDGE_LOG: the graph is the bundle's) or unknown_nodes (an edge endpoint "
              "neither in the graph nor declared in `nodes`; listed in error.detail)"),
        (409, "node_exists (a declared id is already in the graph, or repeated) or time_not_monotonic (an edge "
              "before the last logged time while SERVE_EDGES_MONOTONIC is on)"),
        (413, "batch_too_large (nodes + edges over SERVE_MAX_WRITE_ITEMS) or body_too_large"),
        (415, "unsupported_media_type or unsupported_encoding"),
        (422, "empty_batch, invalid_features (wrong width, not finite as float32), weight_out_of_range (outside "
              "SERVE_EDGE_WEIGHT_MIN..MAX; a temporal bundle: its rating range), rating_required / directed_only "
              "(a temporal bundle's edges are directed ratings), malformed_json or invalid_request (schema: NaN, "
              "negative time, ids of the other kind, extra keys)"),
        (503, f"not_ready, edge_log_invalid (a log write or fsync failed: writes are off until a restart) or "
              f"{OVERLOADED}"),
    )
}
BODY_SCHEMA = {"required": True, "content": {"application/json": {"schema": EdgesRequest.model_json_schema()}}}


async def require_writes(settings: SettingsDep) -> None:
    if settings.edge_log is None:
        raise WritesDisabled("graph writes are disabled on this service: set SERVE_EDGE_LOG to a log path to "
                             "enable POST /v1/edges")


async def require_writer(settings: SettingsDep,
                         credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
    """Bearer check: the write token, else the admin token (Settings refuses an edge log with neither)."""
    token = settings.write_token or settings.admin_token
    if token is None:
        raise Unauthorized("no write token is configured")
    if credentials is None:
        raise Unauthorized("graph writes need an `Authorization: Bearer <SERVE_WRITE_TOKEN>` header")
    if not hmac.compare_digest(credentials.credentials.encode(), token.get_secret_value().encode()):
        raise Unauthorized("wrong write token")


async def read_body(request: Request) -> EdgesRequest:
    """Parsed only after the token is checked (as /admin/reload does)."""
    return await read_model(request, EdgesRequest)


@router.post("/v1/edges", response_model=EdgesResponse, responses=RESPONSES, openapi_extra={"requestBody": BODY_SCHEMA},
             summary="add nodes and timestamped edges; answered once the write is durable (fsync)")
async def edges(_enabled: Annotated[None, Depends(require_writes)], _auth: Annotated[None, Depends(require_writer)],
                body: Annotated[EdgesRequest, Depends(read_body)], runtime: RuntimeDep,
                metrics: MetricsDep) -> EdgesResponse:
    service = runtime.require()
    if service.writes is None:  # a service built without a log (a test builder): same as disabled
        raise WritesDisabled("graph writes are disabled on this service")
    done = await service.writes.write(body)
    metrics.writes["requests"].inc()
    metrics.writes["nodes"].inc(done.nodes)
    metrics.writes["edges"].inc(done.edges)
    if done.fsync_seconds:
        metrics.fsync_seconds.observe(done.fsync_seconds)
    return EdgesResponse(sequence=done.seq, accepted_nodes=done.nodes, accepted_edges=done.edges,
                         changed_rows=done.changed_rows, invalidated_blocks=done.invalidated_blocks,
                         log_bytes=done.log_bytes)


@router.get("/v1/graph", response_model=GraphInfo, responses={503: {"model": ErrorResponse}},
            summary="the served graph: bundle nodes, what the edge log added, the log's sequence and size")
async def graph(service: ServiceDep) -> GraphInfo:
    store, writer = service.scorer.store, service.writes
    grown = store if isinstance(store, DynamicStore | TemporalGraph) else None
    latest = None if grown is None or not math.isfinite(grown.max_time) else grown.max_time
    return GraphInfo(
        writes_enabled=writer is not None, bundle_nodes=grown.n_base if grown else store.num_nodes,
        added_nodes=store.num_nodes - grown.n_base if grown else 0, logged_edges=grown.edges_logged if grown else 0,
        sequence=writer.log.seq if writer else 0, log_bytes=writer.log.written if writer else 0,
        fsyncs=writer.log.fsyncs if writer else 0, latest_edge_time=latest)
