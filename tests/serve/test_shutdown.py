"""Graceful shutdown of a real `python -m serve`: drain, finish in-flight requests, exit 0."""

from __future__ import annotations

import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import pytest

from tests.serve.conftest import TinyBundle
from tests.serve.servers import RunningServer, Server, wait_held

pytestmark = pytest.mark.slow  # real `python -m serve` processes

EXIT_WITHIN = 30.0  # seconds: generous for a loaded 2-core machine; this is a bound, not a speed test


def slow_score(pool: ThreadPoolExecutor, server: Server) -> Future[httpx.Response]:
    """A score request held by the slow test launcher (`running_server(..., slow_ms=)`), once it is in flight."""
    client = httpx.Client(base_url=server.url, timeout=60.0)
    pending = pool.submit(client.post, "/v1/score", json={"node_ids": [1, 2]})
    pending.add_done_callback(lambda _: client.close())
    with server.client() as probe:
        wait_held(probe, 1)
    return pending


def not_a_success(pending: Future[httpx.Response]) -> bool:
    """The request failed visibly: a 5xx, or the connection closed without a response."""
    try:
        return pending.result(timeout=EXIT_WITHIN).status_code >= 500
    except httpx.TransportError:
        return True


def readiness_until_refused(server: Server) -> list[int | str]:
    """Poll /readyz after the signal -> the statuses seen, ending with "refused" once the listener closes.
    A poll accepted just before the close is reset rather than refused (seen on a loaded machine):
    the listener is gone either way."""
    seen: list[int | str] = []
    deadline = time.monotonic() + EXIT_WITHIN
    while time.monotonic() < deadline:
        try:
            seen.append(httpx.get(f"{server.url}/readyz", timeout=5.0).status_code)
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
            return [*seen, "refused"]
        time.sleep(0.02)
    raise AssertionError(f"listener still open after {EXIT_WITHIN}s: {seen[-5:]}")


def wait_first_signal_seen(server: Server) -> None:
    """Return once /readyz says draining, or the listener is already closed (SERVE_DRAIN_SECONDS=0 closes it fast)."""
    deadline = time.monotonic() + EXIT_WITHIN
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{server.url}/readyz", timeout=5.0).json()["status"] == "draining":
                return
        except httpx.TransportError:
            return
        time.sleep(0.02)
    raise AssertionError(f"no sign of the first signal after {EXIT_WITHIN}s")


def test_sigterm_drains_finishes_the_in_flight_request_and_exits_0(gcn: TinyBundle,
                                                                   running_server: RunningServer) -> None:
    srv = running_server(gcn.path, slow_ms=4000, SERVE_WARMUP_RUNS="2", SERVE_DRAIN_SECONDS="1")
    with ThreadPoolExecutor(1) as pool:
        pending = slow_score(pool, srv)
        srv.process.send_signal(signal.SIGTERM)
        body = httpx.get(f"{srv.url}/readyz", timeout=5.0)
        seen = readiness_until_refused(srv)
        response = pending.result(timeout=EXIT_WITHIN)
    # /readyz was 503 draining from the first poll after the signal until the listener closed.
    assert body.status_code == 503 and body.json()["status"] == "draining"
    assert set(seen[:-1]) == {503} and seen[-1] == "refused"
    assert response.status_code == 200 and len(response.json()["results"]) == 2
    assert srv.process.wait(timeout=EXIT_WITHIN) == 0
    assert "Traceback" not in srv.log.read_text()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_idle_server_exits_0_on_a_signal(gcn: TinyBundle, running_server: RunningServer, sig: signal.Signals) -> None:
    srv = running_server(gcn.path, SERVE_WARMUP_RUNS="0")
    srv.process.send_signal(sig)
    assert srv.process.wait(timeout=EXIT_WITHIN) == 0


def test_graceful_timeout_bounds_the_wait_for_a_stuck_request(gcn: TinyBundle, running_server: RunningServer) -> None:
    # The request would take 60 s; SERVE_GRACEFUL_TIMEOUT_SECONDS=1 lets uvicorn cancel it and exit.
    srv = running_server(gcn.path, slow_ms=60_000, SERVE_WARMUP_RUNS="0", SERVE_GRACEFUL_TIMEOUT_SECONDS="1")
    with ThreadPoolExecutor(1) as pool:
        pending = slow_score(pool, srv)
        srv.process.send_signal(signal.SIGTERM)
        assert srv.process.wait(timeout=EXIT_WITHIN) == 0
        assert not_a_success(pending)  # uvicorn answers the cancelled request 500: never a fake 200
    assert "graceful shutdown exceeded" in srv.log.read_text()


def test_second_sigint_forces_the_exit(gcn: TinyBundle, running_server: RunningServer) -> None:
    # uvicorn's own rule, kept: a second Ctrl+C stops waiting for requests (and exits by the signal).
    # The graceful timeout is far beyond EXIT_WITHIN, so only forcing can pass this test.
    srv = running_server(gcn.path, slow_ms=60_000, SERVE_WARMUP_RUNS="0", SERVE_DRAIN_SECONDS="0",
                         SERVE_GRACEFUL_TIMEOUT_SECONDS="300")
    with ThreadPoolExecutor(1) as pool:
        pending = slow_score(pool, srv)
        srv.process.send_signal(signal.SIGINT)
        wait_first_signal_seen(srv)
        srv.process.send_signal(signal.SIGINT)
        assert srv.process.wait(timeout=EXIT_WITHIN) != 0
        assert not_a_success(pending)
