"""The neighbour mean as a student input (policy.mean_input): kernels with golden numbers on a hand
graph, and the manifest / graph-file contract around it (old bundles keep their bytes and digest)."""

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from bundle import files
from bundle import policy as kernels
from bundle.errors import BundleInvalid
from bundle.manifest import GraphFiles, Manifest, Policy
from bundle.policy import CSR
from tests.bundle.test_manifest import write_hand_bundle

FEATURES = np.array([[1, 2], [3, 4], [5, 6], [7, 8]], dtype=np.float32)
# 0 -> 1 twice (a duplicate), 2 -> 1, 1 -> 1 (a self-loop), 1 -> 0, 3 -> 0 twice; 3 -> 3 only a self-loop; 2 none.
SRC = np.array([0, 0, 2, 1, 1, 3, 3, 3], dtype=np.int64)
DST = np.array([1, 1, 1, 1, 0, 0, 0, 3], dtype=np.int64)


def test_mean_is_over_distinct_in_neighbours_without_self_loops():
    mean = kernels.neighbour_mean(SRC, DST, FEATURES, 4)
    # node 0: {1, 3} -> ((3+7)/2, (4+8)/2); node 1: {0, 2} -> ((1+5)/2, (2+6)/2); nodes 2, 3: none -> zeros.
    np.testing.assert_array_equal(mean, np.array([[5, 6], [3, 4], [0, 0], [0, 0]], dtype=np.float32))
    assert mean.dtype == np.float32
    # The same neighbour set the degree column counts.
    assert kernels.in_degree(SRC, DST, 4).tolist() == [2, 2, 0, 0]


def test_a_new_nodes_mean_is_over_its_distinct_given_neighbours():
    given = np.array([3, 1, 3], dtype=np.int64)
    np.testing.assert_array_equal(kernels.new_node_mean(FEATURES[np.unique(given)]), [[5, 6]])
    assert kernels.new_node_degree(given).tolist() == [2]
    empty = kernels.new_node_mean(FEATURES[np.zeros(0, dtype=np.int64)])
    assert empty.shape == (1, 2) and not empty.any()


def test_a_new_node_has_the_mean_it_would_have_as_an_existing_node():
    # Node 4 linked from 3, 1, 3: in the grown raw graph its mean is the new-node formula's.
    src, dst = np.concatenate([SRC, [3, 1, 3]]), np.concatenate([DST, [4, 4, 4]])
    grown = kernels.neighbour_mean(src, dst, np.concatenate([FEATURES, [[9, 9]]]), 5)
    np.testing.assert_array_equal(grown[4:], kernels.new_node_mean(FEATURES[[1, 3]]))


def test_input_rows_are_features_mean_then_log_degree():
    mean = kernels.neighbour_mean(SRC, DST, FEATURES, 4)
    rows = kernels.node_inputs(FEATURES, kernels.in_degree(SRC, DST, 4), mean)
    np.testing.assert_allclose(rows[0], [1, 2, 5, 6, np.log(3)], rtol=1e-7)
    np.testing.assert_allclose(rows[2], [5, 6, 0, 0, 0], rtol=0)
    assert rows.shape == (4, 5) and rows.dtype == np.float32
    assert kernels.node_inputs(FEATURES, None, mean).shape == (4, 4)
    np.testing.assert_array_equal(kernels.node_inputs(FEATURES, None), FEATURES)


def write_mean_bundle(root: Path) -> Manifest:
    """The hand bundle of test_manifest (3 nodes, 2 features) with degree and mean input."""
    written = write_hand_bundle(root, degree=True)
    mean = np.array([[1, 2], [0, 0], [0.5, 0.25]], dtype=np.float32)
    np.save(root / "graph" / "neighbour_mean.npy", mean, allow_pickle=False)
    manifest = written.model_copy(update={
        "policy": written.policy.model_copy(update={"mean_input": True}),
        "graph": written.graph.model_copy(update={"neighbour_mean": "graph/neighbour_mean.npy"}),
        "files": files.file_hashes(root)})
    manifest = files.with_version(Manifest.model_validate(manifest.model_dump()))
    files.write_manifest(root, manifest)
    return manifest


