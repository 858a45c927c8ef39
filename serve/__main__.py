"""`python -m serve --bundle DIR [--host 127.0.0.1] [--port 8000]`: one uvicorn worker on
uvloop + httptools, with the HTTP limits of serve/http_limits.py. Every other setting comes from
SERVE_* environment variables.

Exit codes: 0 after a graceful shutdown (SIGTERM / SIGINT, see serve/shutdown.py), 2 for invalid
settings, 3 when the server could not start (e.g. the port is taken)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from serve.app import create_app
from serve.http_limits import HttpLimits, ensure_fd_limit, limited_protocol
from serve.runtime import Runtime
from serve.settings import Settings
from serve.shutdown import DrainingServer

AppFactory = Callable[[Settings], FastAPI]


def parse_args(argv: list[str] | None) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m serve", description=__doc__)
    parser.add_argument("--bundle", help="bundle directory (default: $SERVE_BUNDLE)")
    parser.add_argument("--host", help="interface to bind (default: $SERVE_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: $SERVE_PORT or 8000)")
    args = parser.parse_args(argv)
    return {k: v for k, v in vars(args).items() if v is not None}


def serve_app(settings: Settings, app: FastAPI) -> int:
    """Run `app` (made by create_app) until a signal ends it -> the exit code (0, or 3 if it never started)."""
    limits = HttpLimits(max_header_bytes=settings.max_header_bytes, header_timeout=settings.header_timeout_seconds,
                        body_timeout=settings.body_timeout_seconds, max_connections=settings.max_connections,
                        max_in_flight=settings.max_in_flight)
    ensure_fd_limit(settings.max_connections)
    config = uvicorn.Config(
        # httptools with the limits uvicorn lacks (serve/http_limits.py); no WebSocket upgrades (no route uses one).
        app, host=settings.host, port=settings.port, workers=1, loop="uvloop", http=limited_protocol(limits),
        ws="none", timeout_keep_alive=settings.keep_alive_seconds,
        log_level=settings.log_level,
        access_log=False,  # a log line per request costs more than scoring a node
        timeout_graceful_shutdown=settings.graceful_timeout_seconds,
    )
    runtime: Runtime = app.state.runtime
    # Not uvicorn.run(): it builds a plain Server, and the drain needs the subclass.
    server = DrainingServer(config, on_drain=runtime.begin_drain, drain_seconds=settings.drain_seconds)
    server.run()
    if not server.started:  # e.g. the port is taken; uvicorn has logged why
        return 3
    return 0


def main(argv: list[str] | None = None, app_factory: AppFactory = create_app) -> int:
    """The command line: settings from `argv` and SERVE_*, then `serve_app(settings, app_factory(settings))`.
    `app_factory` is create_app; a test launcher passes one that adds its fault injection."""
    try:
        settings = Settings(**parse_args(argv))  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        print(f"python -m serve: invalid settings: {problems}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return serve_app(settings, app_factory(settings))


if __name__ == "__main__":
    sys.exit(main())
