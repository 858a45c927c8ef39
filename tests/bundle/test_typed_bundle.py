"""Typed (meta-path) bundles: the `graph.typed` section, its arrays, and the one expansion rule."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

from bundle import files, typed
from bundle.errors import BundleInvalid
from bundle.manifest import GraphFiles, Manifest
from tests.bundle.test_manifest import _edit, write_hand_bundle
from tests.bundle.test_string_ids import GOLDEN

# 3 papers (the hand bundle's nodes), 2 authors: author 0 wrote papers 0 and 1, author 1 paper 2; 1 subject.
PAPERS, AUTHORS = np.array([0, 1, 2]), np.array([0, 0, 1])


def write_typed_bundle(root: Path, author_ids: np.ndarray | None = None) -> Manifest:
    """The hand bundle of tests/bundle/test_manifest.py with a typed section (paper-author-paper)."""
    manifest = write_hand_bundle(root)
    section = typed.save(root, "paper", 2, [("paper", 3, True), ("author", 2, True), ("subject", 1, False)],
                         {"author": ("writes", typed.Incidence.from_pairs(PAPERS, AUTHORS, 2))},
                         None if author_ids is None else {"author": author_ids})
    graph = GraphFiles(**{**manifest.graph.model_dump(), "typed": section})
    manifest = files.with_version(manifest.model_copy(update={"graph": graph, "files": files.file_hashes(root)}))
    files.write_manifest(root, manifest)
    return manifest


def _rehash(root: Path) -> None:
    """Re-sign the manifest's hashes and version after a deliberate edit, so only the checked rule fails."""
    manifest = Manifest.parse((root / "manifest.json").read_text())
    updated = manifest.model_copy(update={"files": files.file_hashes(root)})
    files.write_manifest(root, files.with_version(updated))


def test_a_typed_bundle_round_trips_and_serves_its_arrays(tmp_path):
    written = write_typed_bundle(tmp_path / "b")
    opened = files.open_bundle(tmp_path / "b")
    assert opened.manifest == written and opened.manifest.typed == written.typed
    section = opened.manifest.typed
    assert section.target == "paper" and section.link_types == ["author", "subject"]
    assert {"typed/author_indptr.npy", "typed/author_indices.npy"} <= set(opened.manifest.served_files)
    arrays = opened.typed
    assert arrays is not None
    assert arrays.incidence["author"].indptr.tolist() == [0, 2, 3]
    assert arrays.incidence["author"].indices.tolist() == [0, 1, 2]
    assert arrays.index(section, "subject").lookup(np.array([0, 1]))[1].tolist() == [1]


def test_the_version_digest_covers_the_typed_section_and_its_arrays(tmp_path):
    written = write_typed_bundle(tmp_path / "b")
    assert written.digest != GOLDEN[False][0]
    renamed = written.model_copy(update={"graph": written.graph.model_copy(update={"typed": written.typed.model_copy(
        update={"via": [written.typed.via[0].model_copy(update={"relation": "authored"})]})})})
    assert files.with_version(renamed).version != written.version
    np.save(tmp_path / "b" / "typed/author_indices.npy", np.array([0, 1, 1]))
    with pytest.raises(BundleInvalid, match="typed/author_indices.npy: sha256"):
        files.open_bundle(tmp_path / "b")


def test_homogeneous_manifests_keep_their_bytes_and_digest(tmp_path):
    manifest = write_hand_bundle(tmp_path / "b")
    raw = (tmp_path / "b" / "manifest.json").read_bytes()
    assert b"typed" not in raw and manifest.typed is None
    assert (manifest.digest, hashlib.sha256(raw).hexdigest()) == GOLDEN[False]


