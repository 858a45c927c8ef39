"""The neighbour-mean columns of sage-res, served: the stored mean is the raw graph's, a new node's is
its given neighbours', and a write that adds an in-neighbour scores exactly as a bundle rebuilt with
that edge would (the torch student on the grown raw graph), while `as_of` before it gives the old score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from bundle import policy as kernels
from bundle.manifest import Policy
from distill.data import load_dataset
from distill.policy import student_graph
from serve.bundle import load
from tests.serve.conftest import TINY, TinyBundle
from tests.serve.helpers import scorer_for
from tests.serve.reference import new_node_logits, softmax
from tests.serve.test_edges_http import AUTH, client_for, probabilities

TOL = 1e-4


@pytest.fixture(scope="module")
def res(tiny_bundles) -> TinyBundle:
    return tiny_bundles("sage-res")


def offline_logits(tiny: TinyBundle, extra: list[tuple[int, int]]) -> np.ndarray:
    """The torch student's full-graph logits [N, C] on the raw graph plus `extra` edges (src, dst),
    under the bundle's policy: what a bundle rebuilt with those edges would serve."""
    data = load_dataset(TINY).data
    edge_index = torch.cat([data.edge_index, torch.tensor(extra, dtype=torch.long).view(-1, 2).T], dim=1)
    sg = student_graph(edge_index, data.num_nodes, Policy(**tiny.policy), x=data.x)
    with torch.no_grad():
        return tiny.student(sg.inputs(data.x), sg.edges.edge_index, sg.edges.edge_weight).numpy()


def class_names(path: Path) -> list[str]:
    return json.loads((path / "manifest.json").read_text())["dataset"]["class_names"]


def as_rows(scores: list[dict[str, float]], names: list[str]) -> np.ndarray:
    return np.array([[s[name] for name in names] for s in scores])


def test_the_bundle_stores_the_raw_graphs_neighbour_mean(res: TinyBundle) -> None:
    bundle = load(res.path)
    assert bundle.policy.mean_input and bundle.policy.degree_input
    data = load_dataset(TINY).data
    src, dst = data.edge_index.numpy()
    expected = kernels.neighbour_mean(src, dst, data.x.numpy(), data.num_nodes)
    np.testing.assert_array_equal(bundle.graph.neighbour_mean, expected)
    np.testing.assert_allclose(offline_logits(res, []), res.logits, atol=TOL, rtol=0)  # the reference holds


def test_the_onnx_student_reads_features_mean_and_degree_and_equals_torch(res: TinyBundle) -> None:
    store = scorer_for(res.path).store
    session = ort.InferenceSession(str(res.path / "student.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1] == 2 * store.num_features + 1
    everyone = np.arange(store.num_nodes)
    x = store.inputs(everyone)
    np.testing.assert_array_equal(x[:, store.num_features: -1], load(res.path).graph.neighbour_mean)
    logits = session.run(["logits"], {"x": x, "adj": store.csr.dense_block(everyone)})[0]
    np.testing.assert_allclose(logits, res.logits, atol=TOL, rtol=0)


@pytest.mark.parametrize("student", ["sage-res", "ppr-mlp"])
def test_a_new_node_takes_the_mean_of_its_given_neighbours(tiny_bundles, student: str) -> None:
    """Of their raw features (sage-res), or of their propagated rows (ppr-mlp's mean_restart 0.1)."""
    res = tiny_bundles(student)
    names, neighbours = class_names(res.path), [4, 9, 4, 30]
    features = (res.features[11] * 0.5).tolist()
    with client_for(res.path) as client:
        got = client.post("/v1/score", json={"new_nodes": [{"features": features, "neighbors": neighbours}]})
    assert got.status_code == 200, got.text
    served = as_rows([r["probabilities"] for r in got.json()["results"]], names)[0]
    np.testing.assert_allclose(served, softmax(new_node_logits(res, features, neighbours)), atol=TOL, rtol=0)


def test_a_write_scores_as_the_rebuilt_bundle_and_as_of_gives_the_old_score(res: TinyBundle, tmp_path: Path) -> None:
    data = load_dataset(TINY).data
    src, dst = data.edge_index.numpy()
    degree = kernels.in_degree(src, dst, data.num_nodes)
    hub, small = int(np.argmax(degree)), int(np.flatnonzero(degree == 1)[0])
    # A hub whose new source may be pruned away: its mean still counts it.
    assert degree[hub] > Policy(**res.policy).fanout
    extra = []
    for target in (hub, small):
        known = set(src[dst == target].tolist()) | {target}
        extra.append((next(s for s in range(50, data.num_nodes) if s not in known), target))
    names = class_names(res.path)
    ids = sorted({t for _, t in extra} | {s for s, _ in extra} | set(range(0, 60)))
    grown = softmax(offline_logits(res, extra)[ids])
    with client_for(res.path, edge_log=tmp_path / "edges.log") as client:
        before = as_rows(probabilities(client, ids), names)
        written = client.post("/v1/edges", headers=AUTH, json={
            "edges": [{"src": s, "dst": t, "time": 100.0} for s, t in extra], "undirected": False})
        assert written.status_code == 200 and written.json()["accepted_edges"] == 2, written.text
        after = as_rows(probabilities(client, ids), names)
        past = as_rows(probabilities(client, ids, as_of=50.0), names)
    np.testing.assert_allclose(before, softmax(res.logits[ids]), atol=TOL, rtol=0)
    np.testing.assert_allclose(after, grown, atol=TOL, rtol=0)
    np.testing.assert_allclose(past, before, atol=0, rtol=0)
    for s, t in extra:  # the targets' scores did move (by more than the tolerance): the test can fail
        assert np.abs(after[ids.index(t)] - before[ids.index(t)]).max() > 10 * TOL, (s, t)
