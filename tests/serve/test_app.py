"""In-process app tests: readiness gating with a controllable loader, and the no-torch rule."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from fastapi.testclient import TestClient

from serve.app import create_app
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
        assert client.get("/v1/model").status_code == 503
        gate.set()
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.get("/readyz").json() == {"status": "ready", "reason": None}
        assert client.post("/v1/score", json={"node_ids": [1]}).status_code == 200


def test_unexpected_loader_error_is_reported_not_raised(gcn: TinyBundle) -> None:
    def broken(settings: Settings) -> Service:
        raise RuntimeError("disk on fire")

    with TestClient(create_app(Settings(bundle=gcn.path), builder=broken)) as client:
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
