"""A temporal bundle served: scores as of t are exactly the kernel's block through the ONNX student,
the default time is the graph's latest edge time, writes after t change no score as of t (the
leakage canary through the service) but do change the default-time score, writes replay after a
restart, and bad temporal writes / new_nodes get their exact 4xx."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from bundle.files import TemporalArrays, open_bundle
from bundle.manifest import TemporalRecent
from bundle.temporal import TemporalStore, block
from serve.model import softmax
from tests.distill.test_temporal_bundle import build_temporal
from tests.serve.test_edges_http import AUTH, client_for, error

TOLERANCE = 1e-6  # probabilities: the service's session options vs a plain session, same float32 model
USERS = [2, 3, 7, 12]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_temporal(tmp_path_factory.mktemp("temporal_serve"))


class Reference:
    """The kernel (bundle.temporal.block) and the bundle's ONNX student, outside the service."""

    def __init__(self, root: Path) -> None:
        opened = open_bundle(root)
        assert isinstance(opened.graph, TemporalArrays) and isinstance(opened.manifest.policy, TemporalRecent)
        self.graph, self.policy = opened.graph, opened.manifest.policy.kernel
        self.store = opened.graph.store()
        self.session = ort.InferenceSession(opened.model, providers=["CPUExecutionProvider"])

    def index(self, user: int) -> int:
        return int(np.searchsorted(self.graph.node_ids, user))

    def probabilities(self, user: int, t: float, store: TemporalStore | None = None) -> list[float]:
        b = block(self.store if store is None else store, self.index(user), t, self.policy)
        logits = self.session.run(["logits"], {"x": b.x, "adj": b.adjacency()})[0][:1]
        return [float(p) for p in softmax(logits)[0]]


def served(client: TestClient, users: list[int], as_of: float | None = None) -> list[list[float]]:
    body: dict[str, Any] = {"node_ids": users} if as_of is None else {"node_ids": users, "as_of": as_of}
    got = client.post("/v1/score", json=body)
    assert got.status_code == 200, got.text
    return [list(r["probabilities"].values()) for r in got.json()["results"]]


def test_scores_as_of_t_are_the_kernel_through_the_student(bundle: Path) -> None:
    ref = Reference(bundle)
    now = float(ref.store.time.max())
    with client_for(bundle) as client:
        for t in np.quantile(ref.store.time, [0.2, 0.5, 0.9]).tolist() + [now + 86400.0]:
            packed = served(client, USERS, as_of=t)  # one request: blocks packed per relation
            for user, got in zip(USERS, packed, strict=True):
                assert got == pytest.approx(ref.probabilities(user, t), abs=TOLERANCE)
        # No as_of: as of the latest edge time (cached structure, features as of then).
        default = served(client, USERS)
        assert default == served(client, USERS, as_of=now)
        for user, got in zip(USERS, default, strict=True):
            assert got == pytest.approx(ref.probabilities(user, now), abs=TOLERANCE)
        assert client.get("/v1/model").json()["policy"]["name"] == "temporal_recent"


def test_new_nodes_are_refused_with_422(bundle: Path) -> None:
    with client_for(bundle) as client:
        got = client.post("/v1/score", json={"new_nodes": [{"features": [0.0] * 18, "neighbors": [2]}]})
        assert error(got) == (422, "new_nodes_unsupported")


def test_writes_after_t_change_nothing_as_of_t_and_the_default_score(bundle: Path, tmp_path: Path) -> None:
    ref = Reference(bundle)
    now, t = float(ref.store.time.max()), float(np.quantile(ref.store.time, 0.5))
    target = USERS[0]
    raters = [u for u in range(1, 41) if u != target][:12]
    # Planted after t (and after now): every rater calls the target a fraud, and a new user joins.
    edges = [{"src": r, "dst": target, "time": now + 60.0 + i, "weight": -10.0} for i, r in enumerate(raters)]
    edges.append({"src": 999, "dst": target, "time": now + 100.0, "weight": 5.0})
    log = tmp_path / "edges.log"
    with client_for(bundle, edge_log=log) as client:
        before_t, before_now = served(client, USERS, as_of=t), served(client, USERS)
        got = client.post("/v1/edges", json={"nodes": [{"id": 999, "features": []}], "edges": edges}, headers=AUTH)
        assert got.status_code == 200, got.text
        assert got.json()["accepted_edges"] == len(edges) and got.json()["invalidated_blocks"] >= 1
        assert served(client, USERS, as_of=t) == before_t  # exact: no edge after t reaches a score as of t
        after = served(client, USERS)
        assert after[0] != before_now[0]
        grown = ref.store.extended([ref.index(r) for r in raters] + [40], [ref.index(target)] * len(edges),
                                   [e["time"] for e in edges], [e["weight"] for e in edges], num_nodes=41)
        # Every user, cached before the write or not, is scored on the grown graph: the blocks the
        # write touched were dropped (a stale cached structure would differ here).
        for user, got in zip(range(1, 41), served(client, list(range(1, 41))), strict=True):
            assert got == pytest.approx(ref.probabilities(user, now + 100.0, grown), abs=TOLERANCE)
        assert served(client, [999])[0] == pytest.approx(
            _probabilities_of(ref, grown, 40, now + 100.0), abs=TOLERANCE)
        graph = client.get("/v1/graph").json()
        assert (graph["added_nodes"], graph["logged_edges"]) == (1, len(edges))
    with client_for(bundle, edge_log=log) as client:  # a restart replays the log
        assert served(client, USERS) == after and served(client, USERS, as_of=t) == before_t
        assert client.get("/v1/graph").json()["logged_edges"] == len(edges)


def _probabilities_of(ref: Reference, store: TemporalStore, index: int, t: float) -> list[float]:
    b = block(store, index, t, ref.policy)
    return [float(p) for p in softmax(ref.session.run(["logits"], {"x": b.x, "adj": b.adjacency()})[0][:1])[0]]


def test_bad_temporal_writes_get_their_exact_status(bundle: Path, tmp_path: Path) -> None:
    ref = Reference(bundle)
    now = float(ref.store.time.max())
    with client_for(bundle, edge_log=tmp_path / "edges.log", edges_monotonic=True) as client:
        def post(body: dict[str, Any]) -> tuple[int, str]:
            return error(client.post("/v1/edges", json=body, headers=AUTH))

        edge = {"src": 2, "dst": 3, "time": now + 1.0}
        assert post({"edges": [edge]}) == (422, "rating_required")
        assert post({"edges": [{**edge, "weight": 10.5}]}) == (422, "weight_out_of_range")
        assert post({"edges": [{**edge, "weight": -11.0}]}) == (422, "weight_out_of_range")
        assert post({"edges": [{**edge, "weight": 1.0, "time": now - 1.0}]}) == (409, "time_not_monotonic")
        assert post({"edges": [{**edge, "weight": 1.0}], "undirected": True}) == (422, "directed_only")
        assert post({"nodes": [{"id": 500, "features": [0.5]}]}) == (422, "invalid_features")
        assert post({"edges": [{"src": 2, "dst": 777, "time": now + 1.0, "weight": 1.0}]}) == (404, "unknown_nodes")
        assert post({"nodes": [{"id": 2, "features": []}]}) == (409, "node_exists")
        assert client.get("/v1/graph").json()["logged_edges"] == 0  # nothing refused was logged
        ok = client.post("/v1/edges", json={"edges": [{**edge, "weight": 1.0}]}, headers=AUTH)
        assert ok.status_code == 200 and ok.json()["accepted_edges"] == 1  # directed: one rating, one edge
