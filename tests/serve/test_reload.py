"""POST /admin/reload on a real `python -m serve`: auth, refusals that keep the old model, swaps."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.serve.conftest import TinyBundle
from tests.serve.reference import softmax
from tests.serve.servers import RunningServer, Server, metric, serving, wait_held
from tests.tamper import copy_bundle, flip_last_byte, tamper

pytestmark = pytest.mark.slow  # real `python -m serve` processes

TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
IDS = [0, 1, 2, 42, 150, 299]
TOL = 1e-4


def version_of(bundle: Path) -> str:
    return str(json.loads((bundle / "manifest.json").read_text())["version"])


def scores(client: httpx.Client) -> dict[str, Any]:
    response = client.post("/v1/score", json={"node_ids": IDS})
    assert response.status_code == 200, response.text
    return dict(response.json())


def reload(client: httpx.Client, bundle: Path | str, headers: dict[str, str] | None = AUTH) -> httpx.Response:
    return client.post("/admin/reload", json={"bundle": str(bundle)}, headers=headers, timeout=60.0)


@pytest.fixture(scope="module")
def admin(gcn: TinyBundle, gcn_seed1: TinyBundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The gcn bundle served with an admin token. Every test leaves it serving `gcn` again."""
    # Reload roots: the pytest run's base temp dir (the shared tiny bundles and each test's tmp_path).
    roots = json.dumps([str(gcn.path.parents[1])])
    with serving(gcn.path, tmp_path_factory.mktemp("admin"), SERVE_ADMIN_TOKEN=TOKEN, SERVE_WARMUP_RUNS="5",
                 SERVE_RELOAD_ROOTS=roots) as srv:
        yield srv


