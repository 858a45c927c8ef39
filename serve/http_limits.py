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

This protocol adds, per server (the state, serve/http_state.py, is shared by the connections of one
protocol class):

- **Head size** (`max_header_bytes`): request line + headers are counted as they arrive; past the
  limit the parser is not fed, the client gets 431 and the connection closes. The trailers of a
  chunked body (header lines after the last chunk, which httptools buffers like a head and uvicorn
  appends to `scope["headers"]`) have the same budget: 431 (or a close, once an answer has started).
- **Head deadline** (`header_timeout_seconds`): a connection must deliver a complete head within
  this long of opening (or of the first byte of its next request on a kept-alive connection),
  else it closes (408 when part of a head had arrived). Between requests uvicorn's keep-alive
  timeout applies, as before.
- **Body deadline** (`body_timeout_seconds`): from the end of the head to the end of the body;
  then 408 (if no answer has started) and close. The app sees a disconnect.
- **Connection cap** (`max_connections`): a new connection over the cap closes the oldest idle
  one (never-served connections first, i.e. partial or empty heads, then kept-alive ones between
  requests or answered while their body still arrives), so idle and slow connections cannot crowd
  out new clients or exhaust file descriptors. When every open connection has a request in
  progress, the newcomer gets 503 and is closed at once.
- **Requests in progress** (`max_in_flight`): a request whose head completes while that many are
  being handled gets 503 `overloaded` at once instead of queueing behind them on the event loop. A
  request is handled from its head until its ASGI task ends, whether or not its answer was sent or
  its client is still there (a handler runs on after a disconnect); while its body is arriving and
  no answer is complete it waits for the client and is not counted. /livez, /readyz and /metrics are
  neither counted nor refused, so probes keep answering and do not take a scoring request's place.

Every shed connection or request is counted and logged (one WARNING line per 5 s at most, with the
counts since the last line). The answers written here have the service's error shape
`{"error": {"code", "message", "detail"}}`; they bypass the app, so /metrics does not count them.

The subclass relies on these HttpToolsProtocol attributes and callbacks: `transport`, `cycle`,
`pipeline` (its `(cycle, app)` pairs), `app` (started or queued by `on_headers_complete`, with
`limit_concurrency` unset and no WebSocket upgrade, as serve/__main__.py configures it), `url`,
`server_state.default_headers`, `data_received`, the parser callbacks (`on_headers_complete`,
`on_body`, `on_message_complete`; httptools also calls `on_chunk_header` / `on_chunk_complete`, which
uvicorn does not define), `on_response_complete` and `connection_made` / `connection_lost`.
tests/serve/test_limits.py exercises each against a real server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from collections.abc import Callable
from typing import Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from serve.http_state import Connections, HeldApp, HttpLimits, Slot

__all__ = ["FD_RESERVE", "HttpLimits", "LimitedHttpToolsProtocol", "ensure_fd_limit", "limited_protocol"]

log = logging.getLogger("serve")

# File descriptors the process needs besides its client connections (listener, logs, onnxruntime,
# the bundle's files while loading, a reload's second bundle).
FD_RESERVE = 256
# Paths never answered 503 by the in-flight cap: the probes and the metrics, all cheap, and needed most
# when the service is overloaded.
EXEMPT_PATHS = frozenset({b"/livez", b"/readyz", b"/metrics"})


