"""POST /v1/edges and as_of through the app (in process): each bad write with its exact status and
code, writes that change scores, `as_of` giving back the past, and a restart replaying the log."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from bundle.edge_log import Entry, NodeRecord
from serve.app import create_app
from serve.bundle import load
from serve.dynamic import DynamicStore
from serve.graph import BlockCache
from serve.model import Model
from serve.runtime import warm_up
from serve.scoring import Scorer
from serve.settings import Settings
from tests.serve.conftest import TinyBundle

TOKEN = "write-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextmanager
def client_for(bundle: Path, **settings: Any) -> Iterator[TestClient]:
    app = create_app(Settings(bundle=bundle, warmup_runs=0, write_token=TOKEN, **settings))  # type: ignore[arg-type]
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            if app.state.runtime.status == "failed":
                break
            time.sleep(0.02)
        yield client


def probabilities(client: TestClient, ids: list[int], as_of: float | None = None) -> list[dict[str, float]]:
    body: dict[str, Any] = {"node_ids": ids} if as_of is None else {"node_ids": ids, "as_of": as_of}
    response = client.post("/v1/score", json=body)
    assert response.status_code == 200, response.text
    return [r["probabilities"] for r in response.json()["results"]]


def error(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def test_writes_are_disabled_without_a_log(gcn: TinyBundle) -> None:
    with client_for(gcn.path) as client:
        got = client.post("/v1/edges", json={"edges": [{"src": 0, "dst": 1}]}, headers=AUTH)
        assert error(got) == (404, "writes_disabled")
        assert client.get("/v1/graph").json()["writes_enabled"] is False
        # The bundle's edges count at every time: as_of changes nothing on a graph that does not grow.
        assert probabilities(client, [0, 5, 9], as_of=0.0) == probabilities(client, [0, 5, 9])


def test_bad_writes_each_get_their_status(gcn: TinyBundle, tmp_path: Path) -> None:
    log = tmp_path / "edges.log"
    with client_for(gcn.path, edge_log=log, edges_monotonic=True, edge_weight_min=-10.0, edge_weight_max=10.0,
                    max_write_items=4) as client:
        def post(body: dict[str, Any], headers: dict[str, str] = AUTH) -> tuple[int, str]:
            return error(client.post("/v1/edges", json=body, headers=headers))

        edge = {"src": 0, "dst": 1, "time": 100.0}
        assert post({"edges": [edge]}, {}) == (401, "unauthorized")
        assert post({"edges": [edge]}, {"Authorization": "Bearer wrong-token-abcdefgh"}) == (401, "unauthorized")
        assert post({"edges": [{"src": 0, "dst": 100_000}]}) == (404, "unknown_nodes")
        assert post({"nodes": [{"id": 3, "features": [0.0] * 8}]}) == (409, "node_exists")
        twice = {"id": 900, "features": [0.0] * 8}
        assert post({"nodes": [twice, twice]}) == (409, "node_exists")
        assert post({"nodes": [{"id": 901, "features": [0.0] * 7}]}) == (422, "invalid_features")
        assert post({"nodes": [{"id": 901, "features": [1e39] + [0.0] * 7}]}) == (422, "invalid_features")
        assert post({"edges": [{**edge, "weight": 10.5}]}) == (422, "weight_out_of_range")
        assert post({"edges": [{**edge, "time": -1.0}]}) == (422, "invalid_request")
        assert post({"edges": [edge] * 5}) == (413, "batch_too_large")
        assert post({}) == (422, "empty_batch")
        assert post({"edges": [{**edge, "src": "0"}]}) == (422, "invalid_request")
        nan = client.post("/v1/edges", content=b'{"edges": [{"src": 0, "dst": 1, "weight": NaN}]}',
                          headers={**AUTH, "Content-Type": "application/json"})
        assert error(nan) == (422, "invalid_request")
        assert client.post("/v1/edges", json={"edges": [edge]}, headers=AUTH).status_code == 200
        assert post({"edges": [{**edge, "time": 99.0}]}) == (409, "time_not_monotonic")
        graph = client.get("/v1/graph").json()
        assert (graph["sequence"], graph["logged_edges"], graph["added_nodes"]) == (1, 2, 0)  # undirected: 2
        assert graph["log_bytes"] == log.stat().st_size


def test_writes_change_scores_as_of_gives_back_the_past_and_a_restart_replays(gcn: TinyBundle,
                                                                              tmp_path: Path) -> None:
    log = tmp_path / "edges.log"
    ids = list(range(0, 300, 7))
    with client_for(gcn.path, edge_log=log) as client:
        before = probabilities(client, ids)
        new_node = {"id": 5000, "features": gcn.features[5].tolist()}
        first = client.post("/v1/edges", headers=AUTH, json={
            "nodes": [new_node], "edges": [{"src": 5000, "dst": i, "time": 10.0} for i in (0, 7, 14)]})
        assert first.status_code == 200, first.text
        body = first.json()
        assert (body["sequence"], body["accepted_nodes"], body["accepted_edges"]) == (1, 1, 6)
        assert body["invalidated_blocks"] > 0 and body["changed_rows"] > 0
        second = client.post("/v1/edges", headers=AUTH, json={"edges": [{"src": 21, "dst": 28, "time": 20.0}],
                                                               "undirected": False})
        assert second.json()["accepted_edges"] == 1
        after = probabilities(client, ids)
        assert after != before  # node 0's neighbourhood gained a node
        assert probabilities(client, ids, as_of=5.0) == before
        middle = probabilities(client, ids, as_of=15.0)
        assert middle != after or middle != before
        assert probabilities(client, ids, as_of=20.0) == after
        scored_new = client.post("/v1/score", json={"node_ids": [5000]})
        assert scored_new.status_code == 200
    with client_for(gcn.path, edge_log=log) as client:  # a restart replays the log: same graph, same scores
        assert probabilities(client, ids) == after
        assert probabilities(client, ids, as_of=15.0) == middle
        assert client.post("/v1/score", json={"node_ids": [5000]}).json() == scored_new.json()
        assert client.get("/v1/graph").json()["sequence"] == 2


def test_a_log_of_another_bundle_refuses_the_start(gcn: TinyBundle, gcn_seed1: TinyBundle, tmp_path: Path) -> None:
    log = tmp_path / "edges.log"
    with client_for(gcn.path, edge_log=log) as client:
        assert client.post("/v1/edges", headers=AUTH, json={"edges": [{"src": 1, "dst": 2}]}).status_code == 200
    with client_for(gcn_seed1.path, edge_log=log) as client:
        ready = client.get("/readyz").json()
        assert ready["status"] == "failed" and "belongs to bundle" in ready["reason"]


def test_settings_refuse_an_edge_log_without_a_token(gcn: TinyBundle, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="edge_log needs write_token"):
        Settings(bundle=gcn.path, edge_log=tmp_path / "edges.log")


def test_warm_up_draws_bundle_nodes_when_the_graph_has_grown(gcn: TinyBundle) -> None:
    # Regression: warm-up drew indices over the grown graph from the bundle's id array (IndexError at start).
    bundle = load(gcn.path)
    store = DynamicStore(bundle.graph, bundle.policy)
    store.apply(Entry(1, tuple(NodeRecord(10_000 + i, (0.0,) * 8) for i in range(3000)), ()))
    warm_up(Scorer(store, BlockCache(store, 1 << 30), Model(bundle, 1), 128), 20)