@pytest.mark.parametrize("headers", [None, {"Authorization": "Bearer wrong-token-0123456789"},
                                     {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"},
                                     {"Authorization": f"Bearer {TOKEN}x"}],
                         ids=["missing", "wrong", "not-bearer", "empty", "token-prefix"])
def test_reload_without_the_right_token_is_401(admin: Server, gcn: TinyBundle, gcn_seed1: TinyBundle,
                                               headers: dict[str, str] | None) -> None:
    with admin.client() as client:
        response = reload(client, gcn_seed1.path, headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["code"] == "unauthorized"
        assert TOKEN not in response.text
        assert client.get("/v1/model").json()["version"] == version_of(gcn.path)


def test_token_is_checked_before_the_body(admin: Server) -> None:
    with admin.client() as client:
        response = client.post("/admin/reload", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 401  # not 422: an unauthenticated caller learns nothing about the body


@pytest.mark.parametrize(("body", "code"), [(b"{not json", "malformed_json"), (b'{"bundle": ""}', "invalid_request"),
                                            (b'{"bundle": "/x", "extra": 1}', "invalid_request"),
                                            (b'{"bundle": 7}', "invalid_request")])
def test_bad_reload_body_is_422(admin: Server, body: bytes, code: str) -> None:
    with admin.client() as client:
        response = client.post("/admin/reload", content=body, headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 422 and response.json()["error"]["code"] == code


def test_tampered_bundle_is_rejected_and_the_old_model_keeps_serving(admin: Server, gcn: TinyBundle,
                                                                     gcn_seed1: TinyBundle, tmp_path: Path) -> None:
    # A different model's bundle, so that a wrongly accepted reload would show in the scores.
    bad = tamper(copy_bundle(gcn_seed1.path, tmp_path / "tampered"), "graph/weights.npy", flip_last_byte)
    with admin.client() as client:
        before, failures = scores(client), metric(client, 'serve_reloads_total{result="failure"}')
        response = reload(client, bad)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "bundle_rejected"
        assert error["detail"]["file"] == "graph/weights.npy"
        assert error["detail"]["bundle"] == str(bad)
        assert "graph/weights.npy: sha256" in error["message"]
        assert scores(client) == before  # same version, bit-identical probabilities
        assert before["model_version"] == version_of(gcn.path)
        assert client.get("/v1/model").json()["version"] == version_of(gcn.path)
        assert client.get("/readyz").status_code == 200
        assert metric(client, 'serve_reloads_total{result="failure"}') == failures + 1
        assert metric(client, f'serve_model_info{{version="{version_of(gcn.path)}"}}') == 1


@pytest.mark.parametrize("name", ["nowhere", "a" * 300])  # 300: over the OS limit for one path component
def test_missing_bundle_directory_is_422_bundle_not_found(admin: Server, gcn: TinyBundle, tmp_path: Path,
                                                          name: str) -> None:
    with admin.client() as client:
        response = reload(client, tmp_path / name)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "bundle_not_found"
        assert client.get("/v1/model").json()["version"] == version_of(gcn.path)


def test_reload_switches_model_version_and_scores(admin: Server, gcn: TinyBundle, gcn_seed1: TinyBundle) -> None:
    old, new = version_of(gcn.path), version_of(gcn_seed1.path)
    assert old != new
    with admin.client() as client:
        successes = metric(client, 'serve_reloads_total{result="success"}')
        response = reload(client, gcn_seed1.path)
        assert response.status_code == 200, response.text
        assert response.json() | {"seconds": 0} == {"status": "reloaded", "version": new, "previous_version": old,
                                                     "bundle": str(gcn_seed1.path), "seconds": 0}
        body = scores(client)
        assert body["model_version"] == new and {r["model_version"] for r in body["results"]} == {new}
        probs = [[r["probabilities"][c] for c in ("legit", "suspicious", "fraud")] for r in body["results"]]
        np.testing.assert_allclose(probs, softmax(gcn_seed1.logits[IDS]), atol=TOL, rtol=0)
        assert client.get("/v1/model").json()["version"] == new
        assert metric(client, 'serve_reloads_total{result="success"}') == successes + 1
        assert metric(client, f'serve_model_info{{version="{new}"}}') == 1
        assert metric(client, f'serve_model_info{{version="{old}"}}') == 0  # the old label is gone
        # ... and back, so the module's server serves `gcn` again.
        assert reload(client, gcn.path).json()["version"] == old
        assert scores(client)["model_version"] == old


def test_without_a_token_the_endpoint_does_not_exist(server: Server) -> None:
    with server.client() as client:
        response = client.post("/admin/reload", json={"bundle": "/tmp"}, headers=AUTH)
        unknown = client.post("/admin/nothing-here", json={"bundle": "/tmp"}, headers=AUTH)
        spec = client.get("/openapi.json").json()
    assert response.status_code == 404
    assert response.json() == unknown.json()  # indistinguishable from any unknown path
    assert "/admin/reload" not in spec["paths"]


def test_in_flight_request_finishes_on_the_model_it_started_with(gcn: TinyBundle, gcn_seed1: TinyBundle,
                                                                 running_server: RunningServer) -> None:
    # The test launcher holds every score 1.5 s after it took the model: the reload happens meanwhile.
    srv = running_server(gcn.path, slow_ms=1500, SERVE_ADMIN_TOKEN=TOKEN, SERVE_WARMUP_RUNS="2")
    with httpx.Client(base_url=srv.url, timeout=30.0) as slow, srv.client() as client:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(slow.post, "/v1/score", json={"node_ids": [1]})
            wait_held(client, 1)
            assert reload(client, gcn_seed1.path).status_code == 200
            response = pending.result(timeout=30)
        assert response.status_code == 200
        assert response.json()["model_version"] == version_of(gcn.path)
        assert client.post("/v1/score", json={"node_ids": [1]}).json()["model_version"] == version_of(
            gcn_seed1.path)


def test_openapi_documents_the_admin_endpoint(admin: Server) -> None:
    with admin.client() as client:
        spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/admin/reload"]["post"]
    assert operation["security"] == [{"HTTPBearer": []}]
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "bundle" in operation["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"200", "401", "409", "422", "503"} <= set(operation["responses"])
