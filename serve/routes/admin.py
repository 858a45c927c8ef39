"""POST /admin/reload: swap in another bundle without a restart, behind a bearer token.

`create_app` includes this router only when SERVE_ADMIN_TOKEN is set; otherwise /admin/reload is a
404 exactly like any unknown path, so an unconfigured service offers nothing to probe.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from serve.body import JsonRoute, read_model
from serve.dependencies import AdminAuth, BuilderDep, MetricsDep, RuntimeDep, SettingsDep
from serve.errors import BundleIncompatible, BundleNotAllowed, BundleNotFound, BundleRejected
from serve.schemas import OVERLOADED, ErrorResponse, ReloadRequest, ReloadResponse

router = APIRouter(tags=["admin"], route_class=JsonRoute)
RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in (
        (401, "unauthorized: missing or wrong bearer token (WWW-Authenticate: Bearer)"),
        (403, "bundle_not_allowed: the directory is outside the reload roots (SERVE_RELOAD_ROOTS)"),
        (409, "reload_in_progress: a bundle is already being loaded (start-up or another reload); or "
              "bundle_incompatible: the bundle changes num_features, class_names, inputs (graph vs graph-free) or "
              "the selection metric of the served model (detail.differences lists each as {field, served, new}); "
              'send {"force": true} to swap it in anyway'),
        (413, "body_too_large: body larger than SERVE_MAX_BODY_BYTES (checked before the token)"),
        (415, "unsupported_media_type (Content-Type missing or not application/json) or unsupported_encoding "
              "(a Content-Encoding such as gzip)"),
        (422, "bundle_not_found (no such directory), bundle_rejected (failed verification or could not be "
              "built; detail names the reason and the file), malformed_json or invalid_request (the body)"),
        (503, f"not_ready (the service is shutting down) or {OVERLOADED}"),
    )
}
# Documented by hand: the body is read by a dependency (below), so FastAPI does not see it.
BODY_SCHEMA = {"required": True, "content": {"application/json": {"schema": ReloadRequest.model_json_schema()}}}


async def read_body(request: Request) -> ReloadRequest:
    """Parse the body only after authorisation (FastAPI would parse a declared body before any
    dependency runs, answering unauthenticated callers with schema errors). Same 415s and 422s as elsewhere."""
    return await read_model(request, ReloadRequest)


@router.post("/admin/reload", response_model=ReloadResponse, responses=RESPONSES,
             summary="verify, build and warm another bundle off the event loop, then swap it in atomically",
             openapi_extra={"requestBody": BODY_SCHEMA})
async def reload(_: AdminAuth, body: Annotated[ReloadRequest, Depends(read_body)], runtime: RuntimeDep,
                 settings: SettingsDep, metrics: MetricsDep, builder: BuilderDep) -> ReloadResponse:
    # `_: AdminAuth` first: FastAPI solves dependencies in signature order, so the token is checked
    # before `read_body` touches the body.
    # The roots are the start-up settings' (by default the start-up bundle's folder), not the target's.
    target = settings.model_copy(update={"bundle": Path(body.bundle), "reload_roots": settings.allowed_roots})
    try:
        # A worker thread: the event loop keeps answering on the old model while this runs.
        done = await asyncio.to_thread(runtime.reload, target, builder, body.force)
    except (BundleNotFound, BundleNotAllowed, BundleRejected, BundleIncompatible):
        metrics.reloads["failure"].inc()
        raise
    metrics.reloads["success"].inc()
    return ReloadResponse(status="reloaded", version=done.version, previous_version=done.previous,
                          bundle=body.bundle, seconds=round(done.seconds, 3))
