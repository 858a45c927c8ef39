"""The real service: `python -m serve` in a subprocess, spoken to over HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.serve.conftest import TinyBundle
from tests.serve.reference import new_node_logits, softmax
from tests.serve.servers import RunningServer, Server, wait_ready
from tests.serve.test_reload import TOKEN
from tests.tamper import copy_bundle, flip_last_byte, tamper

pytestmark = pytest.mark.slow  # real `python -m serve` processes

TOL = 1e-4
CLASSES = ["legit", "suspicious", "fraud"]


def probabilities(result: dict) -> list[float]:
    return [result["probabilities"][c] for c in CLASSES]


def test_scores_equal_the_torch_student(server: Server, gcn: TinyBundle) -> None:
    ids = [0, 1, 2, 150, 299, 42, 42, 7]
    with server.client() as client:
        response = client.post("/v1/score", json={"node_ids": ids})
    assert response.status_code == 200
    body = response.json()
    version = json.loads((gcn.path / "manifest.json").read_text())["version"]
    assert body["model_version"] == version
    expected = softmax(gcn.logits[ids])
    for i, result in zip(ids, body["results"], strict=True):
        assert (result["kind"], result["node_id"], result["model_version"]) == ("existing", i, version)
        np.testing.assert_allclose(probabilities(result), expected[ids.index(i)], atol=TOL, rtol=0)
        assert result["label"] == CLASSES[int(gcn.logits[i].argmax())]
        assert result["label_index"] == int(gcn.logits[i].argmax())


def test_every_node_over_http(server: Server, gcn: TinyBundle) -> None:
    got = []
    with server.client() as client:
        for start in range(0, 300, 16):
            batch = list(range(start, min(start + 16, 300)))
            got += [probabilities(r) for r in client.post("/v1/score", json={"node_ids": batch}).json()["results"]]
    np.testing.assert_allclose(np.array(got), softmax(gcn.logits), atol=TOL, rtol=0)


def test_new_nodes_equal_the_torch_reference(server: Server, gcn: TinyBundle) -> None:
    nodes = [
        {"features": [0.5, -1.0, 2.0, 0.0, 0.1, 0.2, 0.3, 0.4], "neighbors": [3, 9, 27]},
        {"features": gcn.features[5].tolist(), "neighbors": list(range(40, 60))},  # pruned to fanout
        {"features": [1.0] * 8},  # no neighbours
    ]
    with server.client() as client:
        body = client.post("/v1/score", json={"node_ids": [8], "new_nodes": nodes}).json()
    assert [r["kind"] for r in body["results"]] == ["existing", "new", "new", "new"]
    assert [r["new_node_index"] for r in body["results"]] == [None, 0, 1, 2]
    np.testing.assert_allclose(probabilities(body["results"][0]), softmax(gcn.logits[8]), atol=TOL, rtol=0)
    for node, result in zip(nodes, body["results"][1:], strict=True):
        expected = softmax(new_node_logits(gcn, node["features"], node.get("neighbors", [])))
        np.testing.assert_allclose(probabilities(result), expected, atol=TOL, rtol=0)


def test_model_summary(server: Server, gcn: TinyBundle) -> None:
    with server.client() as client:
        info = client.get("/v1/model").json()
    manifest = json.loads((gcn.path / "manifest.json").read_text())
    assert info["version"] == manifest["version"]
    assert info["dataset"]["class_names"] == CLASSES
    assert info["policy"] == manifest["policy"]
    assert info["student"]["student"] == "gcn"
    assert info["metrics"]["distilled"]["accuracy"] == manifest["metrics"]["distilled"]["accuracy"]
    assert info["cache"]["entries"] == 300


F = 8
OK_FEATURES = "[" + ",".join(["0.5"] * F) + "]"


def chunks(data: bytes) -> Iterator[bytes]:
    """A generator body: httpx sends it chunked, without Content-Length."""
    for i in range(0, len(data), 1000):
        yield data[i:i + 1000]


BAD_INPUTS = [
    # (id, method, path, body, status, error code)
    ("unknown-node", "POST", "/v1/score", '{"node_ids": [1, 300, 12345]}', 404, "unknown_nodes"),
    ("negative-node", "POST", "/v1/score", '{"node_ids": [-1]}', 404, "unknown_nodes"),
    ("empty-list", "POST", "/v1/score", '{"node_ids": []}', 422, "empty_batch"),
    ("empty-object", "POST", "/v1/score", "{}", 422, "empty_batch"),
    ("batch-over-max", "POST", "/v1/score", json.dumps({"node_ids": list(range(17))}), 413, "batch_too_large"),
    ("batch-over-max-mixed", "POST", "/v1/score",
     json.dumps({"node_ids": list(range(16)), "new_nodes": [{"features": [0.0] * F}]}), 413, "batch_too_large"),
    ("short-features", "POST", "/v1/score", '{"new_nodes": [{"features": [1.0, 2.0]}]}', 422, "invalid_features"),
    ("long-features", "POST", "/v1/score", json.dumps({"new_nodes": [{"features": [1.0] * 9}]}), 422,
     "invalid_features"),
    ("no-features", "POST", "/v1/score", '{"new_nodes": [{"features": []}]}', 422, "invalid_request"),
    ("nan-literal", "POST", "/v1/score", '{"new_nodes": [{"features": [NaN' + ",0" * (F - 1) + "]}]}", 422,
     "invalid_request"),
    ("infinity-literal", "POST", "/v1/score", '{"new_nodes": [{"features": [-Infinity' + ",0" * (F - 1) + "]}]}",
     422, "invalid_request"),
    ("float32-overflow", "POST", "/v1/score", '{"new_nodes": [{"features": [1e39' + ",0" * (F - 1) + "]}]}", 422,
     "invalid_features"),
    ("unknown-neighbour", "POST", "/v1/score", '{"new_nodes": [{"features": ' + OK_FEATURES
     + ', "neighbors": [1, 999]}]}', 404, "unknown_neighbors"),
    ("string-feature", "POST", "/v1/score", '{"new_nodes": [{"features": ["a"' + ",0" * (F - 1) + "]}]}", 422,
     "invalid_request"),
    ("malformed-json", "POST", "/v1/score", '{"node_ids": [1,', 422, "malformed_json"),
    ("not-an-object", "POST", "/v1/score", "[1, 2]", 422, "invalid_request"),
    ("bool-id", "POST", "/v1/score", '{"node_ids": [true]}', 422, "invalid_request"),
    ("float-id", "POST", "/v1/score", '{"node_ids": [1.5]}', 422, "invalid_request"),
    ("string-id", "POST", "/v1/score", '{"node_ids": ["1"]}', 422, "invalid_request"),
    ("huge-id", "POST", "/v1/score", '{"node_ids": [99999999999999999999999]}', 422, "invalid_request"),
    ("extra-key", "POST", "/v1/score", '{"node_ids": [1], "nodes": [2]}', 422, "invalid_request"),
    ("extra-key-new-node", "POST", "/v1/score", '{"new_nodes": [{"features": ' + OK_FEATURES + ', "x": 1}]}',
     422, "invalid_request"),
    ("body-over-cap", "POST", "/v1/score", json.dumps({"node_ids": [1] * 3000}), 413, "body_too_large"),
    ("chunked-body-over-cap", "POST", "/v1/score", chunks(json.dumps({"node_ids": [1] * 3000}).encode()), 413,
     "body_too_large"),
    ("wrong-method", "GET", "/v1/score", None, 405, "http_405"),
    ("unknown-path", "GET", "/v1/nope", None, 404, "http_404"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), [case[1:] for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_gets_a_clear_4xx(server: Server, method: str, path: str, body: object, status: int,
                                    code: str) -> None:
    with server.client() as client:
        response = client.request(method, path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"] and "Traceback" not in response.text


def test_bad_inputs_never_reached_the_catch_all(server: Server) -> None:
    test_bad_input_gets_a_clear_4xx(server, *BAD_INPUTS[0][1:])
    with server.client() as client:
        text = client.get("/metrics").text
    assert 'status="500"' not in text


def test_metrics_expose_histograms_counts_and_cache(server: Server) -> None:
    with server.client() as client:
        for i in range(5):
            assert client.post("/v1/score", json={"node_ids": [i]}).status_code == 200
        text = client.get("/metrics").text
    for stage in ("cache", "inference", "total"):
        assert f'serve_score_stage_seconds_bucket{{le="0.0001",stage="{stage}"}}' in text
        assert f'serve_score_stage_seconds_bucket{{le="0.01",stage="{stage}"}}' in text
    assert 'serve_request_seconds_bucket{endpoint="/v1/score",le="0.001"}' in text
    assert 'serve_requests_total{endpoint="/v1/score",method="POST",status="200"}' in text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values["serve_cache_entries"] == 300
    assert values["serve_cache_hits_total"] >= 5 and values["serve_cache_hit_ratio"] == 1.0
    assert values['serve_score_stage_seconds_count{stage="total"}'] >= 5


def test_openapi_documents_the_endpoints(server: Server) -> None:
    with server.client() as client:
        spec = client.get("/openapi.json").json()
    assert {"/v1/score", "/v1/model", "/livez", "/readyz", "/metrics"} <= set(spec["paths"])
    assert {"404", "413", "422", "503"} <= set(spec["paths"]["/v1/score"]["post"]["responses"])


@pytest.fixture
def tampered(gcn: TinyBundle, tmp_path: Path) -> Path:
    return tamper(copy_bundle(gcn.path, tmp_path / "bundle"), "graph/weights.npy", flip_last_byte)


def test_tampered_bundle_never_becomes_ready(tampered: Path, running_server: RunningServer) -> None:
    # The opt-in to stay up unready; by default the process exits 4 (tests/serve/test_startup.py).
    srv = running_server(tampered, ready=False, SERVE_WAIT_FOR_BUNDLE="true", SERVE_ADMIN_TOKEN=TOKEN)
    deadline, seen = time.monotonic() + 30, []
    while time.monotonic() < deadline:
        response = httpx.get(f"{srv.url}/readyz")
        seen.append(response.status_code)
        if response.json()["status"] == "failed":
            break
        time.sleep(0.05)
    assert set(seen) == {503}
    assert "graph/weights.npy: sha256" in response.json()["reason"]
    time.sleep(0.5)  # and it stays that way
    assert httpx.get(f"{srv.url}/readyz").status_code == 503
    assert httpx.get(f"{srv.url}/livez").status_code == 200
    score = httpx.post(f"{srv.url}/v1/score", json={"node_ids": [1]})
    assert score.status_code == 503 and score.json()["error"]["code"] == "not_ready"
    assert srv.process.poll() is None


def test_readiness_goes_from_503_to_200(gcn: TinyBundle, running_server: RunningServer) -> None:
    # Many warm-up runs keep the loader busy long enough to observe "loading" over real HTTP;
    # tests/serve/test_app.py proves the transition deterministically with a gated loader.
    srv = running_server(gcn.path, ready=False, SERVE_WARMUP_RUNS="3000")
    seen = wait_ready(srv)
    assert seen[0] == 503 and seen[-1] == 200
