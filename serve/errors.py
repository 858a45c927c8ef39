"""Domain errors and the one place that maps them (and every other failure) to HTTP responses.

Every error body has the same shape: `{"error": {"code": str, "message": str, "detail": ...}}`.
No handler ever puts a traceback or an exception repr in a response.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("serve")
MAX_DETAIL = 20
T = TypeVar("T")


class ServeError(Exception):
    """A failure the client (or the operator) can act on. `code` is a stable machine-readable name."""

    code = "error"

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class BundleError(ServeError):
    """The bundle is missing, unknown, malformed or does not match its manifest's sha256."""

    code = "bundle_invalid"


class NotReady(ServeError):
    code = "not_ready"


class EmptyBatch(ServeError):
    code = "empty_batch"


class BatchTooLarge(ServeError):
    code = "batch_too_large"


class BodyTooLarge(ServeError):
    code = "body_too_large"


class InvalidFeatures(ServeError):
    code = "invalid_features"


class UnknownNodes(ServeError):
    code = "unknown_nodes"


class UnknownNeighbors(ServeError):
    code = "unknown_neighbors"


class Unauthorized(ServeError):
    """Missing or wrong admin bearer token."""

    code = "unauthorized"


class BundleNotFound(ServeError):
    """A reload named a path that is not a directory. 422, not 404: on /admin/reload a 404 already
    means "admin endpoint disabled", and the two must not be confused."""

    code = "bundle_not_found"


class BundleNotAllowed(ServeError):
    """A reload named a directory outside the allowed roots (settings.reload_roots)."""

    code = "bundle_not_allowed"


class BundleRejected(ServeError):
    """A reload's bundle failed verification or could not be built; the old bundle keeps serving."""

    code = "bundle_rejected"


class BundleIncompatible(ServeError):
    """A reload's bundle changes what clients rely on (feature width, class names, graph vs graph-free
    inputs, selection metric); `detail["differences"]` lists each. 409: the bundle may be valid, it
    conflicts with the model being served; `{"force": true}` swaps it in anyway."""

    code = "bundle_incompatible"


class ReloadInProgress(ServeError):
    """A bundle is already being loaded (the start-up load or another reload)."""

    code = "reload_in_progress"


class UnsupportedMediaType(ServeError):
    """The body is not declared as JSON (no Content-Type, or another one)."""

    code = "unsupported_media_type"


class UnsupportedEncoding(UnsupportedMediaType):
    """The body is compressed (a Content-Encoding other than identity); RFC 9110 answers that 415 too."""

    code = "unsupported_encoding"


class ModelOutputInvalid(ServeError):
    """The model produced a non-finite score. Never a 200 with nulls in place of probabilities: the
    answer would be garbage and would violate the response schema. 503, like a refused bundle: the
    request was fine, this model cannot serve it."""

    code = "model_output_invalid"


class EdgeLogError(BundleError):
    """The edge log (SERVE_EDGE_LOG) cannot be used: another bundle's log, corrupt before its last
    record, or a failed write / fsync (then no further write is acknowledged until a restart)."""

    code = "edge_log_invalid"


class WritesDisabled(ServeError):
    """POST /v1/edges on a service without SERVE_EDGE_LOG: the graph is the bundle's, read-only."""

    code = "writes_disabled"


class NodeExists(ServeError):
    """A write declares a node whose id is already in the graph (or twice in one request)."""

    code = "node_exists"


class TimeNotMonotonic(ServeError):
    """An edge's time is before the last logged one while SERVE_EDGES_MONOTONIC is on."""

    code = "time_not_monotonic"


class WeightOutOfRange(ServeError):
    """An edge's weight (rating) is outside [SERVE_EDGE_WEIGHT_MIN, SERVE_EDGE_WEIGHT_MAX]."""

    code = "weight_out_of_range"


class RatingRequired(ServeError):
    """A write to a temporal bundle gives an edge without its rating (`weight`): the model reads them."""

    code = "rating_required"


class NewNodesUnsupported(ServeError):
    """`new_nodes` in a score request to a temporal bundle: its users have no features of their own
    (they are computed from the rating history); new users come in through POST /v1/edges."""

    code = "new_nodes_unsupported"


class DirectedOnly(ServeError):
    """`undirected: true` in a write to a temporal bundle: a rating goes from its rater to its ratee."""

    code = "directed_only"