@pytest.mark.parametrize("links, expected", [
    ({"author": [0]}, [0, 1]),
    ({"author": [1, 0, 1]}, [0, 1, 2]),
    ({"author": []}, []),
    ({"subject": [0]}, []),  # no incidence: a type the student does not read adds nobody
    ({}, []),
])
def test_metapath_neighbours_is_the_union_of_the_via_rows(links, expected):
    incidence = {"author": typed.Incidence.from_pairs(PAPERS, AUTHORS, 2)}
    found = typed.metapath_neighbours(incidence, {k: np.array(v, dtype=np.int64) for k, v in links.items()})
    assert found.dtype == np.int64 and found.tolist() == expected


def test_two_via_types_union_and_repeat_links_count_once():
    incidence = {"user": typed.Incidence.from_pairs(np.array([0, 1, 1]), np.array([0, 0, 0]), 1),
                 "device": typed.Incidence.from_pairs(np.array([2, 3]), np.array([0, 1]), 2)}
    assert incidence["user"].indices.tolist() == [0, 1]  # the repeated (1, 0) link is stored once
    links = {"user": np.array([0]), "device": np.array([1, 0])}
    assert typed.metapath_neighbours(incidence, links).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("change, needle", [
    (lambda t: t["via"][0].update(type="subject"), "via types"),
    (lambda t: t.update(target="venue"), "hold the target"),
    (lambda t: t["node_types"].append(dict(t["node_types"][1])), "distinct"),
    (lambda t: t["node_types"][1].update(name="../x"), "pattern"),
    (lambda t: t["node_types"][2].update(id_type="string"), "string ids need them"),
    (lambda t: t.update(colour="red"), "Extra inputs are not permitted"),
    (lambda t: t["node_types"][0].update(num_nodes=4), "target count and feature width"),
])
def test_malformed_typed_sections_are_refused(tmp_path, change, needle):
    write_typed_bundle(tmp_path / "b")
    _edit(tmp_path / "b", lambda m: change(m["graph"]["typed"]))
    with pytest.raises(BundleInvalid, match=needle):
        files.open_bundle(tmp_path / "b")


@pytest.mark.parametrize("indptr, indices, needle", [
    ([0, 2, 3], [1, 0, 2], "ascending distinct"),
    ([0, 2, 3], [0, 1, 3], "ascending distinct"),  # target 3 of 3
    ([0, 3], [0, 1, 2], "ascending distinct"),  # one row for two authors
])
def test_a_malformed_incidence_is_refused_at_load(tmp_path, indptr, indices, needle):
    root = tmp_path / "b"
    write_typed_bundle(root)
    np.save(root / "typed/author_indptr.npy", np.array(indptr, dtype=np.int64))
    np.save(root / "typed/author_indices.npy", np.array(indices, dtype=np.int64))
    _rehash(root)
    with pytest.raises(BundleInvalid, match=needle):  # hashes fit: only the incidence rule can refuse it
        files.open_bundle(root)


def test_pickled_or_mistyped_arrays_are_refused_not_unpickled(tmp_path):
    root = tmp_path / "b"
    write_typed_bundle(root)
    np.save(root / "typed/author_indices.npy", np.array([0, 1, 2], dtype=object), allow_pickle=True)
    _rehash(root)
    with pytest.raises(BundleInvalid, match="not a plain .npy array"):
        files.open_bundle(root)
    np.save(root / "typed/author_indices.npy", np.array([0, 1, 2], dtype=np.int32))
    _rehash(root)
    with pytest.raises(BundleInvalid, match=r"expected int64 with 1 dims \(C order\), got int32"):
        files.open_bundle(root)


def test_via_nodes_with_their_own_ids_round_trip_and_resolve(tmp_path):
    root = tmp_path / "b"
    written = write_typed_bundle(root, author_ids=np.array(["ada", "bob"]))
    assert written.typed.node_type("author").id_type == "string"
    opened = files.open_bundle(root)
    arrays = opened.typed
    assert arrays is not None
    internal, unknown = arrays.index(opened.manifest.typed, "author").lookup(np.array(["bob", "eve"]))
    assert internal.tolist() == [1, -1] and unknown.tolist() == ["eve"]
