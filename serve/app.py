"""The FastAPI app factory. Nothing heavy happens at import or in `create_app`: the bundle is
loaded by the lifespan in a background thread (serve/runtime.py). The routes live in serve/routes/,
by role; what they need is on `app.state`, read through serve/dependencies.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve import errors, observability
from serve.errors import BodyTooLarge
from serve.metrics import Metrics, MetricsMiddleware
from serve.routes import admin, docs, edges, health, v1, v2
from serve.runtime import Runtime, Service, build
from serve.schemas import ErrorResponse
from serve.settings import Settings

# Documented on every operation: a bug anywhere is answered with the one error body (serve/errors.py).
BUG: dict[int | str, dict[str, Any]] = {
    500: {"model": ErrorResponse, "description": "internal_error: a bug, logged with its traceback; never expected"}}


class BodyLimitMiddleware:
    """Reject bodies over `max_bytes` with 413 before parsing: by Content-Length when declared, and
    by the bytes actually received (chunked or lying clients). The buffered body is replayed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = bool(message.get("more_body", False))
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        exc = BodyTooLarge(f"request body exceeds {self.max_bytes} bytes", {"max_bytes": self.max_bytes})
        await errors.response_for(exc, scope["path"])(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def create_app(settings: Settings, builder: Callable[[Settings], Service] = build) -> FastAPI:
    """The service for `settings`. `builder` builds the loaded service (tests inject a gated one)."""
    runtime = Runtime()
    metrics = Metrics()
    metrics.watch_cache(lambda: runtime.service.scorer.cache.stats() if runtime.service else {})
    metrics.watch_model(lambda: runtime.service.bundle.version if runtime.service else None)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.start(settings, builder)
        yield
        if runtime.service is not None and runtime.service.writes is not None:
            runtime.service.writes.log.close()  # releases the log's lock (an in-process restart may reopen it)

    app = FastAPI(title="graph-distill scoring service", version="1", lifespan=lifespan, responses=BUG,
                  description="Scores graph nodes with a distilled ONNX student on cached k-hop neighbourhoods.",
                  docs_url=None, redoc_url=None)  # /docs from local assets (routes/docs.py); ReDoc needs a CDN
    # What serve/dependencies.py hands to the routes.
    app.state.runtime, app.state.settings, app.state.metrics, app.state.builder = runtime, settings, metrics, builder
    errors.install(app)
    routers = [health.router, v1.router, v2.router, edges.router]
    if settings.admin_token is not None:  # without a token the route does not exist at all (404)
        routers.append(admin.router)
    for router in routers:
        app.include_router(router)
    docs.install(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    # From the routers themselves: FastAPI lists an included router in app.routes as one entry without a path.
    paths = frozenset(str(getattr(r, "path", "")) for router in (app.router, *routers) for r in router.routes) - {""}
    app.add_middleware(MetricsMiddleware, metrics=metrics, paths=paths)
    observability.install(app, lambda: runtime.service.bundle.version if runtime.service else None, settings.access_log)
    return app
