"""kill -9 in the middle of graph writes: after a restart every acknowledged write is in the log
(counted, content compared) and every score equals a server's that never crashed and got the same
writes. Real `python -m serve` processes."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bundle.edge_log import Entry, decode, scan
from tests.serve.conftest import TinyBundle
from tests.serve.servers import RunningServer, Server

pytestmark = pytest.mark.slow
TOKEN = "write-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def write_until_dead(server: Server, me: int, acked: dict[int, dict[str, Any]]) -> None:
    rng = np.random.default_rng(me)
    with httpx.Client(base_url=server.url, timeout=10.0, headers=AUTH) as client:
        for k in range(100_000):
            body: dict[str, Any] = {"edges": [{"src": int(rng.integers(300)), "dst": int(rng.integers(300)),
                                               "time": time.time()}]}
            if k % 5 == 0:  # a new node (ids apart per writer), linked to an existing one
                new_id = 10**6 * (me + 1) + k
                body["nodes"] = [{"id": new_id, "features": rng.normal(size=8).tolist()}]
                body["edges"].append({"src": new_id, "dst": int(rng.integers(300)), "time": time.time()})
            try:
                response = client.post("/v1/edges", json=body)
            except httpx.TransportError:
                return
            assert response.status_code == 200, response.text
            acked[response.json()["sequence"]] = body


def logged_pairs(entry: Entry) -> list[tuple[Any, Any, float]]:
    return sorted((e.src, e.dst, e.time) for e in entry.edges)


def sent_pairs(body: dict[str, Any]) -> list[tuple[Any, Any, float]]:
    pairs = [(e["src"], e["dst"], e["time"]) for e in body["edges"]]
    return sorted(pairs + [(d, s, t) for s, d, t in pairs if s != d])


def scores(server: Server, ids: list[int]) -> np.ndarray:
    with server.client() as client:
        rows = []
        for start in range(0, len(ids), 64):
            response = client.post("/v1/score", json={"node_ids": ids[start:start + 64]})
            assert response.status_code == 200, response.text
            rows += [list(r["probabilities"].values()) for r in response.json()["results"]]
    return np.array(rows)


def test_kill_9_loses_no_acknowledged_write(gcn: TinyBundle, running_server: RunningServer, tmp_path: Path) -> None:
    log = tmp_path / "edges.log"
    env = {"SERVE_EDGE_LOG": str(log), "SERVE_WRITE_TOKEN": TOKEN, "SERVE_WARMUP_RUNS": "2"}
    server = running_server(gcn.path, **env)
    acked: dict[int, dict[str, Any]] = {}
    threads = [threading.Thread(target=write_until_dead, args=(server, i, acked)) for i in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(server.process.pid, signal.SIGKILL)
    for t in threads:
        t.join()
    acknowledged = dict(acked)
    assert len(acknowledged) >= 40

    restarted = running_server(gcn.path, **env)
    entries = {e.seq: e for e in map(decode, scan(log.read_bytes(), log).payloads)}
    found = [seq for seq, body in acknowledged.items()
             if seq in entries and logged_pairs(entries[seq]) == sent_pairs(body)
             and [n.id for n in entries[seq].nodes] == [n["id"] for n in body.get("nodes", [])]]
    assert len(found) == len(acknowledged)
    assert sorted(entries) == list(range(1, len(entries) + 1))
    with restarted.client() as client:
        assert client.get("/v1/graph").json()["sequence"] == len(entries)

    reference = running_server(gcn.path, **{**env, "SERVE_EDGE_LOG": str(tmp_path / "reference.log")})
    with httpx.Client(base_url=reference.url, timeout=10.0, headers=AUTH) as client:
        for seq in sorted(entries):
            body = {"nodes": [{"id": n.id, "features": list(n.features)} for n in entries[seq].nodes],
                    "edges": [{"src": e.src, "dst": e.dst, "time": e.time} for e in entries[seq].edges],
                    "undirected": False}
            assert client.post("/v1/edges", json=body).status_code == 200
    ids = list(range(300)) + [n.id for seq in sorted(entries) for n in entries[seq].nodes]
    np.testing.assert_array_equal(scores(restarted, ids), scores(reference, ids))
