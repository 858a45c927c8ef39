"""Bundle verification: the service refuses anything that does not match its manifest."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serve.bundle import load
from serve.errors import BundleError
from serve.model import Model
from tests.serve.conftest import TinyBundle
from tests.tamper import copy_bundle, edit_json, flip_last_byte, npy, reversion, tamper


@pytest.fixture
def copy(gcn: TinyBundle, tmp_path: Path) -> Path:
    return copy_bundle(gcn.path, tmp_path / "bundle")


def edit_manifest(edit: Callable[[dict[str, Any]], object]) -> Callable[[Path], Path]:
    return lambda root: tamper(root, "manifest.json", edit_json(edit))


def test_valid_bundle_loads(gcn: TinyBundle) -> None:
    bundle = load(gcn.path)
    assert bundle.graph.features.shape == (300, 8)
    assert bundle.version.startswith("synthetic-gcn-")
    assert bundle.class_names == ["legit", "suspicious", "fraud"]


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda r: tamper(r, "graph/weights.npy", flip_last_byte), "graph/weights.npy: sha256"),
    (lambda r: tamper(r, "student.onnx", flip_last_byte), "student.onnx: sha256"),
    (lambda r: (r / "graph/indices.npy").unlink(), "graph/indices.npy is listed in manifest.files but missing"),
    (edit_manifest(lambda m: m.update(schema_version=99)), "unknown bundle schema_version 99"),
    (edit_manifest(lambda m: m.update(schema_version=None)), "unknown bundle schema_version None"),
    (lambda r: (r / "manifest.json").unlink(), "manifest.json is missing"),
    (lambda r: tamper(r, "manifest.json", b"{not json"), "manifest.json"),
    (edit_manifest(lambda m: m.update(files={"report.md": m["files"]["report.md"]})), "not listed in manifest.files"),
    (edit_manifest(lambda m: m["files"].update({"../escape": "0" * 64})), "points outside the bundle"),
    (edit_manifest(lambda m: m.pop("version")), "version"),
], ids=["weights", "onnx", "missing-file", "unknown-schema", "no-schema", "no-manifest", "bad-json", "unlisted",
        "traversal", "no-version"])
def test_bad_bundles_are_refused(copy: Path, mutate: Callable[[Path], object], reason: str) -> None:
    mutate(copy)
    with pytest.raises(BundleError, match=re.escape(reason)):
        load(copy)


def test_tampered_file_is_named_in_the_detail(copy: Path) -> None:
    tamper(copy, "graph/features.npy", flip_last_byte)
    with pytest.raises(BundleError) as caught:
        load(copy)
    assert caught.value.detail == {"file": "graph/features.npy"}


def test_consistent_but_wrong_arrays_are_refused(copy: Path) -> None:
    # Hashes (and the version naming them) updated to match: the shape / dtype checks must still
    # catch a broken array.
    tamper(copy, "graph/weights.npy", npy(np.zeros(3, dtype=np.float32)), rehash=True)
    with pytest.raises(BundleError, match="CSR is inconsistent"):
        load(copy)
    tamper(copy, "graph/features.npy", npy(np.zeros((300, 8), dtype=np.float64)), rehash=True)
    with pytest.raises(BundleError, match="expected float32"):
        load(copy)


def test_pickled_arrays_are_refused(copy: Path) -> None:
    tamper(copy, "graph/node_ids.npy", npy(np.array([object()] * 300), allow_pickle=True), rehash=True)
    with pytest.raises(BundleError, match="not a plain .npy"):
        load(copy)


def test_model_that_disagrees_with_the_manifest_is_refused(copy: Path) -> None:
    def one_more_class(manifest: dict[str, Any]) -> None:
        manifest["dataset"]["class_names"].append("extra")
        manifest["dataset"]["num_classes"] += 1
        reversion(manifest)  # a consistent manifest: only the model's signature check can catch it

    tamper(copy, "manifest.json", edit_json(one_more_class))
    with pytest.raises(BundleError, match="outputs 3 classes, the manifest names 4"):
        Model(load(copy), 1)
