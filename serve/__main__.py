"""`python -m serve --bundle DIR [--host 127.0.0.1] [--port 8000]`: one uvicorn worker on
uvloop + httptools, with the HTTP limits of serve/http_limits.py. Every other setting comes from
SERVE_* environment variables.

Exit codes: 0 after a graceful shutdown (SIGTERM / SIGINT, see serve/shutdown.py), 2 for invalid
settings, 3 when the server could not start (e.g. the port is taken), 4 when the bundle is refused at
start-up (missing, tampered, unsigned, or its model cannot be built): one line on stderr says why.
Verification runs before the port is opened; what only the build finds ends the process once the
build fails. `--wait-for-bundle` (SERVE_WAIT_FOR_BUNDLE=true) stays up unready instead, until a
POST /admin/reload loads a good bundle.

Kubernetes service links (`SERVE_PORT=tcp://...` for a Service named `serve`) are skipped with a log
line; flags such as `--port` need no environment at all."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from serve.app import create_app
from serve.http_limits import HttpLimits, ensure_fd_limit, limited_protocol
from serve.observability import configure_logging
from serve.runtime import Runtime, preflight
from serve.settings import Settings, log_service_links
from serve.shutdown import DrainingServer

AppFactory = Callable[[Settings], FastAPI]
EXIT_BUNDLE_REFUSED = 4


def parse_args(argv: list[str] | None) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m serve", description=__doc__)
    parser.add_argument("--bundle", help="bundle directory (default: $SERVE_BUNDLE)")
    parser.add_argument("--host", help="interface to bind (default: $SERVE_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: $SERVE_PORT or 8000)")
    parser.add_argument("--wait-for-bundle", action="store_true", default=None,
                        help="stay up unready when the bundle is refused, until POST /admin/reload loads a good one "
                             "(default: $SERVE_WAIT_FOR_BUNDLE or false: exit 4)")
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
        # Logging is configured by main() (serve/observability.py); uvicorn's own access line is replaced by ours.
        log_config=None, access_log=False,
        timeout_graceful_shutdown=settings.graceful_timeout_seconds,
    )
    runtime: Runtime = app.state.runtime
    # Not uvicorn.run(): it builds a plain Server, and the drain needs the subclass.
    server = DrainingServer(config, on_drain=runtime.begin_drain, drain_seconds=settings.drain_seconds)
    refused: list[str] = []
    if not settings.wait_for_bundle:
        def stop(reason: str) -> None:  # on the loader thread: only set flags, uvicorn's loop acts on them
            refused.append(reason)
            server.should_exit = True

        runtime.on_start_failure = stop
    server.run()
    if refused:
        print(_refusal(settings, refused[0]), file=sys.stderr)
        return EXIT_BUNDLE_REFUSED
    if not server.started:  # e.g. the port is taken; uvicorn has logged why
        return 3
    return 0


def _refusal(settings: Settings, reason: str) -> str:
    return (f"python -m serve: bundle {settings.bundle} refused: {reason} (exit {EXIT_BUNDLE_REFUSED}; "
            "--wait-for-bundle / SERVE_WAIT_FOR_BUNDLE=true stays up unready instead)")


def main(argv: list[str] | None = None, app_factory: AppFactory = create_app) -> int:
    """The command line: settings from `argv` and SERVE_*, then `serve_app(settings, app_factory(settings))`.
    `app_factory` is create_app; a test launcher passes one that adds its fault injection."""
    try:
        settings = Settings(**parse_args(argv))  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        print(f"python -m serve: invalid settings: {problems}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    log_service_links(os.environ, settings.port)
    if not settings.wait_for_bundle:  # fail fast: verify before the port opens (a crash loop, but with its reason)
        reason = preflight(settings)
        if reason is not None:
            print(_refusal(settings, reason), file=sys.stderr)
            return EXIT_BUNDLE_REFUSED
    return serve_app(settings, app_factory(settings))


if __name__ == "__main__":
    sys.exit(main())
