"""The state behind serve/http_limits.py, shared by the connections of one server: the limits, the open
connections and which of them may be closed to admit a new one, the requests counted by max_in_flight
(a Slot each, held by its ASGI task through HeldApp), and the count and log of what was shed."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serve.http_limits import LimitedHttpToolsProtocol

log = logging.getLogger("serve")

LOG_EVERY_S = 5.0

# What each shed reason means in the log line.
REASONS = {
    "evicted": "idle connections closed to admit new ones (max_connections={max_connections})",
    "refused": "connections refused with 503: every open connection had a request in progress",
    "head_timeout": "requests whose head did not arrive within {header_timeout:g}s",
    "idle_timeout": "connections closed after {header_timeout:g}s without a request (none before, or after an "
                    "answer that did not wait for the body)",
    "body_timeout": "requests whose body did not arrive within {body_timeout:g}s",
    "head_too_large": "heads over {max_header_bytes} bytes (431)",
    "trailers_too_large": "chunked-body trailers over {max_header_bytes} bytes (431)",
    "overloaded": "requests answered 503 with {max_in_flight} in progress (max_in_flight)",
}


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int
    header_timeout: float
    body_timeout: float
    max_connections: int
    max_in_flight: int


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
        # Requests counted by max_in_flight (not the exempt paths): head complete, task not ended (Slot); and
        # those of them still waiting for their body, unanswered (they are not using the CPU yet).
        self.working = 0
        self.receiving = 0
        self.shedding = Shedding(limits)

    @property
    def load(self) -> int:
        """Requests being handled: what max_in_flight caps."""
        return self.working - self.receiving

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


class Slot:
    """One request counted by max_in_flight: taken when its head completes, given back when its ASGI task
    ends (HeldApp), or when its connection closes before the task could start (a pipelined request)."""

    __slots__ = ("registry", "receiving", "held")

    def __init__(self, registry: Connections) -> None:
        self.registry, self.receiving, self.held = registry, True, True
        registry.working += 1
        registry.receiving += 1

    def body_done(self) -> None:
        """The body has ended, or will never be waited for (answered, body timeout, disconnect): from now on
        the request counts as load. Idempotent, so every such event may call it."""
        if self.receiving:
            self.receiving = False
            self.registry.receiving -= 1

    def release(self) -> None:
        self.body_done()
        if self.held:
            self.held = False
            self.registry.working -= 1


class HeldApp:
    """The ASGI app of one counted request, holding its slot while the handler runs: not only until the
    answer is sent or the client leaves, as the work (e.g. a /v1/score) goes on after either."""

    __slots__ = ("app", "slot")

    def __init__(self, app: Any, slot: Slot) -> None:
        self.app, self.slot = app, slot

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # (A task cancelled before its first step never gets here: only uvicorn's forced shutdown does that.)
        try:
            await self.app(scope, receive, send)
        finally:
            self.slot.release()
