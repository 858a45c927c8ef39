"""`python -m serve --bundle DIR [--host 127.0.0.1] [--port 8000]`: one uvicorn worker on
uvloop + httptools. Every other setting comes from SERVE_* environment variables."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn
from pydantic import ValidationError

from serve.app import create_app
from serve.settings import Settings


def parse_args(argv: list[str] | None) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m serve", description=__doc__)
    parser.add_argument("--bundle", help="bundle directory (default: $SERVE_BUNDLE)")
    parser.add_argument("--host", help="interface to bind (default: $SERVE_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: $SERVE_PORT or 8000)")
    args = parser.parse_args(argv)
    return {k: v for k, v in vars(args).items() if v is not None}


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings(**parse_args(argv))  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        print(f"python -m serve: invalid settings: {problems}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, workers=1,
        loop="uvloop", http="httptools", log_level=settings.log_level,
        access_log=False,  # a log line per request costs more than scoring a node
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
