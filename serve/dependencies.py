"""The routes' dependencies, as `Annotated` types. Everything is read from `request.app.state`,
which `create_app` fills, so the route modules hold no globals and several apps can share a process.

Every dependency is `async def`: FastAPI runs a plain `def` dependency in the thread pool, a hop
that costs about as much as scoring a node.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serve.errors import Unauthorized
from serve.metrics import Metrics
from serve.runtime import Runtime, Service
from serve.schemas import ScoreRequest
from serve.settings import Settings

Builder = Callable[[Settings], Service]

# auto_error=False: a missing header must give our 401 body, not FastAPI's.
BEARER = HTTPBearer(auto_error=False, description="the value of SERVE_ADMIN_TOKEN")


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_builder(request: Request) -> Builder:
    builder: Builder = request.app.state.builder
    return builder


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
BuilderDep = Annotated[Builder, Depends(get_builder)]


async def get_service(runtime: RuntimeDep) -> Service:
    """The loaded service, taken once per request: a reload meanwhile must not mix two models in one
    response. NotReady (503, with the reason) while loading or after a refused bundle."""
    return runtime.require()


ServiceDep = Annotated[Service, Depends(get_service)]


@dataclass(frozen=True)
class Scoring:
    """What POST /v1/score works on: the validated body and the service taken for it."""

    request: ScoreRequest
    service: Service


async def get_scoring(request: ScoreRequest, runtime: RuntimeDep) -> Scoring:
    """ServiceDep for /v1/score. The body is a parameter of this dependency, not of the route: FastAPI
    validates a dependency's own parameters before calling it, but solves sub-dependencies (such as
    ServiceDep) before the route's body. So a body that fails the schema is 422 even while the service
    is not ready, and only a valid one is 503 then."""
    return Scoring(request, runtime.require())


ScoringDep = Annotated[Scoring, Depends(get_scoring)]


def authorize(credentials: HTTPAuthorizationCredentials | None, expected: bytes) -> None:
    """Raise Unauthorized unless the request carried `Authorization: Bearer <expected>`."""
    if credentials is None:
        raise Unauthorized("admin endpoints need an `Authorization: Bearer <SERVE_ADMIN_TOKEN>` header")
    # Constant time: the comparison must not reveal how many leading bytes were right.
    if not hmac.compare_digest(credentials.credentials.encode(), expected):
        raise Unauthorized("wrong admin token")


async def require_admin(settings: SettingsDep,
                        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
    """The bearer check of the admin routes (401 `unauthorized` with `WWW-Authenticate: Bearer`).
    Those routes exist only when SERVE_ADMIN_TOKEN is set; without one nothing can match."""
    if settings.admin_token is None:
        raise Unauthorized("no admin token is configured")
    authorize(credentials, settings.admin_token.get_secret_value().encode())


AdminAuth = Annotated[None, Depends(require_admin)]
