"""The in-flight cap and trailers under the attacks a review found (answered-before-body requests,
clients that leave mid-request, chunked trailers), against a real `python -m serve` over raw
sockets. Socket helpers and the limits come from tests/serve/test_limits.py."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator

import pytest

from tests.serve.conftest import TinyBundle
from tests.serve.servers import RunningServer, Server, metric, serving, wait_held
from tests.serve.test_limits import LIMITS, closed_within, connect, get, livez_answers, read_response


@pytest.fixture(scope="module")
def limited(gcn: TinyBundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(gcn.path, tmp_path_factory.mktemp("limited"), **LIMITS) as srv:
        yield srv

OVERSIZE_POST = (b"POST /v1/score HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 2000000\r\n\r\n{\"node_ids\": [")  # over SERVE_MAX_BODY_BYTES: 413 at once


def score_request(node: int) -> bytes:
    body = json.dumps({"node_ids": [node]}).encode()
    return (b"POST /v1/score HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


def statuses_of_concurrent_scores(server: Server, n: int) -> list[int]:
    """`n` /v1/score requests sent at once, each on its own connection -> their statuses, sorted."""
    socks = [connect(server, timeout=30) for _ in range(n)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(score_request(i + 1))
        return sorted(read_response(sock, timeout=30)[0] for sock in socks)
    finally:
        for sock in socks:
            sock.close()


def test_requests_answered_before_their_body_ends_do_not_lift_the_in_flight_cap(
        gcn: TinyBundle, running_server: RunningServer) -> None:
    # The finding: each request answered (413) while its body was still arriving lowered the count of requests
    # in progress by one until its body ended; 10 of them let 6 of 6 slow requests in past a cap of 2.
    server = running_server(gcn.path, slow_ms=1500, SERVE_MAX_IN_FLIGHT="2", SERVE_MAX_CONNECTIONS="64",
                            SERVE_BODY_TIMEOUT_SECONDS="30", SERVE_WARMUP_RUNS="5")
    early = [connect(server) for _ in range(6)]
    try:
        for sock in early:
            sock.sendall(OVERSIZE_POST)
        assert [read_response(sock)[0] for sock in early] == [413] * 6  # bodies still owed: connections open
        assert statuses_of_concurrent_scores(server, 4) == [200, 200, 503, 503]
    finally:
        for sock in early:
            sock.close()
    assert statuses_of_concurrent_scores(server, 2) == [200, 200]  # and no count leaked when they closed


def test_a_request_whose_client_left_holds_its_slot_until_the_handler_ends(
        gcn: TinyBundle, running_server: RunningServer) -> None:
    # The finding: a disconnect freed the request's slot while its handler went on scoring; 20 "send, then
    # close" requests left 20 handlers running against a cap of 2.
    server = running_server(gcn.path, slow_ms=2500, SERVE_MAX_IN_FLIGHT="2", SERVE_WARMUP_RUNS="5")
    with server.client() as client:
        gone = [connect(server) for _ in range(2)]
        for i, sock in enumerate(gone):
            sock.sendall(score_request(i + 1))
        wait_held(client, 2)
        for sock in gone:
            sock.close()
        time.sleep(0.3)  # the server sees both disconnects; the handlers sleep on
        assert metric(client, "serve_requests_in_flight") == 3  # (this scrape included)
        response = client.post("/v1/score", json={"node_ids": [3]})
        assert response.status_code == 503 and response.json()["error"]["code"] == "overloaded"
        deadline = time.monotonic() + 20
        while metric(client, "serve_requests_in_flight") > 1:  # the abandoned handlers end...
            assert time.monotonic() < deadline, "the abandoned handlers never ended"
            time.sleep(0.05)
        assert client.post("/v1/score", json={"node_ids": [3]}).status_code == 200  # ... and free their slots


def test_a_connection_answered_before_its_body_ended_can_be_evicted(
        gcn: TinyBundle, running_server: RunningServer) -> None:
    # Answered (413) while the body trickles: nothing is left in progress, so the connection cap may close it
    # for a newcomer (it used to count as busy, and 4 of them made every new connection a 503).
    server = running_server(gcn.path, SERVE_MAX_CONNECTIONS="4", SERVE_BODY_TIMEOUT_SECONDS="30",
                            SERVE_WARMUP_RUNS="5")
    early = [connect(server) for _ in range(4)]
    try:
        for sock in early:
            sock.sendall(OVERSIZE_POST)
            assert read_response(sock)[0] == 413
        with connect(server) as sock:
            sock.sendall(get("/livez"))
            assert read_response(sock)[0] == 200
        assert closed_within(early[0], 1.0)  # the oldest idle one made room
        assert not closed_within(early[-1], 0.1)
    finally:
        for sock in early:
            sock.close()


CHUNKED_SCORE_HEAD = (b"POST /v1/score HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n")


def readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def test_chunked_trailers_over_the_head_limit_get_431(limited: Server) -> None:
    # The finding: after the last chunk, trailer lines were fed to the parser uncounted; an 87 MiB trailer was
    # held in memory and answered 200. Now they share max_header_bytes (4096 here) with the head.
    with connect(limited) as sock:
        sock.sendall(CHUNKED_SCORE_HEAD + b"14\r\n{\"node_ids\": [1, 2]}\r\n0\r\n")
        time.sleep(0.2)  # (the trailers are counted from the read after the one that ends the chunks)
        pieces = [b"X-Trailer: " + b"a" * 2000] + [b"a" * 2000] * 3
        for piece in pieces:  # 8 KB of one trailer line, a read at a time, until the server answers
            if readable(sock):
                break
            sock.sendall(piece)
            time.sleep(0.05)
        else:
            sock.sendall(b"\r\n\r\n")  # (no cap: the request ends and is served)
        status, headers, body = read_response(sock)
        assert status == 431 and headers["connection"] == "close"
        assert json.loads(body)["error"]["code"] == "header_too_large"
        assert closed_within(sock, 1.0)
    livez_answers(limited)


def test_chunked_bodies_with_small_trailers_are_served(limited: Server) -> None:
    # Not counted as trailers: the data of a chunk that begins a read (6 KB, over the 4096-byte cap) after the
    # read that carried its size line. Counted, and under the cap: a small trailer.
    body = b'{"node_ids": [1, 2]' + b" " * 6000 + b"}"
    with connect(limited) as sock:
        sock.sendall(CHUNKED_SCORE_HEAD + b"%x\r\n" % len(body))
        time.sleep(0.1)
        sock.sendall(body + b"\r\n0\r\n")
        time.sleep(0.1)
        sock.sendall(b"X-Checksum: 1\r\n\r\n")
        status, _, answer = read_response(sock)
        assert status == 200 and len(json.loads(answer)["results"]) == 2
