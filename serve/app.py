"""The FastAPI app factory. Nothing heavy happens at import or in `create_app`: the bundle is
loaded by the lifespan in a background thread (serve/runtime.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve import admin, errors
from serve.errors import BatchTooLarge, BodyTooLarge, EmptyBatch
from serve.metrics import Metrics, MetricsMiddleware
from serve.runtime import Runtime, Service, build
from serve.schemas import ErrorResponse, ModelInfo, NodeScore, ScoreRequest, ScoreResponse, Status
from serve.scoring import NewNode, Scores
from serve.settings import Settings

log = logging.getLogger("serve")
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in (
        (404, "unknown node ids or neighbour ids (listed in error.detail)"),
        (413, "batch larger than SERVE_MAX_BATCH or body larger than SERVE_MAX_BODY_BYTES"),
        (422, "empty batch, malformed JSON, wrong feature length, NaN/inf features, schema violation"),
        (503, "not ready: the bundle is loading or was refused"),
    )
}


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
        await errors.response_for(exc)(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _results(service: Service, request: ScoreRequest, scores: Scores) -> list[NodeScore]:
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


def _model_info(service: Service) -> ModelInfo:
    m = service.bundle.manifest
    ds = m["dataset"]
    return ModelInfo(
        version=service.bundle.version, created_at=m.get("created_at"),
        dataset={k: ds.get(k) for k in ("name", "spec", "num_nodes", "num_features", "num_classes", "class_names")},
        student=dict(m["model"]), policy=dict(m["policy"]), metrics=dict(m.get("metrics", {})),
        parity=m.get("parity"), cache=service.scorer.cache.stats(),
        lineage={k: m[k] for k in ("parent", "deltas", "selection") if k in m},
    )


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

    app = FastAPI(title="graph-distill scoring service", version="1", lifespan=lifespan,
                  description="Scores graph nodes with a distilled ONNX student on cached k-hop neighbourhoods.")
    app.state.runtime = runtime
    errors.install(app)
    live = Response(b'{"status":"ok"}', media_type="application/json")
    delay_s = settings.debug_score_delay_ms / 1000
    if delay_s:
        log.warning("SERVE_DEBUG_SCORE_DELAY_MS=%g: every score request is delayed (fault injection)",
                    settings.debug_score_delay_ms)

    @app.get("/livez", response_model=Status, summary="liveness: the process answers")
    async def livez() -> Response:
        return live

    @app.get("/readyz", response_model=Status, summary="readiness: 200 once the bundle is verified, loaded and warm",
             responses={503: {"model": Status, "description": "loading, bundle refused (reason), or draining"}})
    async def readyz() -> JSONResponse:
        if runtime.draining:  # first: a shutting-down process must leave the load balancer at once
            return JSONResponse({"status": "draining", "reason": "shutting down"}, status_code=503)
        body = Status(status=runtime.status, reason=runtime.reason)
        return JSONResponse(body.model_dump(), status_code=200 if runtime.status == "ready" else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        content, media_type = metrics.exposition()
        return Response(content, media_type=media_type)

    @app.get("/v1/model", response_model=ModelInfo, responses={503: ERRORS[503]}, summary="the served bundle")
    async def model() -> ModelInfo:
        return _model_info(runtime.require())

    # async on purpose: scoring is ~sub-millisecond CPU work, about what a hop to the thread pool
    # costs; with one worker on one core, running it on the event loop is the fastest path.
    @app.post("/v1/score", response_model=ScoreResponse, responses=ERRORS, summary="score existing and new nodes")
    async def score(request: ScoreRequest) -> ScoreResponse:
        started = time.perf_counter()
        service = runtime.require()  # once: a reload meanwhile must not mix two models in one response
        if delay_s:  # fault injection (SERVE_DEBUG_SCORE_DELAY_MS) for the drain and reload tests
            await asyncio.sleep(delay_s)
        size = len(request.node_ids) + len(request.new_nodes)
        if size == 0:
            raise EmptyBatch("give at least one of node_ids / new_nodes")
        if size > settings.max_batch:
            raise BatchTooLarge(f"{size} nodes in one request; the limit is {settings.max_batch}",
                                {"max_batch": settings.max_batch})
        new = [NewNode(n.features, n.neighbors) for n in request.new_nodes]
        scores = service.scorer.score(request.node_ids, new)
        response = ScoreResponse(model_version=service.bundle.version, results=_results(service, request, scores))
        metrics.scored["existing"].inc(len(request.node_ids))
        metrics.scored["new"].inc(len(new))
        metrics.observe_score(scores.cache_s, scores.inference_s, time.perf_counter() - started)
        return response

    admin.install(app, runtime, settings, metrics, builder)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    paths = frozenset(str(getattr(r, "path", "")) for r in app.routes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, paths=paths)
    return app
