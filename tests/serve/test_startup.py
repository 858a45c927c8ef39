"""Start-up and reload like a production service: a refused bundle ends `python -m serve` with exit 4
and one line (unless SERVE_WAIT_FOR_BUNDLE opts in to staying up unready), and a reload that would
change what clients rely on (feature width, classes, inputs) is refused with 409 unless forced."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from bundle.files import read_manifest
from serve.__main__ import EXIT_BUNDLE_REFUSED, parse_args
from serve.runtime import Service, build, differences
from serve.settings import Settings
from tests.serve import conftest
from tests.serve.conftest import ROOT, TinyBundle, build_tiny
from tests.serve.servers import RunningServer, free_port
from tests.serve.test_reload import AUTH, TOKEN, version_of
from tests.serve.test_reload_app import app_for, wait_status
from tests.tamper import copy_bundle, flip_last_byte, tamper

NARROW = "synthetic:nodes=300,features=6"  # the gcn fixture's data with 6 features instead of 8


@pytest.fixture(scope="module")
def narrow(tmp_path_factory: pytest.TempPathFactory) -> TinyBundle:
    """A valid bundle whose model takes 6 features: incompatible with the 8-feature `gcn`."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(conftest, "TINY", NARROW)  # build_tiny reads the spec from there
        return build_tiny(tmp_path_factory.mktemp("narrow") / "bundle", "gcn")


def run_serve(bundle: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m serve --bundle BUNDLE` to its end, with no SERVE_* variable but `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SERVE_")} | env
    return subprocess.run([sys.executable, "-m", "serve", "--bundle", str(bundle), "--port", str(free_port()), *args],
                          cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60)


# -- fail fast ---------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(("make", "reason"), [
    (lambda good, tmp: tmp / "bundel", "does not exist"),  # a mistyped --bundle
    (lambda good, tmp: tamper(copy_bundle(good, tmp / "b"), "graph/weights.npy", flip_last_byte),
     "graph/weights.npy: sha256"),
], ids=["missing", "tampered"])
def test_a_refused_bundle_exits_4_with_one_line(make: Callable[[Path, Path], Path], reason: str, gcn: TinyBundle,
                                                tmp_path: Path) -> None:
    bundle = make(gcn.path, tmp_path)
    result = run_serve(bundle)
    assert result.returncode == EXIT_BUNDLE_REFUSED == 4
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"python -m serve: bundle {bundle} refused: ")
    assert reason in lines[0] and "SERVE_WAIT_FOR_BUNDLE" in lines[0]
    assert result.stdout == ""


def _poison_model(bundle: Path) -> Path:
    """A NaN in the model's largest weight, hashes updated: it verifies, and only the build's probe refuses it."""
    model = onnx.load(str(bundle / "student.onnx"))
    weight = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] = np.nan
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    return tamper(bundle, "student.onnx", model.SerializeToString(), rehash=True)


@pytest.mark.slow
def test_a_bundle_refused_by_the_build_also_exits_4(gcn: TinyBundle, tmp_path: Path) -> None:
    # Past the verification (so past the port opening): the loader thread ends the server.
    bundle = _poison_model(copy_bundle(gcn.path, tmp_path / "nan"))
    result = run_serve(bundle, SERVE_LOG_LEVEL="warning")
    assert result.returncode == 4
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"python -m serve: bundle {bundle} refused: ") and "NaN or Inf logits" in last
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_with_the_opt_in_a_missing_bundle_starts_unready_until_a_reload(gcn: TinyBundle, tmp_path: Path,
                                                                        running_server: RunningServer) -> None:
    later = tmp_path / "bundles" / "current"  # the volume is filled after the process started
    later.parent.mkdir()
    srv = running_server(later, ready=False, SERVE_WAIT_FOR_BUNDLE="true", SERVE_ADMIN_TOKEN=TOKEN)
    with srv.client() as client:
        assert client.get("/livez").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        assert "does not exist" in ready.json()["reason"]
        copy_bundle(gcn.path, later)
        assert client.post("/admin/reload", json={"bundle": str(later)}, headers=AUTH, timeout=60).status_code == 200
        assert client.get("/readyz").status_code == 200
    assert srv.process.poll() is None


