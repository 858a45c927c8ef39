"""Real server processes for the HTTP tests: `python -m serve` (or the test launcher
tests/serve/slow_serve.py, whose /v1/score holds each request) in a subprocess, and the probes the
tests poll it with. Tests get servers from the `running_server` fixture (tests/serve/conftest.py),
which stops every one it started."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A real server subprocess."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10.0)

    def wait_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                httpx.get(f"{self.url}/livez", timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise TimeoutError(f"server did not listen within {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()  # a no-op once the process has exited
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(bundle: Path, log: Path, slow_ms: float | None = None, **env: str) -> Server:
    """Start a server on a free port and wait until it listens (not until it is ready). With
    `slow_ms`, the test launcher: every /v1/score waits that long after taking the model."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SERVE_")}
    clean.update(env)
    module = "serve"
    if slow_ms is not None:
        module, clean["TEST_SCORE_DELAY_MS"] = "tests.serve.slow_serve", str(slow_ms)
    with log.open("wb") as fh:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "--bundle", str(bundle), "--port", str(port)],
            cwd=ROOT, env=clean, stdout=fh, stderr=subprocess.STDOUT,
        )
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        server.wait_listening()
    except BaseException:
        server.stop()
        raise
    return server


def wait_ready(server: Server, timeout: float = 60.0) -> list[int]:
    """Poll /readyz until 200 -> every status code seen on the way."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.append(httpx.get(f"{server.url}/readyz", timeout=5.0).status_code)
        if seen[-1] == 200:
            return seen
        time.sleep(0.02)
    raise TimeoutError(f"not ready after {timeout}s (seen {seen[-5:]}):\n{server.log.read_text()}")


# running_server(bundle, *, ready=True, slow_ms=None, **SERVE_env) -> a started (and by default ready) Server
RunningServer = Callable[..., Server]


class Servers:
    """Starts servers and stops them all at the end (the `running_server` fixture)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[Server] = []

    def __call__(self, bundle: Path, *, ready: bool = True, slow_ms: float | None = None, **env: str) -> Server:
        return self.start(bundle, env, ready, slow_ms)

    def start(self, bundle: Path, env: dict[str, str], ready: bool = True, slow_ms: float | None = None) -> Server:
        log = self.logs / f"server-{len(self.started)}.log"
        server = start_server(bundle, log, slow_ms, **env)
        self.started.append(server)
        if ready:
            wait_ready(server)
        return server

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()


@contextmanager
def serving(bundle: Path, logs: Path, **env: str) -> Iterator[Server]:
    """One ready server for a wider scope (module fixtures); stopped on exit."""
    servers = Servers(logs)
    try:
        yield servers.start(bundle, env)
    finally:
        servers.stop_all()


def metric(client: httpx.Client, name: str) -> float:
    """One sample of /metrics by its full name with labels (`a_total{x="y"}`); 0 when absent."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_held(client: httpx.Client, requests: int, timeout: float = 20.0) -> None:
    """Until `requests` score requests sit in the slow launcher's delay (`slow_ms`): body read, model
    taken, counted by max_in_flight. serve_requests_in_flight would say so too early: it counts a
    handler from its start, and the cap counts a request only once its body has arrived."""
    deadline = time.monotonic() + timeout
    while metric(client, "test_scores_held") < requests:
        assert time.monotonic() < deadline, "the requests never reached the slow launcher's delay"
        time.sleep(0.02)
