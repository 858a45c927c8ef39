"""Typed new-node requests (`links`) on a meta-path bundle of the tiny synthetic-hetero graph, built by
the real job: they score exactly like the equivalent `neighbors` request (and like the torch student on
the graph with the new node added), /v1/model advertises the types, and every bad input is an exact 4xx."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bundle import files, typed
from bundle.manifest import Manifest
from distill.data import load_dataset
from tests.serve import conftest
from tests.serve.conftest import TinyBundle, build_tiny
from tests.serve.helpers import ready_client
from tests.serve.reference import new_node_logits

SPEC = "synthetic-hetero:transactions=200,users=60,devices=40,rings=3,fraud_rate=0.1,train_share=0.2"
F = 6
SAME = 1e-6  # a typed request and its neighbours request: one computation, so equal up to float noise
TOL = 1e-4  # served (onnxruntime, dense blocks) vs the torch student (sparse)


@pytest.fixture(scope="module")
def hetero(tmp_path_factory: pytest.TempPathFactory) -> TinyBundle:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(conftest, "TINY", SPEC)
        return build_tiny(tmp_path_factory.mktemp("typed") / "gcn", "gcn")


@pytest.fixture(scope="module")
def links() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per via type: (transaction [E], via node [E]) of the source graph, read with torch, not the bundle."""
    g = load_dataset(SPEC).hetero
    return {via: tuple(g["transaction", rel, via].edge_index.numpy()) for via, rel in (("user", "made_by"),
                                                                                        ("device", "uses"))}


@pytest.fixture(scope="module")
def client(hetero: TinyBundle) -> Iterator[TestClient]:
    yield from ready_client(hetero.path)


