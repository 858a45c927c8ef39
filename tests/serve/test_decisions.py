"""Decisions in POST /v1/score: the positive class's `score`, a `decision` under the bundle's
validation-chosen threshold or the request's own, `top_k` classes, and the 422s for bad values.
A tiny binary bundle built by the real job (tests/distill/test_decision.py), served in process."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bundle import files
from serve.app import create_app
from serve.settings import Settings
from tests.distill.test_decision import build_binary
from tests.serve.conftest import TinyBundle
from tests.serve.helpers import wait_ready

NODES = list(range(240))  # the binary graph's node ids


def client_for(bundle: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(bundle=bundle, warmup_runs=0, max_batch=len(NODES)))) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_binary(tmp_path_factory.mktemp("binary"))[0]


@pytest.fixture(scope="module")
def client(binary: Path) -> Iterator[TestClient]:
    yield from client_for(binary)


@pytest.fixture(scope="module")
def multi(gcn: TinyBundle) -> Iterator[TestClient]:
    yield from client_for(gcn.path)


def score(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/score", json={"node_ids": NODES, **body})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_decisions_use_the_bundles_validation_threshold_by_default(client: TestClient, binary: Path) -> None:
    decision = files.read_manifest(binary)[0].decision
    assert decision is not None and decision.positive_class == "class_1"
    body = score(client)
    assert body["threshold"] == decision.threshold and body["positive_class"] == "class_1"
    for r in body["results"]:
        assert r["score"] == r["probabilities"]["class_1"]
        assert r["decision"] == ("class_1" if r["score"] >= decision.threshold else "class_0")
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].get) and r["top_k"] is None
    # The point of a threshold: some nodes are flagged that the argmax (0.5) would let through.
    assert {r["node_id"] for r in body["results"] if r["decision"] != r["label"]}
    model = client.get("/v1/model").json()
    assert model["decision"] == decision.model_dump(mode="json", exclude_none=True)


def test_a_request_threshold_overrides_the_bundles(client: TestClient) -> None:
    scores = {r["node_id"]: r["score"] for r in score(client)["results"]}
    node, s = sorted(scores.items(), key=lambda kv: kv[1])[len(scores) // 2]  # the median node
    at = score(client, threshold=s)
    assert at["threshold"] == s
    flagged = {r["node_id"] for r in at["results"] if r["decision"] == "class_1"}
    assert node in flagged and flagged == {i for i, v in scores.items() if v >= s}
    above = score(client, threshold=math.nextafter(s, 1.0))  # the smallest step up: exactly that node drops
    assert {r["node_id"] for r in above["results"] if r["decision"] == "class_1"} == flagged - {
        i for i, v in scores.items() if v == s}
    assert {r["decision"] for r in score(client, threshold=0)["results"]} == {"class_1"}  # JSON 0: an integer
    top = score(client, threshold=1.0)["results"]
    assert [r["node_id"] for r in top if r["decision"] == "class_1"] == [i for i, v in scores.items() if v >= 1.0]


def test_new_nodes_get_decisions_too(client: TestClient) -> None:
    node = {"features": [0.5] * 6, "neighbors": [0, 1]}
    low = client.post("/v1/score", json={"new_nodes": [node], "threshold": 0.0}).json()["results"][0]
    high = client.post("/v1/score", json={"new_nodes": [node], "threshold": 1.0}).json()["results"][0]
    assert low["kind"] == "new" and low["decision"] == "class_1" and low["score"] == high["score"]
    assert high["decision"] == ("class_1" if high["score"] >= 1.0 else "class_0")


def test_top_k_lists_the_most_probable_classes_in_order(client: TestClient, multi: TestClient) -> None:
    for r in score(client, top_k=2)["results"]:
        probs = r["probabilities"]
        assert [c["label"] for c in r["top_k"]] == sorted(probs, key=lambda c: (-probs[c], c))
        assert r["top_k"][0] == {"label": r["label"], "label_index": r["label_index"], "probability": probs[r["label"]]}
    names = multi.get("/v1/model").json()["dataset"]["class_names"]
    body = multi.post("/v1/score", json={"node_ids": [0, 1, 2], "top_k": 3}).json()
    for r in body["results"]:
        probs = r["probabilities"]
        assert [(c["label"], c["probability"]) for c in r["top_k"]] == sorted(probs.items(), key=lambda kv: -kv[1])
        assert [names[c["label_index"]] for c in r["top_k"]] == [c["label"] for c in r["top_k"]]
        assert r["top_k"][0]["label"] == r["label"] == r["decision"] and r["score"] is None
    assert body["threshold"] is None and body["positive_class"] is None
    one = multi.post("/v1/score", json={"node_ids": [5], "top_k": 1}).json()["results"][0]
    assert one["top_k"] == [{"label": one["label"], "label_index": one["label_index"],
                             "probability": one["probabilities"][one["label"]]}]


def invalid(client: TestClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.post("/v1/score", json={"node_ids": [1], **body})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request", response.text
    detail: list[dict[str, Any]] = response.json()["error"]["detail"]
    return detail


@pytest.mark.parametrize("body, loc, kind", [
    ({"threshold": 1.5}, "threshold", "less_than_equal"),
    ({"threshold": -0.01}, "threshold", "greater_than_equal"),
    ({"threshold": "0.5"}, "threshold", "float_type"),
    ({"threshold": True}, "threshold", "float_type"),
    ({"top_k": 0}, "top_k", "greater_than_equal"),
    ({"top_k": 3}, "top_k", "less_than_equal"),  # over the 2 classes: the bundle's limit
    ({"top_k": 1.5}, "top_k", "int_type"),
    ({"top_k": True}, "top_k", "int_type"),
])
def test_out_of_range_values_are_422_invalid_request(client: TestClient, body: dict[str, Any], loc: str,
                                                     kind: str) -> None:
    assert [(e["loc"], e["type"]) for e in invalid(client, body)] == [(["body", loc], kind)]


def test_multi_class_models_refuse_a_threshold_and_a_top_k_over_their_classes(multi: TestClient) -> None:
    detail = invalid(multi, {"threshold": 0.5})
    assert [(e["loc"], e["type"]) for e in detail] == [(["body", "threshold"], "threshold_not_applicable")]
    assert detail[0]["msg"] == "threshold applies to binary models; this one has 3 classes (argmax)"
    detail = invalid(multi, {"top_k": 4})
    assert detail == [{"loc": ["body", "top_k"], "type": "less_than_equal",
                       "msg": "Input should be less than or equal to 3, the model's number of classes"}]


def test_a_rewritten_threshold_is_a_new_version_served_as_the_new_default(binary: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(binary, tmp_path / "b"))
    manifest = files.read_manifest(root)[0]
    assert manifest.decision is not None
    moved = manifest.model_copy(update={"decision": manifest.decision.model_copy(update={"threshold": 0.0})})
    files.write_manifest(root, files.with_version(moved))
    for c in client_for(root):
        body = c.post("/v1/score", json={"node_ids": [0, 1]}).json()
        assert body["model_version"] != manifest.version and body["threshold"] == 0.0
        assert [r["decision"] for r in body["results"]] == ["class_1", "class_1"]
