"""Integrity of what a reader serves: in-memory arrays hashed as read, finiteness, links out of
the bundle, and optional HMAC signatures (issue 15's integrity rows)."""

import json
import os

import numpy as np
import pytest

from bundle import files, signing
from bundle.errors import BundleInvalid
from tests.bundle.test_manifest import write_hand_bundle
from tests.tamper import npy, tamper

KEY = b"k3y-for-tests-0123456789-abcdefghijkl"


def test_an_edit_after_load_changes_nothing_loaded(tmp_path):
    root = tmp_path / "b"
    write_hand_bundle(root)
    graph = files.open_bundle(root).graph
    before = graph.features.copy()
    (root / "graph/features.npy").write_bytes(npy(np.full((3, 2), 7.0, dtype=np.float32)))
    assert np.array_equal(graph.features, before)  # a memory map would now read 7.0
    assert not graph.features.flags.writeable


def test_a_truncated_array_is_refused_at_load_not_a_crash_later(tmp_path):
    root = tmp_path / "b"
    write_hand_bundle(root)
    tamper(root, "graph/features.npy", lambda b: b[:-8], rehash=True)
    with pytest.raises(BundleInvalid, match="do not hold"):
        files.open_bundle(root)


@pytest.mark.parametrize("rel, values", [
    ("graph/features.npy", np.array([[1, np.nan], [0, 0], [0, 0]], dtype=np.float32)),
    ("graph/weights.npy", np.array([0.5, np.inf, 1.0, 1.0], dtype=np.float32)),
])
def test_non_finite_arrays_are_refused_even_with_matching_hashes(tmp_path, rel, values):
    root = tmp_path / "b"
    write_hand_bundle(root)
    tamper(root, rel, npy(values), rehash=True)
    with pytest.raises(BundleInvalid, match="NaN or Inf"):
        files.open_bundle(root)


def test_a_manifest_linked_from_outside_the_bundle_is_refused(tmp_path):
    root = tmp_path / "b"
    write_hand_bundle(root)
    outside = tmp_path / "elsewhere.json"
    (root / "manifest.json").rename(outside)
    os.symlink(outside, root / "manifest.json")
    with pytest.raises(BundleInvalid, match="outside the bundle"):
        files.open_bundle(root)


def test_a_signed_bundle_opens_with_its_key(tmp_path):
    root = tmp_path / "b"
    write_hand_bundle(root)
    signing.sign(root, KEY)
    assert files.open_bundle(root, KEY).manifest.dataset.name == "hand"
    assert files.open_bundle(root).manifest.dataset.name == "hand"  # no key: signatures are not required


def test_an_unsigned_bundle_is_refused_when_a_key_is_required(tmp_path):
    root = tmp_path / "b"
    write_hand_bundle(root)
    with pytest.raises(BundleInvalid, match="not signed"):
        files.open_bundle(root, KEY)


def test_another_key_or_an_edited_manifest_breaks_the_signature(tmp_path):
    root = tmp_path / "b"
    write_hand_bundle(root)
    signing.sign(root, b"another-key-0123456789-abcdefghijklmn")
    with pytest.raises(BundleInvalid, match="signature does not match"):
        files.open_bundle(root, KEY)
    signing.sign(root, KEY)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["metrics"] = {"accuracy": 1.0}  # a report-only edit keeps the version but not the signature
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleInvalid, match="signature does not match"):
        files.open_bundle(root, KEY)


@pytest.mark.parametrize("key", [b"short", b"a" * 64])
def test_weak_keys_are_refused(key):
    with pytest.raises(ValueError, match="at least 32 bytes with real entropy"):
        signing.check_key(key, "SERVE_BUNDLE_KEY")


def test_the_full_digest_is_checked_not_only_the_versions_12_hex_digits(tmp_path):
    root = tmp_path / "b"
    write_hand_bundle(root)
    manifest = json.loads((root / "manifest.json").read_text())
    assert len(manifest["digest"]) == 64 and manifest["version"].endswith(manifest["digest"][:12])
    manifest["digest"] = manifest["digest"][:12] + "0" * 52  # a 48-bit match: what a search could forge
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleInvalid, match="not the digest of what is served"):
        files.open_bundle(root)


def test_a_npy_header_with_negative_dimensions_is_a_contract_error(tmp_path):
    root = tmp_path / "b"
    write_hand_bundle(root)
    data = (root / "graph/node_ids.npy").read_bytes()
    tamper(root, "graph/node_ids.npy", data.replace(b"(3,)", b"(-3,)", 1), rehash=True)
    with pytest.raises(BundleInvalid, match="node_ids"):
        files.open_bundle(root)
