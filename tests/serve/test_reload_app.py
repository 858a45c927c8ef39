"""Hot reload in-process, with builders the test controls: what only exact timing can show."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from serve.app import create_app
from serve.runtime import Runtime, Service, build
from serve.settings import Settings
from tests.serve.conftest import ROOT, TinyBundle
from tests.serve.test_reload import AUTH, TOKEN, version_of
from tests.tamper import copy_bundle, flip_last_byte, tamper


class Gate:
    """A builder that blocks every build after the first `free` ones until opened."""

    def __init__(self, free: int) -> None:
        self.free, self.entered, self.open = free, threading.Event(), threading.Event()

    def __call__(self, settings: Settings) -> Service:
        if self.free:
            self.free -= 1
        else:
            self.entered.set()
            assert self.open.wait(timeout=30)
        return build(settings)


def app_for(bundle: Path, builder: Callable[[Settings], Service] = build, **overrides: object) -> TestClient:
    # Reloads may read anywhere in this pytest run's base temp dir: the session's tiny bundles and
    # each test's tmp_path copies both live there.
    settings = Settings(bundle=bundle, admin_token=TOKEN, warmup_runs=0,  # type: ignore[arg-type]
                        reload_roots=[bundle.parents[1]], **overrides)
    return TestClient(create_app(settings, builder=builder))


def wait_status(client: TestClient, status: str) -> None:
    deadline = time.monotonic() + 30
    while client.get("/readyz").json()["status"] != status:
        assert time.monotonic() < deadline, f"never {status}"
        time.sleep(0.01)


def test_second_reload_is_409_while_scoring_goes_on(gcn: TinyBundle, gcn_seed1: TinyBundle) -> None:
    gate = Gate(free=1)
    with app_for(gcn.path, gate) as client, ThreadPoolExecutor(1) as pool:
        wait_status(client, "ready")
        first = pool.submit(client.post, "/admin/reload", json={"bundle": str(gcn_seed1.path)}, headers=AUTH)
        assert gate.entered.wait(timeout=30)
        # The first reload is stuck in its worker thread: the event loop still answers, on the old model.
        second = client.post("/admin/reload", json={"bundle": str(gcn_seed1.path)}, headers=AUTH)
        assert second.status_code == 409 and second.json()["error"]["code"] == "reload_in_progress"
        score = client.post("/v1/score", json={"node_ids": [1]})
        assert score.status_code == 200 and score.json()["model_version"] == version_of(gcn.path)
        assert client.get("/readyz").status_code == 200
        gate.open.set()
        assert first.result(timeout=30).json()["version"] == version_of(gcn_seed1.path)
        assert client.post("/v1/score", json={"node_ids": [1]}).json()["model_version"] == version_of(gcn_seed1.path)


def test_reload_during_the_start_up_load_is_409(gcn: TinyBundle) -> None:
    gate = Gate(free=0)
    with app_for(gcn.path, gate) as client:
        assert gate.entered.wait(timeout=30)
        response = client.post("/admin/reload", json={"bundle": str(gcn.path)}, headers=AUTH)
        assert response.status_code == 409
        gate.open.set()
        wait_status(client, "ready")


def test_a_failed_start_is_recovered_by_a_good_reload(gcn: TinyBundle, tmp_path: Path) -> None:
    bad = tamper(copy_bundle(gcn.path, tmp_path / "bad"), "graph/weights.npy", flip_last_byte)
    with app_for(bad, build, wait_for_bundle=True) as client:  # the opt-in that stays up after a refused start
        wait_status(client, "failed")
        bad_again = client.post("/admin/reload", json={"bundle": str(bad)}, headers=AUTH)
        assert bad_again.status_code == 422 and client.get("/readyz").json()["status"] == "failed"
        response = client.post("/admin/reload", json={"bundle": str(gcn.path)}, headers=AUTH)
        assert response.status_code == 200 and response.json()["previous_version"] is None
        assert client.get("/readyz").status_code == 200
        assert client.post("/v1/score", json={"node_ids": [1]}).status_code == 200


def test_the_previous_service_is_freed_after_a_swap(gcn: TinyBundle, gcn_seed1: TinyBundle) -> None:
    # gc.freeze() keeps the cyclic collector off the served objects; reference counting must still
    # free the replaced model, or every reload would leak a whole bundle.
    with app_for(gcn.path) as client:
        wait_status(client, "ready")
        runtime: Runtime = client.app.state.runtime  # type: ignore[attr-defined]
        old = weakref.ref(runtime.require())
        old_session = weakref.ref(runtime.require().scorer.model.session)
        assert client.post("/admin/reload", json={"bundle": str(gcn_seed1.path)}, headers=AUTH).status_code == 200
        gc.collect()
        assert old() is None and old_session() is None


def test_admin_token_must_be_long_and_stays_secret() -> None:
    with pytest.raises(ValidationError, match="at least 16"):
        Settings(bundle=Path("/b"), admin_token="short")  # type: ignore[arg-type]
    settings = Settings(bundle=Path("/b"), admin_token=TOKEN)  # type: ignore[arg-type]
    assert TOKEN not in repr(settings) and TOKEN not in str(settings.model_dump())


def test_cli_refuses_a_short_token() -> None:
    env = {"SERVE_ADMIN_TOKEN": "short", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "serve", "--bundle", "/nonexistent"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "admin_token" in result.stderr and "short" not in result.stderr


def test_reload_outside_the_roots_is_403_even_through_a_link(gcn: TinyBundle, tmp_path: Path) -> None:
    settings = Settings(bundle=gcn.path, admin_token=TOKEN, warmup_runs=0)  # type: ignore[arg-type]
    outside = copy_bundle(gcn.path, tmp_path / "outside")  # a valid bundle, outside gcn's folder
    link = gcn.path.parent / f"link-{tmp_path.name}"
    link.symlink_to(outside, target_is_directory=True)  # inside the root by name, outside by target
    try:
        with TestClient(create_app(settings)) as client:
            wait_status(client, "ready")
            for target in (outside, link):
                response = client.post("/admin/reload", json={"bundle": str(target)}, headers=AUTH)
                assert response.status_code == 403 and response.json()["error"]["code"] == "bundle_not_allowed"
            sibling = client.post("/admin/reload", json={"bundle": str(gcn.path)}, headers=AUTH)
            assert sibling.status_code == 200  # the default root: the start-up bundle's folder
    finally:
        link.unlink()