@pytest.fixture(scope="module")
def with_merchants(hetero: TinyBundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The same bundle recording one more node type the student does not read (5 merchants), re-versioned."""
    root = tmp_path_factory.mktemp("merchants") / "b"
    shutil.copytree(hetero.path, root)
    manifest = Manifest.parse((root / "manifest.json").read_text())
    merchant = typed.NodeType(name="merchant", num_nodes=5, used=False)
    section = manifest.typed.model_copy(update={"node_types": [*manifest.typed.node_types, merchant]})
    graph = manifest.graph.model_copy(update={"typed": section})
    files.write_manifest(root, files.with_version(manifest.model_copy(update={"graph": graph})))
    yield from ready_client(root)


def expected_neighbours(links: dict[str, tuple[np.ndarray, np.ndarray]], sent: dict[str, list[int]]) -> list[int]:
    """Every transaction sharing one of the sent users / devices (the meta-path rule, by hand)."""
    found: set[int] = set()
    for via, nodes in sent.items():
        t, v = links[via]
        found |= set(t[np.isin(v, nodes)].tolist())
    return sorted(found)


def score(client: TestClient, node: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/score", json={"new_nodes": [node]})
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


LINKS = [{"user": [0]}, {"device": [3]}, {"user": [1, 2], "device": [0, 5]}, {"user": [59], "device": [39]},
         {"user": []}, {}]


@pytest.mark.parametrize("sent", LINKS, ids=[str(s) for s in LINKS])
def test_a_typed_request_scores_like_its_neighbours_request(client, hetero, links, sent):
    x = np.random.default_rng(len(str(sent))).normal(size=F).round(3).tolist()
    neighbours = expected_neighbours(links, sent)
    typed_result = score(client, {"features": x, "links": sent})
    plain = score(client, {"features": x, "neighbors": neighbours})
    got, want = (np.array(list(r["probabilities"].values())) for r in (typed_result, plain))
    assert np.abs(got - want).max() <= SAME and typed_result["ignored_links"] is None
    torch_logits = new_node_logits(hetero, x, neighbours)  # the student on the graph with the node added
    torch_log_probs = torch_logits - np.log(np.exp(torch_logits).sum())
    assert np.abs(np.log(got) - torch_log_probs).max() <= TOL


def test_the_model_advertises_its_types(client):
    types = client.get("/v1/model").json()["types"]
    assert types["target"] == "transaction" and types["num_features"] == F
    assert types["link_types"] == ["user", "device"] and types["via_types"] == ["user", "device"]
    assert types["ignored_types"] == []
    assert {t["name"]: (t["num_nodes"], t["used"]) for t in types["node_types"]} == {
        "transaction": (200, True), "user": (60, True), "device": (40, True)}


def test_a_homogeneous_bundle_advertises_no_types(gcn: TinyBundle):
    for c in ready_client(gcn.path):
        assert c.get("/v1/model").json()["types"] is None
        response = c.post("/v1/score", json={"new_nodes": [{"features": [0.0] * 8, "links": {"user": [0]}}]})
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_request" and "`neighbors`" in error["detail"][0]["msg"]
        assert error["detail"][0]["loc"] == ["body", "new_nodes", 0, "links"]


GOOD = [0.1] * F
BAD = [  # (name, new node, status, error code, text the message or the first detail must hold)
    ("unknown type", {"features": GOOD, "links": {"merchant": [0]}}, 422, "invalid_request",
     "unknown node type 'merchant'; a new transaction links to: user, device"),
    ("the target type", {"features": GOOD, "links": {"transaction": [0]}}, 422, "invalid_request",
     "send existing transaction ids as `neighbors`"),
    ("links and neighbors", {"features": GOOD, "links": {"user": [0]}, "neighbors": [1]}, 422, "invalid_request",
     "not both"),
    ("links and empty neighbors", {"features": GOOD, "links": {"user": [0]}, "neighbors": []}, 422,
     "invalid_request", "not both"),
    ("unknown user", {"features": GOOD, "links": {"user": [0, 60]}}, 404, "unknown_nodes", "1 user id(s)"),
    ("unknown device", {"features": GOOD, "links": {"user": [0], "device": [-1]}}, 404, "unknown_nodes",
     "1 device id(s)"),
    ("string id of an int type", {"features": GOOD, "links": {"device": ["d1"]}}, 422, "invalid_request",
     "device ids:"),
    ("features of the wrong width", {"features": [0.1] * (F + 1), "links": {"user": [0]}}, 422, "invalid_features",
     f"a new transaction takes {F}"),
    ("links not a list", {"features": GOOD, "links": {"user": 3}}, 422, "invalid_request", "list"),
    ("too many types", {"features": GOOD, "links": {f"t{i}": [] for i in range(17)}}, 422, "invalid_request",
     "at most 16"),
    ("a float id", {"features": GOOD, "links": {"user": [1.5]}}, 422, "invalid_request", ""),
]


@pytest.mark.parametrize("node, status, code, text", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_typed_requests_get_an_exact_4xx(client, node, status, code, text):
    response = client.post("/v1/score", json={"new_nodes": [node]})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    where = error["message"] + " " + " ".join(d["msg"] for d in error["detail"] or [] if isinstance(d, dict)) \
        if isinstance(error["detail"], list) else error["message"]
    assert error["code"] == code and text in where, error
    if status == 404:
        assert error["detail"]["type"] in ("user", "device") and error["detail"]["index"] == 0


def test_a_type_the_student_does_not_read_is_checked_and_ignored(with_merchants, client):
    x = [0.2] * F
    ignored = score(with_merchants, {"features": x, "links": {"user": [4], "merchant": [1]}})
    plain = score(client, {"features": x, "links": {"user": [4]}})
    assert ignored["ignored_links"] == ["merchant"] and ignored["probabilities"] == pytest.approx(
        plain["probabilities"], abs=SAME)
    types = with_merchants.get("/v1/model").json()["types"]
    assert types["ignored_types"] == ["merchant"] and types["link_types"] == ["user", "device", "merchant"]
    response = with_merchants.post("/v1/score", json={"new_nodes": [{"features": x, "links": {"merchant": [5]}}]})
    assert response.status_code == 404 and response.json()["error"]["detail"]["type"] == "merchant"


def test_typed_and_plain_new_nodes_mix_in_one_batch(client, links):
    nodes = [{"features": GOOD, "links": {"device": [1]}},
             {"features": GOOD, "neighbors": expected_neighbours(links, {"device": [1]})}]
    response = client.post("/v1/score", json={"node_ids": [3], "new_nodes": nodes})
    assert response.status_code == 200, response.text
    first, second = response.json()["results"][1:]
    assert first["probabilities"] == pytest.approx(second["probabilities"], abs=SAME)
