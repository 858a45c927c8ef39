"""The temporal bundle kind in the contract: a temporal manifest parses and reads back as an edge
store, earlier P-bundle manifests keep parsing (and their digests, pinned in test_string_ids.py and
others), names that differ from the kernel's are refused, and so are bad edge arrays."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bundle import files
from bundle.errors import BundleInvalid
from bundle.manifest import (
    SCHEMA_VERSION,
    DatasetInfo,
    Manifest,
    Policy,
    Reproducibility,
    StudentModel,
    TemporalGraphFiles,
    TemporalRecent,
)
from bundle.temporal import FEATURES, RELATIONS


def arrays(**override: Any) -> files.TemporalArrays:
    base: dict[str, Any] = {
        "node_ids": np.array([10, 20, 30, 40], dtype=np.int64),
        "src": np.array([0, 1, 2, 3, 0], dtype=np.int64), "dst": np.array([1, 2, 3, 0, 2], dtype=np.int64),
        "time": np.array([1.0, 2.0, 2.0, 5.0, 9.0]), "rating": np.array([3, -2, 10, -10, 1], dtype=np.float32),
    }
    return files.TemporalArrays(**{**base, **override})


def policy(**override: Any) -> TemporalRecent:
    fields: dict[str, Any] = {"name": "temporal_recent", "fanout": 3, "k_hops": 2, "both_directions": True,
                              "features": list(FEATURES), "relations": list(RELATIONS), "rating_min": -10.0,
                              "rating_max": 10.0, **override}
    return TemporalRecent(**fields)


def write_bundle(root: Path, graph: files.TemporalArrays | None = None) -> Manifest:
    """A temporal bundle with a placeholder model (the contract hashes it; it never parses ONNX)."""
    graph = arrays() if graph is None else graph
    root.mkdir()
    paths = TemporalGraphFiles(**files.save_graph(root, graph), id_type=graph.id_type)
    (root / "student.onnx").write_bytes(b"placeholder model bytes")
    manifest = Manifest(
        schema_version=SCHEMA_VERSION, version="", created_at="2026-01-01T00:00:00+00:00",
        dataset=DatasetInfo(spec="temporal:x", name="tiny", source={}, num_nodes=len(graph.node_ids),
                            num_features=len(FEATURES), num_classes=2, class_names=["negative", "positive"]),
        model=StudentModel(file="student.onnx", student="temporal_student", num_layers=2, hidden_channels=8,
                           inputs=["x", "adj"], outputs=["logits"], opset=17, params=1),
        policy=policy(), graph=paths, metrics={}, config={}, seed=0,
        reproducibility=Reproducibility(threads=1, versions={}), files=files.file_hashes(root))
    manifest = files.with_version(manifest)
    files.write_manifest(root, manifest)
    return manifest


def test_a_temporal_bundle_reads_back_as_an_edge_store(tmp_path: Path) -> None:
    written = write_bundle(tmp_path / "b")
    opened = files.open_bundle(tmp_path / "b")
    assert opened.manifest == written and opened.manifest.temporal
    assert isinstance(opened.manifest.policy, TemporalRecent) and isinstance(opened.graph, files.TemporalArrays)
    assert opened.manifest.policy.kernel.fanout == 3
    store = opened.graph.store()
    assert store.num_nodes == 4 and np.array_equal(store.src, arrays().src)
    # The digest covers the policy and the graph files: another fanout is another version.
    other = written.model_copy(update={"policy": policy(fanout=4)})
    assert files.version_of(other) != written.version


def test_p_bundle_policies_keep_parsing_with_or_without_their_name() -> None:
    p = {"fanout": 5, "k_hops": 2, "propagation": "gcn", "seed": 1}
    for given in (p, {**p, "name": "topk_in_neighbours"}):
        policy_ = _parse_policy(given)
        assert isinstance(policy_, Policy) and policy_.model_dump() == Policy(**p).model_dump()
    with pytest.raises(BundleInvalid, match="policy"):
        _parse_policy({**p, "name": "nearest"})


def _parse_policy(section: dict[str, Any]) -> Policy | TemporalRecent:
    """The policy section as the manifest reader parses it (inside a full, otherwise valid manifest)."""
    body = json.loads(_P_MANIFEST)
    body["policy"] = section
    return Manifest.parse(json.dumps(body)).policy


_P_MANIFEST = json.dumps({
    "schema_version": 2, "version": "v", "created_at": "t",
    "dataset": {"spec": "s", "name": "n", "source": {}, "num_nodes": 2, "num_features": 3, "num_classes": 2,
                "class_names": ["a", "b"]},
    "model": {"file": "student.onnx", "student": "gcn", "num_layers": 2, "hidden_channels": 8, "inputs": ["x", "adj"],
              "outputs": ["logits"], "opset": 17, "params": 1},
    "policy": {}, "graph": {"features": "f", "node_ids": "n", "indptr": "i", "indices": "j", "weights": "w"},
    "metrics": {}, "config": {}, "seed": 0, "reproducibility": {"threads": 1, "versions": {}}, "files": {},
})


def test_feature_or_relation_names_other_than_the_kernels_are_refused(tmp_path: Path) -> None:
    write_bundle(tmp_path / "b")
    body = json.loads((tmp_path / "b" / "manifest.json").read_text())
    renamed = [*FEATURES[:-1], "given_log_distinct_v2"]
    for key, value in (("features", renamed), ("relations", list(reversed(RELATIONS)))):
        changed = {**body, "policy": {**body["policy"], key: value}}
        with pytest.raises(BundleInvalid, match="kernel"):
            Manifest.parse(json.dumps(changed))


def test_temporal_policy_and_graph_files_come_together(tmp_path: Path) -> None:
    write_bundle(tmp_path / "b")
    body = json.loads((tmp_path / "b" / "manifest.json").read_text())
    p_graph = json.loads(_P_MANIFEST)["graph"]
    with pytest.raises(BundleInvalid, match="temporal_recent policy needs the temporal graph files"):
        Manifest.parse(json.dumps({**body, "graph": p_graph}))


@pytest.mark.parametrize(("override", "message"), [
    ({"src": np.array([0, 1, 2, 4, 0])}, "indices outside 0..3"),
    ({"dst": np.array([1, 2, 3, 0])}, "differ in length"),
    ({"time": np.array([1.0, 2.0, 9.0, 5.0, 9.0])}, "not sorted by time"),
    ({"time": np.array([1.0, 2.0, 2.0, np.inf, np.inf])}, "NaN or Inf"),
    ({"rating": np.array([3, -2, np.nan, -10, 1], dtype=np.float32)}, "NaN or Inf"),
    ({"rating": np.array([3, -2, 11, -10, 1], dtype=np.float32)}, r"outside the policy's \[-10.0, 10.0\]"),
])
def test_bad_edge_arrays_are_refused_at_load(tmp_path: Path, override: dict[str, Any], message: str) -> None:
    write_bundle(tmp_path / "b", arrays(**override))
    with pytest.raises(BundleInvalid, match=message):
        files.open_bundle(tmp_path / "b")


def test_wrong_dtypes_are_refused_when_written(tmp_path: Path) -> None:
    with pytest.raises(BundleInvalid, match="time"):
        files.save_graph(tmp_path, arrays(time=np.array([1, 2, 2, 5, 9], dtype=np.int64)))


def test_the_vectorised_running_min_max_equals_the_one_by_one_loop() -> None:
    """bundle.temporal._segment_running (a scan, so the service can rebuild a store per write group)
    against the loop it replaced, on random groups including empty ones and extreme magnitudes."""
    from bundle.temporal import _segment_running

    rng = np.random.default_rng(0)
    for _ in range(200):
        n, groups = int(rng.integers(0, 80)), int(rng.integers(1, 9))
        owner = np.sort(rng.integers(0, groups, n))
        values = (rng.normal(size=n) * rng.choice([1e-30, 1.0, 1e5])).astype(np.float32)
        indptr = np.r_[0, np.cumsum(np.bincount(owner, minlength=groups))]
        starts = np.repeat(indptr[:-1], np.diff(indptr))
        for op in (np.minimum, np.maximum):
            want = values.copy()
            for i in range(1, n):
                if starts[i] != i:
                    want[i] = op(want[i - 1], values[i])
            assert np.array_equal(_segment_running(values, starts, op), want)


def test_appended_equals_extended_array_for_array() -> None:
    """TemporalStore.appended (insertion into the sorted views, the service's per-write path) builds
    exactly the store `extended` re-sorts, ties at the same second included, new nodes too."""
    from dataclasses import fields

    from bundle.temporal import TemporalStore

    rng = np.random.default_rng(1)
    for trial in range(200):
        n, m = int(rng.integers(2, 12)), int(rng.integers(0, 40))
        times = rng.choice([1.0, 2.0, 3.0, 5.0], m) if trial % 2 else rng.uniform(0, 10, m)
        store = TemporalStore.from_arrays(rng.integers(0, n, m), rng.integers(0, n, m), times,
                                          rng.choice([-10, -1, 0, 3, 10], m), n)
        k, grown = int(rng.integers(0, 6)), n + int(rng.integers(0, 3))
        new = (rng.integers(0, grown, k), rng.integers(0, grown, k), rng.choice([1.0, 2.0, 3.0, 7.0], k),
               rng.choice([-10, -1, 2, 10], k).astype(np.float32))
        fast, full = store.appended(*new, num_nodes=grown), store.extended(*new, num_nodes=grown)
        assert fast.num_nodes == full.num_nodes and np.array_equal(fast.time, full.time)
        for side in ("received", "given"):
            for f in fields(getattr(full, side)):
                got, want = getattr(getattr(fast, side), f.name), getattr(getattr(full, side), f.name)
                assert got.dtype == want.dtype and np.array_equal(got, want), (trial, side, f.name)
    with pytest.raises(ValueError, match="endpoints"):
        store.appended([0], [99], [1.0], [1.0])