def error_body(code: str, message: str, detail: Any = None) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "detail": detail}}).encode()


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
        self.body_slot: Slot | None = None  # ... and the slot of that request, when it counts against max_in_flight
        # Chunked bodies: after a chunk-size line and before its data or the chunk's end, the parser is either at
        # the data of a chunk or, after the last (size 0) chunk, in the trailers. A read that starts there and
        # raises no chunk event was trailers only (trailer_bytes); chunk_events tells.
        self.maybe_trailers = False
        self.chunk_events = 0
        self.trailer_bytes = 0

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
        self.end_body()
        for _, app in self.pipeline:  # queued behind an answer in progress: their tasks will never start
            if isinstance(app, HeldApp):
                app.slot.release()
        self.registry.forget(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.awaiting_head and self.deadline is None:  # the next request begins on a kept-alive connection
            self.arm(self.limits.header_timeout, self.head_timed_out)
        view = memoryview(data)
        while view and not self.transport.is_closing():
            if not (self.awaiting_head or self.maybe_trailers):
                # Body bytes (and whatever follows in this read): fed whole. A pipelined head, or trailers, that
                # start inside this read are counted from the next read on, so they may pass the cap by < 1 read.
                super().data_received(view)  # type: ignore[arg-type]  # httptools takes any buffer
                return
            room = self.limits.max_header_bytes - (self.head_bytes if self.awaiting_head else self.trailer_bytes)
            if room <= 0:
                self.too_large()
                return
            chunk, view = view[:room], view[room:]  # never feed the parser past the cap
            if self.awaiting_head:
                self.head_bytes += len(chunk)
                super().data_received(chunk)  # type: ignore[arg-type]
            else:
                events = self.chunk_events
                super().data_received(chunk)  # type: ignore[arg-type]
                if events == self.chunk_events:  # no chunk data or end in it: all trailer bytes
                    self.trailer_bytes += len(chunk)

    def too_large(self) -> None:
        detail = {"max_header_bytes": self.limits.max_header_bytes}
        if self.awaiting_head:
            self.registry.shedding.note("head_too_large", self.loop)
            self.reply_and_close(431, "header_too_large",
                                 f"request line and headers exceed {self.limits.max_header_bytes} bytes", detail)
        else:
            self.registry.shedding.note("trailers_too_large", self.loop)
            self.abort_request(431, "header_too_large",
                               f"chunked-body trailers exceed {self.limits.max_header_bytes} bytes", detail)

    # -- parser callbacks ---------------------------------------------------------------------------
    def on_headers_complete(self) -> None:
        self.awaiting_head, self.head_bytes = False, 0
        self.disarm()
        self.registry.busy(self)
        counted = self.url.split(b"?", 1)[0] not in EXEMPT_PATHS
        slot = None
        app = self.app
        if counted and self.registry.load >= self.limits.max_in_flight:
            self.registry.shedding.note("overloaded", self.loop)
            self.app = overloaded  # uvicorn's on_headers_complete starts (or queues) self.app
        elif counted:
            slot = Slot(self.registry)
            self.app = HeldApp(app, slot)
        try:
            super().on_headers_complete()
        except BaseException:
            if slot is not None:
                slot.release()
            raise
        finally:
            self.app = app
        self.in_body, self.body_slot = True, slot
        self.arm(self.limits.body_timeout, self.body_timed_out)

    def on_body(self, body: bytes) -> None:
        self.chunk_events += 1
        self.maybe_trailers = False
        super().on_body(body)

    def on_chunk_header(self) -> None:  # after each chunk-size line, the last (size 0) one's included
        self.chunk_events += 1
        self.maybe_trailers, self.trailer_bytes = True, 0

    def on_chunk_complete(self) -> None:  # after each chunk's data; for the last chunk, after the trailers
        self.chunk_events += 1
        self.maybe_trailers = False

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.awaiting_head = True
        if self.in_body:
            self.end_body()
            self.disarm()
            if not self.in_progress and not self.transport.is_closing():
                # Answered before its body ended (413, 503): idle from here on. uvicorn's keep-alive timer
                # was cancelled by the body bytes, so the head deadline bounds the wait for the next request.
                self.registry.idle(self)
                if self.timeout_keep_alive_task is None:
                    self.arm(self.limits.header_timeout, self.head_timed_out)

    def end_body(self) -> None:
        """No more body will be waited for (it ended, or the connection did)."""
        self.in_body = False
        if self.body_slot is not None:
            self.body_slot.body_done()
            self.body_slot = None

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if pipelined or self.transport.is_closing():
            return
        # No request left in progress: the connection may be closed to admit a new one. uvicorn has armed its
        # keep-alive timer; a next head already begun (pipelined, its clock held while we answered) gets ours.
        self.registry.idle(self)
        if self.in_body:
            # Answered before its body ended (nothing was pipelined, so it is this request): its handler is
            # done waiting for the client, so it counts as load until its task ends. The rest of the body is
            # read and dropped under the body deadline.
            if self.body_slot is not None:
                self.body_slot.body_done()
        elif self.head_bytes:
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
        self.abort_request(408, "request_timeout", f"request body not received within {self.limits.body_timeout:g}s")

    def abort_request(self, status: int, code: str, message: str, detail: Any = None) -> None:
        """End the request whose body is arriving: its app's next receive() returns http.disconnect and what it
        sends is dropped; the client gets `status` unless an answer has begun (this one's or, pipelined, an
        earlier request's), then the connection closes."""
        cycle = self.cycle
        answered = cycle is None or cycle.response_started or bool(self.pipeline)
        if cycle is not None:
            cycle.disconnected = True
            cycle.message_event.set()
        if answered:
            self.close()
        else:
            self.reply_and_close(status, code, message, detail)

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
