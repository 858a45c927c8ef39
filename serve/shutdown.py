"""Graceful shutdown on top of uvicorn's own: first drain, then uvicorn's shutdown, then exit 0.

uvicorn already does the hard part on SIGTERM / SIGINT: it stops accepting connections, lets each
open connection finish its current request (keep-alive ones are closed after it), waits up to
`timeout_graceful_shutdown` for them and then cancels what is left. Two things are added here:

1. **Drain first.** The first signal flips /readyz to 503 `draining` at once, and uvicorn's
   shutdown starts only `drain_seconds` later, so a load balancer polling /readyz takes the process
   out of rotation while it still answers everything sent meanwhile.
2. **Exit 0.** uvicorn records a handled signal and re-raises it after shutting down, so the process
   would die "killed by SIGTERM" (143) even after a clean drain. The first signal is handled here
   and not recorded, so `python -m serve` returns normally. A second signal goes to uvicorn's
   handler unchanged: shutdown starts now (a second SIGINT also skips waiting for requests), and the
   process then ends by that signal, as an impatient operator expects.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import FrameType

import uvicorn

log = logging.getLogger("serve")


class DrainingServer(uvicorn.Server):
    """uvicorn.Server that calls `on_drain` on the first signal and shuts down `drain_seconds` later."""

    def __init__(self, config: uvicorn.Config, on_drain: Callable[[], None], drain_seconds: float) -> None:
        super().__init__(config)
        self.on_drain, self.drain_seconds = on_drain, drain_seconds
        self.drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_deadline is not None:  # a second signal: end the drain, then uvicorn's own rule
            # (should_exit first, so that a second SIGINT forces even inside the drain period)
            self.should_exit = True
            super().handle_exit(sig, frame)
            return
        # A signal handler: only set flags here; uvicorn's main loop acts on them (every 0.1 s).
        self.drain_deadline = time.monotonic() + self.drain_seconds
        self.on_drain()
        log.info("signal %d: draining for %.1fs, then graceful shutdown (up to %.1fs for in-flight requests)",
                 sig, self.drain_seconds, self.config.timeout_graceful_shutdown or 0)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and time.monotonic() >= self.drain_deadline:
            self.should_exit = True
        return await super().on_tick(counter)