def test_the_cli_flag_opts_in_and_the_env_is_not_overridden_without_it() -> None:
    assert parse_args(["--bundle", "/b", "--wait-for-bundle"])["wait_for_bundle"] is True
    assert "wait_for_bundle" not in parse_args(["--bundle", "/b"])  # SERVE_WAIT_FOR_BUNDLE then decides


# -- reload compatibility ------------------------------------------------------------------------------
class Counting:
    """build(), counting its calls: shows a refusal happened before any build."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, settings: Settings) -> Service:
        with self.lock:
            self.calls += 1
        return build(settings)


def test_an_incompatible_reload_is_409_and_the_old_model_keeps_serving(gcn: TinyBundle, narrow: TinyBundle) -> None:
    builder = Counting()
    with app_for(gcn.path, builder) as client:
        wait_status(client, "ready")
        response = client.post("/admin/reload", json={"bundle": str(narrow.path)}, headers=AUTH)
        assert response.status_code == 409
        error = response.json()["error"]
        assert error["code"] == "bundle_incompatible" and '{"force": true}' in error["message"]
        assert error["detail"] == {"bundle": str(narrow.path), "served_version": version_of(gcn.path),
                                   "differences": [{"field": "num_features", "served": 8, "new": 6}]}
        assert builder.calls == 1  # the start-up build only: refused from the manifest, before building
        assert client.get("/v1/model").json()["version"] == version_of(gcn.path)
        score = client.post("/v1/score", json={"new_nodes": [{"features": [0.5] * 8, "neighbors": [1]}]})
        assert score.status_code == 200 and score.json()["model_version"] == version_of(gcn.path)
        not_a_bool = client.post("/admin/reload", json={"bundle": str(narrow.path), "force": "yes"}, headers=AUTH)
        assert not_a_bool.status_code == 422 and not_a_bool.json()["error"]["code"] == "invalid_request"


def test_force_swaps_an_incompatible_bundle(gcn: TinyBundle, narrow: TinyBundle) -> None:
    with app_for(gcn.path) as client:
        wait_status(client, "ready")
        response = client.post("/admin/reload", json={"bundle": str(narrow.path), "force": True}, headers=AUTH)
        assert response.status_code == 200 and response.json()["version"] == version_of(narrow.path)
        six = client.post("/v1/score", json={"new_nodes": [{"features": [0.5] * 6, "neighbors": [1]}]})
        assert six.status_code == 200 and six.json()["model_version"] == version_of(narrow.path)
        eight = client.post("/v1/score", json={"new_nodes": [{"features": [0.5] * 8, "neighbors": [1]}]})
        assert eight.status_code == 422 and eight.json()["error"]["code"] == "invalid_features"


def test_differences_name_each_contract_field(gcn: TinyBundle) -> None:
    served = read_manifest(gcn.path)[0]
    assert differences(served, served) == []
    other = served.model_copy(update={
        "dataset": served.dataset.model_copy(update={"class_names": ["a", "b", "c"]}),
        "model": served.model.model_copy(update={"inputs": ["x"]}),
        "metrics": {**served.metrics, "selection_metric": "auroc"},
    })
    assert [d["field"] for d in differences(served, other)] == ["class_names", "inputs"]  # one side lacks the metric
    both = served.model_copy(update={"metrics": {**served.metrics, "selection_metric": "accuracy"}})
    assert differences(both, other)[-1] == {"field": "selection_metric", "served": "accuracy", "new": "auroc"}
    assert differences(served, other)[0] == {"field": "class_names", "served": ["legit", "suspicious", "fraud"],
                                             "new": ["a", "b", "c"]}
    strings = served.model_copy(update={"graph": served.graph.model_copy(update={"id_type": "string"})})
    assert differences(served, strings) == [{"field": "id_type", "served": "int64", "new": "string"}]

