"""Request ids, structured logs and the access log.

- `RequestContextMiddleware` (pure ASGI, installed by `install` *outside* Starlette's
  ServerErrorMiddleware, so even a bug's 500 carries the id): takes `X-Request-ID` when it is short
  and of a safe charset, keeps the trace id of a valid W3C `traceparent`, generates what is missing,
  echoes both on every response the app sends, and writes one access line per request.
- `configure_logging`: one formatter (JSON by default, or text) for every logger, ours and uvicorn's,
  each record stamped with the request id of the request that logged it (a context variable).

Answers written by the HTTP protocol itself (431, 408, the in-flight 503 of serve/http_limits.py)
never reach the app, so they carry no id and make no access line; the protocol logs them, rate-limited.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import re
import time
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, NamedTuple

from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ACCESS = logging.getLogger("serve.access")
# 200s of these are probes and scrapes (every few seconds, forever): only their failures are logged,
# so a /readyz 503 while loading or draining still shows.
QUIET_PATHS = frozenset({"/livez", "/readyz", "/metrics"})
MAX_PATH_CHARS = 256  # the path is the client's: bounded in the log like everything else it sends
# A caller's id is kept only when it cannot break a log line or a header: short, no spaces or quotes.
REQUEST_ID = re.compile(rb"[A-Za-z0-9._:+/=-]{1,128}")
# W3C trace context: version-traceid-parentid-flags, lower-case hex; version ff and all-zero ids are invalid.
TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
ZERO_TRACE, ZERO_SPAN = b"0" * 32, b"0" * 16


class RequestIds(NamedTuple):
    """What a request is known by: `request_id` (the caller's X-Request-ID, else the trace id),
    `trace_id` (32 hex) and `span_id` (16 hex, this server's span, new per request)."""

    request_id: str
    trace_id: str
    span_id: str


CURRENT: ContextVar[RequestIds | None] = ContextVar("serve_request", default=None)


def current_request_id() -> str | None:
    """The id of the request being handled by this task (None outside a request)."""
    ids = CURRENT.get()
    return None if ids is None else ids.request_id


def request_ids(headers: list[tuple[bytes, bytes]]) -> tuple[RequestIds, bytes]:
    """ASGI headers -> the request's ids and the flags byte pair of its traceparent (b"00" if none).
    One random draw gives the span id and, when the caller sent no valid traceparent, the trace id."""
    given_id = trace = None
    flags = b"00"
    for name, value in headers:
        if name == b"x-request-id" and REQUEST_ID.fullmatch(value):
            given_id = value
        elif name == b"traceparent":
            match = TRACEPARENT.fullmatch(value.strip())
            if match and match[1] != b"ff" and match[2] != ZERO_TRACE and match[3] != ZERO_SPAN:
                trace, flags = match[2], match[4]
    fresh = os.urandom(24).hex()
    trace_id = trace.decode() if trace else fresh[:32]
    return RequestIds((given_id.decode() if given_id else trace_id), trace_id, fresh[32:]), flags


class RequestContextMiddleware:
    """Sets CURRENT for the request, adds `x-request-id` and `traceparent` (the caller's trace id and
    flags, this server's span id) to the response head, and logs one access line when
    `access_log` is on (probe/scrape successes excepted, see QUIET_PATHS). `version()` is the model
    version served when the request ends (a reload in between is logged with the new one)."""

    def __init__(self, app: ASGIApp, version: Callable[[], str | None], access_log: bool) -> None:
        self.app, self.version, self.access_log = app, version, access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        ids, flags = request_ids(scope["headers"])
        # Not reset afterwards, on purpose: the ASGI server runs each request in a task of its own
        # (so nothing leaks), and uvicorn logs a bug's traceback in that task after we return.
        CURRENT.set(ids)
        echo = [(b"x-request-id", ids.request_id.encode()),
                (b"traceparent", f"00-{ids.trace_id}-{ids.span_id}-".encode() + flags)]
        status = 500  # what the client sees if nothing was sent (the server answers 500)

        async def send_with_ids(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                # A new list: a prebuilt Response (e.g. /livez) hands over its own header list.
                message = {**message, "headers": [*message.get("headers", ()), *echo]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_ids)
        finally:
            if self.access_log and (status >= 400 or scope["path"] not in QUIET_PATHS):
                self.log(scope, status, time.perf_counter() - started)

    def log(self, scope: Scope, status: int, seconds: float) -> None:
        if not ACCESS.isEnabledFor(logging.INFO):
            return
        client, method, path = scope.get("client"), scope["method"], scope["path"][:MAX_PATH_CHARS]
        # makeRecord + handle, not ACCESS.info: that walks the stack for the caller's file and line
        # (~1/3 of the line's cost), which means nothing for an access line.
        ACCESS.handle(ACCESS.makeRecord(ACCESS.name, logging.INFO, "", 0, "%s %s %d", (method, path, status), None,
                                        extra={"method": method, "path": path, "status": status,
                                               "latency_ms": round(seconds * 1e3, 3), "model_version": self.version(),
                                               "client": f"{client[0]}:{client[1]}" if client else None}))


def install(app: Starlette, version: Callable[[], str | None], access_log: bool) -> None:
    """Wrap `app`'s whole middleware stack, built lazily on the first request, in
    RequestContextMiddleware: outside ServerErrorMiddleware, which add_middleware cannot reach, so a
    bug's 500 is echoed and logged with its id too. Middleware added later still works."""
    build = app.build_middleware_stack

    def build_with_ids() -> ASGIApp:
        return RequestContextMiddleware(build(), version, access_log)

    app.build_middleware_stack = build_with_ids  # type: ignore[method-assign]


# --- logs --------------------------------------------------------------------------------------------
# Attributes every LogRecord has: anything else on a record came from `extra=` and is a field of its own.
STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
DROPPED = frozenset({"color_message"})  # uvicorn's ANSI-coloured copy of the message


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's `extra=` fields and, inside a request, its request and trace ids."""
    out = {k: v for k, v in record.__dict__.items() if k not in STANDARD and k not in DROPPED}
    ids = CURRENT.get()
    if ids is not None:
        out.setdefault("request_id", ids.request_id)
        out.setdefault("trace_id", ids.trace_id)
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ms), level, logger, message, then the record's fields
    (request_id, trace_id, the access fields, any `extra=`), then `exc` (the traceback) if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(), **fields(record)}
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`ts level logger message key=value ...` for a terminal; the fields as JsonFormatter has them."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        extra = " ".join(f"{k}={v}" for k, v in fields(record).items())
        return super().formatMessage(record) + (f" {extra}" if extra else "")


def logging_config(level: str, fmt: str) -> dict[str, Any]:
    """The dictConfig: one stderr handler on the root logger with the chosen formatter; uvicorn's
    loggers lose their own handlers and propagate to it; serve.access logs at INFO whatever `level`
    (it is switched by SERVE_ACCESS_LOG, not by the log level)."""
    formatter = JsonFormatter if fmt == "json" else TextFormatter
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"serve": {"()": formatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "serve", "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {
            "serve.access": {"level": "INFO"},
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            # uvicorn's own access line knows neither the request id nor the model: ours replaces it.
            "uvicorn.access": {"handlers": [], "propagate": False},
        },
    }


def configure_logging(level: str, fmt: str) -> None:
    """Apply logging_config; call once at start-up, before uvicorn (given log_config=None) starts."""
    logging.config.dictConfig(logging_config(level, fmt))
