"""`python -m tests.serve.slow_serve --bundle DIR --port N`: `python -m serve`, except that every
POST /v1/score waits TEST_SCORE_DELAY_MS after taking the model (without blocking the event loop).

Fault injection for the tests that need a request held in flight across a reload or a signal; it
lives here, not in the service's settings, so production code carries none of it. The variable is
not SERVE_*-prefixed on purpose: the service refuses unknown SERVE_* variables.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from fastapi import FastAPI
from prometheus_client import Gauge

from serve.__main__ import main
from serve.app import create_app
from serve.dependencies import RuntimeDep, Scoring, get_scoring
from serve.schemas import ScoreRequest
from serve.settings import Settings


def slow_app(settings: Settings) -> FastAPI:
    """create_app(settings), with the score route's service dependency replaced by a slow one."""
    delay_s = float(os.environ["TEST_SCORE_DELAY_MS"]) / 1000
    app = create_app(settings)
    # What the tests wait on: a request here has had its body read and taken the model, which
    # serve_requests_in_flight (counted from when the handler starts) does not yet say.
    held = Gauge("test_scores_held", "score requests waiting out TEST_SCORE_DELAY_MS",
                 registry=app.state.metrics.registry)

    async def slow_scoring(request: ScoreRequest, runtime: RuntimeDep) -> Scoring:
        scoring = Scoring(request, runtime.require())  # first: the request keeps the model it started with
        with held.track_inprogress():
            await asyncio.sleep(delay_s)
        return scoring

    app.dependency_overrides[get_scoring] = slow_scoring
    return app


if __name__ == "__main__":
    # A test runner started in the background of a non-interactive shell (`make test &`) passes SIGINT
    # down ignored; the signal tests need it as an operator's terminal delivers it (uvicorn re-raises
    # a forced SIGINT on exit, which an ignored disposition would turn into exit 0).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main(sys.argv[1:], app_factory=slow_app))
