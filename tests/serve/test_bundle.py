"""Bundle verification: the service refuses anything that does not match its manifest."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from serve.bundle import load, sha256
from serve.errors import BundleError
from serve.model import Model
from tests.serve.conftest import TinyBundle


@pytest.fixture
def copy(gcn: TinyBundle, tmp_path: Path) -> Path:
    return Path(shutil.copytree(gcn.path, tmp_path / "bundle"))


def edit_manifest(root: Path, **changes: object) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest.update(changes)
    (root / "manifest.json").write_text(json.dumps(manifest))


def drop_key(root: Path, key: str) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest[key]
    (root / "manifest.json").write_text(json.dumps(manifest))


def add_file_entry(root: Path, rel: str) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"][rel] = "0" * 64
    (root / "manifest.json").write_text(json.dumps(manifest))


def rehash(root: Path, rel: str) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"][rel] = sha256(root / rel)
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_valid_bundle_loads(gcn: TinyBundle) -> None:
    bundle = load(gcn.path)
    assert bundle.arrays["features"].shape == (300, 8)
    assert bundle.version.startswith("synthetic-gcn-")
    assert bundle.class_names == ["legit", "suspicious", "fraud"]


def tamper_weights(root: Path) -> None:
    weights = np.load(root / "graph/weights.npy")
    weights[0] += 1.0
    np.save(root / "graph/weights.npy", weights)


def flip_onnx_byte(root: Path) -> None:
    data = bytearray((root / "student.onnx").read_bytes())
    data[-1] ^= 1
    (root / "student.onnx").write_bytes(bytes(data))


@pytest.mark.parametrize(("mutate", "reason"), [
    (tamper_weights, "graph/weights.npy: sha256"),
    (flip_onnx_byte, "student.onnx: sha256"),
    (lambda r: (r / "graph/indices.npy").unlink(), "graph/indices.npy is listed in manifest.files but missing"),
    (lambda r: edit_manifest(r, schema_version=2), "unknown bundle schema_version 2"),
    (lambda r: edit_manifest(r, schema_version=None), "unknown bundle schema_version None"),
    (lambda r: (r / "manifest.json").unlink(), "manifest.json is missing"),
    (lambda r: (r / "manifest.json").write_text("{not json"), "not readable JSON"),
    (lambda r: edit_manifest(r, files={"report.md": sha256(r / "report.md")}), "not listed in manifest.files"),
    (lambda r: add_file_entry(r, "../escape"), "points outside the bundle"),
    (lambda r: drop_key(r, "version"), "lacks keys ['version']"),
], ids=["weights", "onnx", "missing-file", "schema-2", "no-schema", "no-manifest", "bad-json", "unlisted",
        "traversal", "no-version"])
def test_bad_bundles_are_refused(copy: Path, mutate, reason: str) -> None:
    mutate(copy)
    with pytest.raises(BundleError, match=re.escape(reason)):
        load(copy)


def test_consistent_but_wrong_arrays_are_refused(copy: Path) -> None:
    # Hashes updated to match: the shape / dtype checks must still catch a broken array.
    np.save(copy / "graph/weights.npy", np.zeros(3, dtype=np.float32))
    rehash(copy, "graph/weights.npy")
    with pytest.raises(BundleError, match="CSR is inconsistent"):
        load(copy)
    np.save(copy / "graph/features.npy", np.zeros((300, 8), dtype=np.float64))
    rehash(copy, "graph/features.npy")
    with pytest.raises(BundleError, match="expected float32"):
        load(copy)


def test_pickled_arrays_are_refused(copy: Path) -> None:
    np.save(copy / "graph/node_ids.npy", np.array([object()] * 300), allow_pickle=True)
    rehash(copy, "graph/node_ids.npy")
    with pytest.raises(BundleError, match="not a plain .npy"):
        load(copy)


def test_model_that_disagrees_with_the_manifest_is_refused(copy: Path) -> None:
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["dataset"]["class_names"].append("extra")
    manifest["dataset"]["num_classes"] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="outputs 3 classes, the manifest names 4"):
        Model(load(copy), 1)
