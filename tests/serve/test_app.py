"""In-process app tests: readiness gating with a controllable loader, and the no-torch rule."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from fastapi.testclient import TestClient

from serve.app import create_app
from serve.errors import BundleError, ServeError, Unauthorized, response_for, status_of
from serve.runtime import Service, build
from serve.settings import Settings
from tests.serve.conftest import ROOT, TinyBundle


def test_not_ready_until_the_loader_finishes(gcn: TinyBundle) -> None:
    gate = threading.Event()

    def gated(settings: Settings) -> Service:
        gate.wait(timeout=30)
        return build(settings)

    app = create_app(Settings(bundle=gcn.path, warmup_runs=2), builder=gated)
    with TestClient(app) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json() == {"status": "loading", "reason": "loading the bundle"}
        assert client.get("/livez").status_code == 200
        early = client.post("/v1/score", json={"node_ids": [1]})
        assert early.status_code == 503 and early.json()["error"]["code"] == "not_ready"
        # The body is validated before the service is taken: a wrong body is 422 even now.
        wrong = client.post("/v1/score", json={"node_ids": [True]})
        assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "invalid_request"
        assert client.get("/v1/model").status_code == 503
        gate.set()
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.get("/readyz").json() == {"status": "ready", "reason": None}
        assert client.post("/v1/score", json={"node_ids": [1]}).status_code == 200


def never_built(settings: Settings) -> Service:
    raise RuntimeError("disk on fire")


def test_unexpected_loader_error_is_reported_not_raised(gcn: TinyBundle) -> None:
    with TestClient(create_app(Settings(bundle=gcn.path), builder=never_built)) as client:
        deadline = time.monotonic() + 10
        while client.get("/readyz").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.01)
        body = client.get("/readyz").json()
        assert body == {"status": "failed", "reason": "RuntimeError: disk on fire"}


def test_serve_never_imports_torch() -> None:
    code = ("import sys, serve.app, serve.__main__, serve.runtime; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'torch_geometric', 'distill')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_unexpected_errors_become_a_json_500_without_traceback(gcn: TinyBundle) -> None:
    app = create_app(Settings(bundle=gcn.path, warmup_runs=0))

    @app.get("/boom")
    async def boom() -> None:
        raise ZeroDivisionError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal_error", "message": "internal server error", "detail": None}}
    assert "secret" not in response.text and "Traceback" not in response.text


class CorruptBundle(BundleError):
    code = "bundle_corrupt"


class ExpiredToken(Unauthorized):
    pass


class Unmapped(ServeError):
    pass


def test_error_subclasses_map_like_their_nearest_listed_base() -> None:
    assert status_of(CorruptBundle("x")) == 503  # not 500: the map walks the MRO
    assert status_of(Unmapped("x")) == 500
    denied = response_for(ExpiredToken("token expired"))
    assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
    assert "www-authenticate" not in response_for(CorruptBundle("x")).headers


def test_an_error_subclass_raised_by_a_route_keeps_its_code(tmp_path: Path) -> None:
    app = create_app(Settings(bundle=tmp_path, warmup_runs=0), builder=never_built)

    @app.get("/corrupt")
    async def corrupt() -> None:
        raise CorruptBundle("graph/weights.npy is corrupt", {"file": "graph/weights.npy"})

    with TestClient(app) as client:
        response = client.get("/corrupt")
    assert response.status_code == 503
    assert response.json() == {"error": {"code": "bundle_corrupt", "message": "graph/weights.npy is corrupt",
                                         "detail": {"file": "graph/weights.npy"}}}