def test_mean_array_round_trips_and_is_served(tmp_path):
    written = write_mean_bundle(tmp_path / "b")
    opened = files.open_bundle(tmp_path / "b")
    assert opened.manifest == written and opened.manifest.policy.mean_input
    np.testing.assert_array_equal(opened.graph.neighbour_mean, [[1, 2], [0, 0], [0.5, 0.25]])
    assert "graph/neighbour_mean.npy" in written.served_files  # part of the version digest
    without = write_hand_bundle(tmp_path / "c", degree=True)
    assert written.version != without.version


def test_mean_input_false_is_left_out_of_the_manifest(tmp_path):
    written = write_hand_bundle(tmp_path / "c", degree=True)
    raw = (tmp_path / "c" / "manifest.json").read_text()
    assert "mean_input" not in raw and "neighbour_mean" not in raw
    assert "mean_input" not in written.policy.model_dump() and "neighbour_mean" not in written.graph.model_dump()
    assert json.loads(write_mean_bundle(tmp_path / "d").to_json())["policy"]["mean_input"] is True


@pytest.mark.parametrize("change, needle", [
    (lambda m: m["graph"].pop("neighbour_mean"), "neighbour_mean must be present exactly when policy.mean_input"),
    (lambda m: m["policy"].pop("mean_input"), "neighbour_mean must be present exactly when policy.mean_input"),
    (lambda m: m["policy"].update(degree_input=False), "mean_input needs degree_input"),
])
def test_a_mean_policy_and_its_array_go_together(tmp_path, change, needle):
    write_mean_bundle(tmp_path / "b")
    path = tmp_path / "b" / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(BundleInvalid, match=needle):
        files.open_bundle(tmp_path / "b")


@pytest.mark.parametrize("mean, needle", [
    (np.zeros((1, 3), dtype=np.float32), r"must be \[1, 2\] like the features"),
    (np.array([[np.nan, 0]], dtype=np.float32), "neighbour_mean holds NaN"),
])
def test_a_bad_mean_array_is_refused(mean, needle):
    csr = CSR(np.array([0, 1]), np.array([0]), np.array([1.0], dtype=np.float32))
    arrays = files.GraphArrays(np.ones((1, 2), dtype=np.float32), np.array([0]), csr, np.array([0]), mean)
    with pytest.raises(BundleInvalid, match=needle):
        arrays.check()


def test_the_policy_refuses_a_mean_without_the_degree():
    with pytest.raises(ValueError, match="mean_input needs degree_input"):
        Policy(fanout=2, k_hops=2, propagation="mean", seed=0, mean_input=True)
    assert GraphFiles(features="f", node_ids="n", indptr="i", indices="j", weights="w").neighbour_mean is None


def test_mean_restart_is_left_out_at_one_and_needs_the_mean_below_it():
    base = dict(fanout=3, k_hops=0, propagation="none", seed=0, degree_input=True, mean_input=True)
    assert "mean_restart" not in Policy(**base).model_dump()  # earlier bundles keep their bytes
    assert Policy(**base, mean_restart=0.1).model_dump()["mean_restart"] == 0.1
    with pytest.raises(ValidationError, match="mean_restart below 1 needs mean_input"):
        Policy(**{**base, "mean_input": False}, mean_restart=0.5)
    for bad in (0.0, 1.5):
        with pytest.raises(ValidationError):
            Policy(**base, mean_restart=bad)


def test_a_node_passes_its_raw_features_at_restart_one_and_the_mix_below():
    mean = FEATURES[::-1].copy()
    np.testing.assert_array_equal(kernels.propagated(FEATURES, mean, 1.0), FEATURES)
    np.testing.assert_allclose(kernels.propagated(FEATURES, mean, 0.25), 0.25 * FEATURES + 0.75 * mean, rtol=1e-6)
