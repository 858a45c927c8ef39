"""HTTP limits that uvicorn's httptools protocol does not have: a subclass of it, passed as
`uvicorn.Config(http=limited_protocol(...))`.

What uvicorn 0.54 + httptools offer, and why it is not enough for a service on a public port:

- No cap on the size of a request head: httptools buffers a header value until it ends, so one
  256 MiB header was read into memory and answered 200. (`h11_max_incomplete_event_size` exists,
  but only the h11 protocol reads it.)
- No time limit on receiving a request: `timeout_keep_alive` only runs between requests and any
  byte cancels it (a single "\\r\\n" after a response then keeps a connection forever); a new
  connection that sends nothing, or one byte a second (slowloris), is never closed.
- `limit_concurrency` is checked only once a head is complete, and counts open connections as well
  as requests: idle connections are never closed by it, and once they reach the limit *every*
  request (/livez included) is answered 503 while the idle ones stay.

This protocol adds, per server (the state is shared by the connections of one protocol class):

- **Head size** (`max_header_bytes`): request line + headers are counted as they arrive; past the
  limit the parser is not fed, the client gets 431 and the connection closes.
- **Head deadline** (`header_timeout_seconds`): a connection must deliver a complete head within
  this long of opening (or of the first byte of its next request on a kept-alive connection),
  else it closes (408 when part of a head had arrived). Between requests uvicorn's keep-alive
  timeout applies, as before.
- **Body deadline** (`body_timeout_seconds`): from the end of the head to the end of the body;
  then 408 (if no answer has started) and close. The app sees a disconnect.
- **Connection cap** (`max_connections`): a new connection over the cap closes the oldest idle
  one (never-served connections first, i.e. partial or empty heads, then kept-alive ones between
  requests), so idle and slow connections cannot crowd out new clients or exhaust file
  descriptors. When every open connection has a request in progress, the newcomer gets 503 and
  is closed at once.
- **Requests in progress** (`max_in_flight`): a request whose head completes while that many are
  being handled (body received, answer pending) gets 503 `overloaded` at once instead of queueing
  behind them on the event loop. /livez, /readyz and /metrics are neither counted nor refused, so
  probes keep answering and do not take a scoring request's place.

Every shed connection or request is counted and logged (one WARNING line per 5 s at most, with the
counts since the last line). The answers written here have the service's error shape
`{"error": {"code", "message", "detail"}}`; they bypass the app, so /metrics does not count them.

The subclass relies on these HttpToolsProtocol attributes and callbacks: `transport`, `cycle`,
`pipeline`, `tasks`, `app`, `url`, `server_state.default_headers`, `data_received`, the parser
callbacks (`on_message_begin`, `on_headers_complete`, `on_message_complete`),
`on_response_complete` and `connection_made` / `connection_lost`. tests/serve/test_limits.py
exercises each against a real server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

log = logging.getLogger("serve")

# File descriptors the process needs besides its client connections (listener, logs, onnxruntime,
# the bundle's files while loading, a reload's second bundle).
FD_RESERVE = 256
LOG_EVERY_S = 5.0
# Paths never answered 503 by the in-flight cap: the probes and the metrics, all cheap, and needed most
# when the service is overloaded.
EXEMPT_PATHS = frozenset({b"/livez", b"/readyz", b"/metrics"})

# What each shed reason means in the log line.
REASONS = {
    "evicted": "idle connections closed to admit new ones (max_connections={max_connections})",
    "refused": "connections refused with 503: every open connection had a request in progress",
    "head_timeout": "requests whose head did not arrive within {header_timeout:g}s",
    "idle_timeout": "connections closed after {header_timeout:g}s without a request (none before, or after an "
                    "answer that did not wait for the body)",
    "body_timeout": "requests whose body did not arrive within {body_timeout:g}s",
    "head_too_large": "heads over {max_header_bytes} bytes (431)",
    "overloaded": "requests answered 503 with {max_in_flight} in progress (max_in_flight)",
}


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int
    header_timeout: float
    body_timeout: float
    max_connections: int
    max_in_flight: int


def error_body(code: str, message: str, detail: Any = None) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "detail": detail}}).encode()


class Shedding:
    """Counts shed connections and requests by reason; logs them at most once per LOG_EVERY_S."""

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.counts: Counter[str] = Counter()
        self.total: Counter[str] = Counter()  # since start (for tests and debugging)
        self.next_log = 0.0
        self.flush_scheduled = False

    def note(self, reason: str, loop: asyncio.AbstractEventLoop) -> None:
        self.counts[reason] += 1
        self.total[reason] += 1
        if not self.flush_scheduled:
            self.flush_scheduled = True
            loop.call_later(max(0.0, self.next_log - time.monotonic()), self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        self.next_log = time.monotonic() + LOG_EVERY_S
        if not self.counts:
            return
        values = {"max_connections": self.limits.max_connections, "header_timeout": self.limits.header_timeout,
                  "body_timeout": self.limits.body_timeout, "max_header_bytes": self.limits.max_header_bytes,
                  "max_in_flight": self.limits.max_in_flight}
        parts = [f"{n} {REASONS[r].format(**values)}" for r, n in sorted(self.counts.items())]
        log.warning("http limits: shed %s", "; ".join(parts))
        self.counts.clear()


class Connections:
    """The open connections of one server, and which of them may be closed to admit a new one."""

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.open: set[LimitedHttpToolsProtocol] = set()
        # Connections with no request in progress, oldest first: never served (empty or partial head) /
        # served at least once (kept alive between requests). A dict keeps insertion order; O(1) each way.
        self.fresh: OrderedDict[LimitedHttpToolsProtocol, None] = OrderedDict()
        self.kept: OrderedDict[LimitedHttpToolsProtocol, None] = OrderedDict()
        # Requests counted by max_in_flight (not the exempt paths): head complete, answer not finished; and
        # those of them whose body is still arriving (they are not using the CPU yet).
        self.working = 0
        self.receiving = 0
        self.shedding = Shedding(limits)

    def admit(self, conn: LimitedHttpToolsProtocol) -> bool:
        """A new connection: make room by closing the oldest idle one if needed -> False: refuse it."""
        if len(self.open) >= self.limits.max_connections:
            idle = self.fresh or self.kept
            if not idle:
                return False
            victim, _ = idle.popitem(last=False)
            victim.close()
            self.shedding.note("evicted", conn.loop)
        self.open.add(conn)
        self.fresh[conn] = None
        return True

    def busy(self, conn: LimitedHttpToolsProtocol) -> None:
        self.fresh.pop(conn, None)
        self.kept.pop(conn, None)

    def idle(self, conn: LimitedHttpToolsProtocol) -> None:
        if conn in self.open:
            self.kept[conn] = None
            self.kept.move_to_end(conn)

    def forget(self, conn: LimitedHttpToolsProtocol) -> None:
        self.open.discard(conn)
        self.busy(conn)


async def overloaded(scope: Any, receive: Any, send: Any) -> None:
    """The ASGI answer to a request over max_in_flight (the connection stays open)."""
    body = error_body("overloaded", "too many requests in progress; retry shortly")
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"retry-after", b"1")]})
    await send({"type": "http.response.body", "body": body})


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above. Made per server by `limited_protocol`."""

    limits: ClassVar[HttpLimits]
    registry: ClassVar[Connections]

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.deadline: asyncio.TimerHandle | None = None  # head or body deadline, whichever applies
        self.awaiting_head = True  # the next bytes belong to a request head
        self.head_bytes = 0  # bytes of the current head received so far
        self.in_body = False  # head complete, body still arriving
        self.body_counted = False  # ... and that request counts against max_in_flight
        self.counted: deque[bool] = deque()  # per request not yet answered, in order: counts against max_in_flight

    # -- connection ---------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.registry.admit(self):
            self.registry.shedding.note("refused", self.loop)
            self.reply_and_close(503, "overloaded", "too many connections with requests in progress; retry shortly")
            return
        self.arm(self.limits.header_timeout, self.head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        if self.in_body and self.body_counted:
            self.registry.receiving -= 1
        self.in_body = False
        self.registry.working -= sum(self.counted)  # answers that will never complete
        self.counted.clear()
        self.registry.forget(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.awaiting_head and self.deadline is None:  # the next request begins on a kept-alive connection
            self.arm(self.limits.header_timeout, self.head_timed_out)
        view = memoryview(data)
        while view and not self.transport.is_closing():
            if not self.awaiting_head:
                # Body bytes (and whatever follows in this read): fed whole. A pipelined head that starts
                # inside this read is counted from the next read on, so it may pass the cap by < 1 read.
                super().data_received(view)  # type: ignore[arg-type]  # httptools takes any buffer
                return
            room = self.limits.max_header_bytes - self.head_bytes
            if room <= 0:
                self.registry.shedding.note("head_too_large", self.loop)
                self.reply_and_close(431, "header_too_large",
                                     f"request line and headers exceed {self.limits.max_header_bytes} bytes",
                                     {"max_header_bytes": self.limits.max_header_bytes})
                return
            chunk, view = view[:room], view[room:]  # never feed the parser past the cap
            self.head_bytes += len(chunk)
            super().data_received(chunk)  # type: ignore[arg-type]

    # -- parser callbacks ---------------------------------------------------------------------------
    def on_headers_complete(self) -> None:
        self.awaiting_head, self.head_bytes = False, 0
        self.disarm()
        self.registry.busy(self)
        counted = self.url.split(b"?", 1)[0] not in EXEMPT_PATHS
        shed = counted and self.registry.working - self.registry.receiving >= self.limits.max_in_flight
        if shed:
            counted = False
            self.registry.shedding.note("overloaded", self.loop)
            app, self.app = self.app, overloaded  # uvicorn's on_headers_complete starts self.app
        try:
            super().on_headers_complete()
        finally:
            if shed:
                self.app = app
        self.counted.append(counted)
        self.in_body, self.body_counted = True, counted
        if counted:
            self.registry.working += 1
            self.registry.receiving += 1
        self.arm(self.limits.body_timeout, self.body_timed_out)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.awaiting_head = True
        if self.in_body:
            self.in_body = False
            if self.body_counted:
                self.registry.receiving -= 1
            self.disarm()
            if not self.in_progress and not self.transport.is_closing():
                # Answered before its body ended (413, 503): idle from here on. uvicorn's keep-alive timer
                # was cancelled by the body bytes, so the head deadline bounds the wait for the next request.
                self.registry.idle(self)
                if self.timeout_keep_alive_task is None:
                    self.arm(self.limits.header_timeout, self.head_timed_out)

    def on_response_complete(self) -> None:
        if self.counted and self.counted.popleft():  # answers complete in request order
            self.registry.working -= 1
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if pipelined or not self.awaiting_head or self.transport.is_closing():
            return
        # No request left in progress: the connection may be closed to admit a new one. uvicorn has armed its
        # keep-alive timer; a next head already begun (pipelined, its clock held while we answered) gets ours.
        self.registry.idle(self)
        if self.head_bytes:
            self.arm(self.limits.header_timeout, self.head_timed_out)

    @property
    def in_progress(self) -> bool:
        """A request of this connection is being answered."""
        return self.cycle is not None and not self.cycle.response_complete

    # -- deadlines ----------------------------------------------------------------------------------
    def arm(self, seconds: float, callback: Callable[[], None]) -> None:
        self.disarm()
        self.deadline = self.loop.call_later(seconds, callback)

    def disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def head_timed_out(self) -> None:
        self.deadline = None
        if self.transport.is_closing() or not self.awaiting_head or self.in_progress:
            return  # (a head pipelined behind a request in progress: its clock restarts when that is answered)
        if self.head_bytes:
            self.registry.shedding.note("head_timeout", self.loop)
            self.reply_and_close(408, "request_timeout",
                                 f"request head not received within {self.limits.header_timeout:g}s")
        else:  # nothing of a request yet: close quietly (a client may race its next request against this)
            self.registry.shedding.note("idle_timeout", self.loop)
            self.close()

    def body_timed_out(self) -> None:
        self.deadline = None
        if self.transport.is_closing() or not self.in_body:
            return
        self.registry.shedding.note("body_timeout", self.loop)
        cycle = self.cycle
        answered = cycle is None or cycle.response_started
        if cycle is not None:  # the app's next receive() returns http.disconnect; what it sends is dropped
            cycle.disconnected = True
            cycle.message_event.set()
        if answered:
            self.close()
        else:
            self.reply_and_close(408, "request_timeout",
                                 f"request body not received within {self.limits.body_timeout:g}s")

    # -- answers written here -----------------------------------------------------------------------
    def reply_and_close(self, status: int, code: str, message: str, detail: Any = None) -> None:
        body = error_body(code, message, detail)
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\ncontent-length: ", str(len(body)).encode(),
                 b"\r\nconnection: close\r\n"]
        if status == 503:
            head.append(b"retry-after: 1\r\n")
        self.transport.write(b"".join([*head, b"\r\n", body]))
        self.close()

    def close(self) -> None:
        """Close now; the connection stops counting against max_connections at once."""
        self.disarm()
        self.registry.forget(self)
        self.transport.close()


def limited_protocol(limits: HttpLimits) -> type[LimitedHttpToolsProtocol]:
    """A protocol class for one server: its own limits and its own registry of connections."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,),
                {"limits": limits, "registry": Connections(limits)})


def ensure_fd_limit(max_connections: int) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to fit max_connections + FD_RESERVE (up to the hard limit); warn when
    even the hard limit is too low. -> (soft, hard) in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max_connections + FD_RESERVE
    unlimited = resource.RLIM_INFINITY
    if soft != unlimited and soft < needed:
        target = needed if hard == unlimited else min(needed, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError) as exc:
                log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    if soft != unlimited and soft < needed:
        log.warning("open-file limit %d (hard %s) is below max_connections %d + %d reserved: new connections "
                    "may fail with EMFILE before the cap sheds idle ones; lower SERVE_MAX_CONNECTIONS or raise "
                    "the limit (`ulimit -n`, docker `--ulimit nofile=...`)", soft,
                    "unlimited" if hard == unlimited else hard, max_connections, FD_RESERVE)
    return soft, hard
