"""POST /admin/reload: swap in another bundle without a restart, behind a bearer token.

The route exists only when SERVE_ADMIN_TOKEN is set; otherwise /admin/reload is a 404 exactly like
any unknown path, so an unconfigured service offers nothing to probe.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError

from serve.errors import BundleNotFound, BundleRejected, Unauthorized
from serve.metrics import Metrics
from serve.runtime import Runtime, Service, build
from serve.schemas import ErrorResponse, ReloadRequest, ReloadResponse
from serve.settings import Settings

# Module level: FastAPI resolves the (postponed) annotation below in this module's namespace.
# auto_error=False: a missing header must give our 401 body, not FastAPI's.
BEARER = HTTPBearer(auto_error=False, description="the value of SERVE_ADMIN_TOKEN")
RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in (
        (401, "missing or wrong bearer token (WWW-Authenticate: Bearer)"),
        (409, "a bundle is already being loaded (start-up or another reload)"),
        (422, "bundle_not_found (no such directory), bundle_rejected (failed verification or could not be "
              "built; detail names the reason and the file), or a malformed body"),
        (503, "the service is shutting down"),
    )
}


def authorize(credentials: HTTPAuthorizationCredentials | None, expected: bytes) -> None:
    """Raise Unauthorized unless the request carried `Authorization: Bearer <expected>`."""
    if credentials is None:
        raise Unauthorized("admin endpoints need an `Authorization: Bearer <SERVE_ADMIN_TOKEN>` header")
    # Constant time: the comparison must not reveal how many leading bytes were right.
    if not hmac.compare_digest(credentials.credentials.encode(), expected):
        raise Unauthorized("wrong admin token")


async def read_body(request: Request) -> ReloadRequest:
    """Parse the body only after authorisation (FastAPI would parse a declared body before any
    dependency runs, answering unauthenticated callers with schema errors). Same 422s as elsewhere."""
    try:
        return ReloadRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


def install(app: FastAPI, runtime: Runtime, settings: Settings, metrics: Metrics,
            builder: Callable[[Settings], Service] = build) -> None:
    """Add /admin/reload to `app` when an admin token is configured."""
    if settings.admin_token is None:
        return
    expected = settings.admin_token.get_secret_value().encode()

    body_schema = {"required": True, "content": {"application/json": {"schema": ReloadRequest.model_json_schema()}}}

    @app.post("/admin/reload", response_model=ReloadResponse, responses=RESPONSES, tags=["admin"],
              summary="verify, build and warm another bundle off the event loop, then swap it in atomically",
              openapi_extra={"requestBody": body_schema})
    async def reload(request: Request,
                     credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> ReloadResponse:
        authorize(credentials, expected)
        body = await read_body(request)
        target = settings.model_copy(update={"bundle": Path(body.bundle)})
        try:
            # A worker thread: the event loop keeps answering on the old model while this runs.
            done = await asyncio.to_thread(runtime.reload, target, builder)
        except (BundleNotFound, BundleRejected):
            metrics.reloads["failure"].inc()
            raise
        metrics.reloads["success"].inc()
        return ReloadResponse(status="reloaded", version=done.version, previous_version=done.previous,
                              bundle=body.bundle, seconds=round(done.seconds, 3))