# The one mapping from domain error to status code. An error not listed takes the entry of its nearest
# listed base class (so a new subclass of BundleError is 503, not 500); only unlisted lines fall to 500.
STATUS: dict[type[ServeError], int] = {
    NotReady: 503,
    BundleError: 503,
    EmptyBatch: 422,
    InvalidFeatures: 422,
    BatchTooLarge: 413,
    BodyTooLarge: 413,
    UnknownNodes: 404,
    UnknownNeighbors: 404,
    Unauthorized: 401,
    BundleNotFound: 422,
    BundleNotAllowed: 403,
    BundleRejected: 422,
    BundleIncompatible: 409,
    ReloadInProgress: 409,
    UnsupportedMediaType: 415,
    ModelOutputInvalid: 503,
    WritesDisabled: 404,
    NodeExists: 409,
    TimeNotMonotonic: 409,
    WeightOutOfRange: 422,
    RatingRequired: 422,
    NewNodesUnsupported: 422,
    DirectedOnly: 422,
}
# Headers a status requires (RFC 6750: a 401 names the scheme the client should use); resolved likewise.
HEADERS: dict[type[ServeError], dict[str, str]] = {
    Unauthorized: {"WWW-Authenticate": "Bearer"},
    UnsupportedEncoding: {"Accept-Encoding": "identity"},  # RFC 9110 12.5.3: say which codings are accepted
}


def resolve(table: Mapping[type[ServeError], T], exc: ServeError) -> T | None:
    """`table`'s entry for the nearest class of `exc` (walking its MRO) that has one, else None."""
    for cls in type(exc).__mro__:
        if issubclass(cls, ServeError) and cls in table:
            return table[cls]
    return None


def status_of(exc: ServeError) -> int:
    status = resolve(STATUS, exc)
    return 500 if status is None else status


def is_v2(path: str) -> bool:
    """A path of the Open Inference Protocol v2 API (serve/routes/v2.py), known or not."""
    return path == "/v2" or path.startswith("/v2/")


def body(code: str, message: str, detail: Any = None, path: str = "") -> dict[str, Any]:
    """The error body for a request to `path`. Under /v2 the protocol's own, `{"error": $string}`
    (inference_rest.md: "$inference_error_response"), with the same status; the string keeps what
    the other body carries: `code: message` and, when there is one, `; detail: <JSON>`."""
    if is_v2(path):
        text = f"{code}: {message}"
        return {"error": text if detail is None else f"{text}; detail: {json.dumps(detail, separators=(',', ':'))}"}
    return {"error": {"code": code, "message": message, "detail": detail}}


def response_for(exc: ServeError, path: str = "") -> JSONResponse:
    return JSONResponse(body(exc.code, exc.message, exc.detail, path), status_code=status_of(exc),
                        headers=resolve(HEADERS, exc))


def _validation_detail(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Keep only loc/msg/type: pydantic's `input` and `ctx` can hold the whole (huge) body or
    # exception objects that are neither useful to the client nor JSON-serialisable.
    # Capped: a 100k-element list of bad values must not produce a 100k-entry error body.
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()[:MAX_DETAIL]]


async def _on_serve_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServeError)
    return response_for(exc, request.url.path)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail = _validation_detail(exc)
    reasons = [e.get("ctx", {}).get("error") for e in exc.errors() if e.get("type") == "json_invalid"]
    if reasons:
        # The parser's reason (a str, set by FastAPI or serve/body.py) says what to fix.
        message = "request body is not valid JSON" + (f": {reasons[0]}" if isinstance(reasons[0], str) else "")
        return JSONResponse(body("malformed_json", message, detail, request.url.path), status_code=422)
    return JSONResponse(body("invalid_request", "request does not match the schema", detail, request.url.path),
                        status_code=422)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse(body(f"http_{exc.status_code}", str(exc.detail), path=request.url.path),
                        status_code=exc.status_code, headers=exc.headers)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises after sending this, so uvicorn logs the traceback for the operator;
    # the client only gets a generic JSON 500.
    log.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path)
    return JSONResponse(body("internal_error", "internal server error", path=request.url.path), status_code=500)


def install(app: FastAPI) -> None:
    """Register every handler on `app`."""
    app.add_exception_handler(ServeError, _on_serve_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
