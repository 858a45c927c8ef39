"""The typed manifest and the on-disk checks, on a hand-made bundle (no torch, no model run)."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from bundle import files
from bundle.errors import BundleInvalid
from bundle.manifest import (
    SCHEMA_VERSION,
    DatasetInfo,
    Decision,
    GraphFiles,
    Manifest,
    Parity,
    Policy,
    Reproducibility,
    StudentModel,
)
from bundle.policy import CSR


def write_hand_bundle(root: Path, degree: bool = False) -> Manifest:
    """3 nodes, 2 features, P = gcn-like weights (and with `degree` the raw in-degree array and a
    degree-input policy); student.onnx is opaque bytes (never run here)."""
    root.mkdir()
    csr = CSR(np.array([0, 2, 3, 4]), np.array([0, 1, 1, 2]), np.array([0.5, 0.5, 1.0, 1.0], dtype=np.float32))
    graph = files.GraphArrays(np.ones((3, 2), dtype=np.float32), np.array([10, 20, 30]), csr,
                              np.array([5, 0, 1]) if degree else None)
    paths = files.save_graph(root, graph)
    (root / "student.onnx").write_bytes(b"onnx bytes")
    hashes = files.file_hashes(root)
    model = StudentModel(file="student.onnx", student="gcn", num_layers=2, hidden_channels=4, inputs=["x", "adj"],
                         outputs=["logits"], opset=17, params=10)
    manifest = Manifest(
        schema_version=SCHEMA_VERSION, version="", created_at="2026-01-01T00:00:00+00:00",
        dataset=DatasetInfo(spec="hand", name="hand", source={"kind": "test"}, num_nodes=3, num_features=2,
                            num_classes=2, class_names=["a", "b"]),
        model=model, policy=Policy(fanout=2, k_hops=2, propagation="gcn", seed=0, degree_input=degree),
        graph=GraphFiles(**paths),
        metrics={}, config={}, seed=0, reproducibility=Reproducibility(threads=1, versions={}), files=hashes)
    manifest = files.with_version(manifest)
    files.write_manifest(root, manifest)
    return manifest


def _edit(root: Path, change) -> None:
    data = json.loads((root / "manifest.json").read_text())
    change(data)
    (root / "manifest.json").write_text(json.dumps(data))


def test_hand_bundle_round_trips(tmp_path):
    written = write_hand_bundle(tmp_path / "b")
    opened = files.open_bundle(tmp_path / "b")
    manifest, graph = opened.manifest, opened.graph
    assert manifest == written and opened.model == b"onnx bytes"
    assert graph.node_ids.tolist() == [10, 20, 30] and graph.csr.degree.tolist() == [2, 1, 1]


def test_degree_array_round_trips_and_is_served(tmp_path):
    written = write_hand_bundle(tmp_path / "b", degree=True)
    opened = files.open_bundle(tmp_path / "b")
    manifest, graph = opened.manifest, opened.graph
    assert manifest == written and graph.in_degree.tolist() == [5, 0, 1]
    assert "graph/in_degree.npy" in manifest.served_files  # part of the version digest


def test_degree_input_without_its_array_is_refused(tmp_path):
    write_hand_bundle(tmp_path / "b", degree=True)
    _edit(tmp_path / "b", lambda m: m["graph"].pop("in_degree"))
    with pytest.raises(BundleInvalid, match="in_degree must be present exactly when policy.degree_input"):
        files.open_bundle(tmp_path / "b")


def test_negative_degree_is_refused():
    csr = CSR(np.array([0, 1]), np.array([0]), np.array([1.0], dtype=np.float32))
    with pytest.raises(BundleInvalid, match="in_degree"):
        files.GraphArrays(np.ones((1, 2), dtype=np.float32), np.array([0]), csr, np.array([-1])).check()


@pytest.mark.parametrize("change, needle", [
    (lambda m: m.update(colour="blue"), "colour"),
    (lambda m: m["policy"].update(fanout_typo=3), "fanout_typo"),
    (lambda m: m.update(schema_version=1), "unknown bundle schema_version 1"),
    (lambda m: m.update(schema_version=2.0), "unknown bundle schema_version 2.0"),
    (lambda m: m.update(schema_version=True), "unknown bundle schema_version True"),
    (lambda m: m["policy"].update(propagation="none"), "k_hops must be 0"),
    (lambda m: m["model"].update(inputs=["x"]), "disagree"),
    (lambda m: m["dataset"].update(class_names=["a", "a"]), "distinct"),
    (lambda m: m["policy"].update(propagation="magic"), "propagation"),
    (lambda m: m.update(version="hand-gcn-000000000000"), "digest"),
    # What the service computes with, edited with every file hash intact: the version names it.
    (lambda m: m["policy"].update(fanout=1), "not the digest of what is served"),
    (lambda m: m["dataset"].update(class_names=["b", "a"]), "not the digest of what is served"),
    (lambda m: m["files"].pop("graph/weights.npy"), "not listed"),
    (lambda m: m["files"].update({"graph/indices.npy": "0" * 64}), "graph/indices.npy"),
    (lambda m: m["files"].update({"../outside.npy": "0" * 64}), "outside the bundle"),
])
def test_contract_violations_are_refused_naming_the_problem(tmp_path, change, needle):
    root = tmp_path / "b"
    write_hand_bundle(root)
    _edit(root, change)
    with pytest.raises(BundleInvalid, match=needle):
        files.open_bundle(root)


def test_arrays_of_the_wrong_dtype_cannot_be_saved(tmp_path):
    csr = CSR(np.array([0, 0]), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
    graph = files.GraphArrays(np.ones((1, 2), dtype=np.float64), np.array([0]), csr)
    (tmp_path / "b").mkdir()
    with pytest.raises(BundleInvalid, match="features"):
        files.save_graph(tmp_path / "b", graph)


def test_version_ignores_the_report_and_follows_model_graph_and_policy(tmp_path):
    written = write_hand_bundle(tmp_path / "b")
    version = files.version_of(written)
    assert version == written.version and version.startswith("hand-gcn-")
    assert files.version_of(written.model_copy(update={"files": {**written.files, "report.json": "e" * 64},
                                                       "metrics": {"x": 1}})) == version
    assert files.version_of(written.model_copy(update={"files": {**written.files, "graph/features.npy": "d" * 64}})) \
        != version
    assert files.version_of(written.model_copy(update={"policy": written.policy.model_copy(update={"fanout": 1})})) \
        != version


def test_an_int8_parity_record_without_a_tolerance_round_trips(tmp_path):
    written = write_hand_bundle(tmp_path / "b")
    int8 = written.model_copy(update={"parity": Parity(max_abs_diff=0.03, nodes_checked=5)})
    files.write_manifest(tmp_path / "b", int8)
    manifest = files.open_bundle(tmp_path / "b").manifest
    assert manifest.parity is not None and manifest.parity.tolerance is None


def _decided(manifest: Manifest, threshold: float = 0.35) -> Manifest:
    """`manifest` with a binary decision section, re-versioned as the writer does."""
    decision = Decision(positive_class="b", threshold=threshold, val_f1=0.8, test_precision=0.7, test_recall=0.6)
    return files.with_version(manifest.model_copy(update={"decision": decision}))


def test_a_manifest_with_a_decision_round_trips(tmp_path):
    decided = _decided(write_hand_bundle(tmp_path / "b"))
    files.write_manifest(tmp_path / "b", decided)
    manifest = files.open_bundle(tmp_path / "b").manifest
    assert manifest == decided and manifest.decision is not None
    assert manifest.decision.model_dump(exclude_none=True) == {
        "rule": "max_f1_on_validation", "positive_class": "b", "threshold": 0.35, "val_f1": 0.8,
        "test_precision": 0.7, "test_recall": 0.6}
    assert '"decision"' in manifest.to_json()


def test_without_a_decision_the_version_digest_is_the_one_of_earlier_releases(tmp_path):
    written = write_hand_bundle(tmp_path / "b")
    assert written.decision is None and '"decision"' not in written.to_json()
    # The digest as earlier releases computed it (four sections, no decision key): their bundles still verify.
    sections = ("dataset", "model", "policy", "graph")
    body = {"files": sorted([rel, written.files[rel]] for rel in written.served_files),
            **{name: getattr(written, name).model_dump(mode="json") for name in sections}}
    assert files.served_digest(written) == hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def test_a_changed_threshold_is_a_new_version(tmp_path):
    written = write_hand_bundle(tmp_path / "b")
    decided, moved = _decided(written, 0.35), _decided(written, 0.36)
    assert len({written.version, decided.version, moved.version}) == 3
    assert _decided(written, 0.35).version == decided.version  # the same decision, the same version
    files.write_manifest(tmp_path / "b", decided)
    _edit(tmp_path / "b", lambda m: m["decision"].update(threshold=0.36))  # edited without re-versioning
    with pytest.raises(BundleInvalid, match="not the digest of what is served"):
        files.open_bundle(tmp_path / "b")


@pytest.mark.parametrize("change, needle", [
    (lambda m: m["decision"].update(threshold=1.5), "less than or equal to 1"),
    (lambda m: m["decision"].update(threshold=-0.1), "greater than or equal to 0"),
    (lambda m: m["decision"].update(positive_class="c"), "one of its class_names"),
    (lambda m: m["decision"].update(rule="argmin"), "max_f1_on_validation"),
    (lambda m: m["decision"].update(cost=3), "cost"),
    (lambda m: m["decision"].pop("threshold"), "threshold"),
])
def test_a_malformed_decision_is_refused(tmp_path, change, needle):
    root = tmp_path / "b"
    files.write_manifest(root, _decided(write_hand_bundle(root)))
    _edit(root, change)
    with pytest.raises(BundleInvalid, match=needle):
        files.open_bundle(root)


def test_a_decision_needs_a_binary_dataset():
    dataset = DatasetInfo(spec="s", name="s", source={}, num_nodes=3, num_features=2, num_classes=3,
                          class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="decision needs a binary dataset"):
        Manifest(schema_version=SCHEMA_VERSION, version="", created_at="", dataset=dataset,
                 model=StudentModel(file="m", student="mlp", num_layers=1, hidden_channels=1, inputs=["x"],
                                    outputs=["logits"], opset=17, params=1),
                 policy=Policy(fanout=1, k_hops=0, propagation="none", seed=0),
                 graph=GraphFiles(features="f", node_ids="n", indptr="p", indices="i", weights="w"),
                 metrics={}, config={}, seed=0, reproducibility=Reproducibility(threads=1, versions={}), files={},
                 decision=Decision(positive_class="b", threshold=0.5))
