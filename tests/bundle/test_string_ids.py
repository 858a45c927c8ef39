"""String node ids in the contract (bundle/ids.py, bundle/files.py, GraphFiles.id_type): a hand-made
bundle keyed by strings opens and resolves its ids; bad id arrays are refused at load naming the file;
int bundles keep the manifest bytes and the version digest of earlier releases."""

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from bundle import files, ids
from bundle.errors import BundleInvalid
from bundle.manifest import GraphFiles, Manifest
from tests.bundle.test_manifest import write_hand_bundle
from tests.tamper import tamper

NAMES = np.array(["acct-10", "acct-20", "ü-30 with, comma"])


def write_string_bundle(root: Path) -> Manifest:
    """The hand bundle (tests/bundle/test_manifest.py) with its ids [10, 20, 30] replaced by NAMES."""
    write_hand_bundle(root)
    np.save(root / "graph/node_ids.npy", NAMES, allow_pickle=False)
    manifest = Manifest.parse((root / "manifest.json").read_bytes())
    graph = GraphFiles(**{**manifest.graph.model_dump(), "id_type": "string"})
    manifest = files.with_version(manifest.model_copy(update={"graph": graph, "files": files.file_hashes(root)}))
    files.write_manifest(root, manifest)
    return manifest


def npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def test_a_string_bundle_round_trips_and_resolves_its_ids(tmp_path):
    written = write_string_bundle(tmp_path / "b")
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["graph"]["id_type"] == "string"
    opened = files.open_bundle(tmp_path / "b")
    assert opened.manifest == written and opened.manifest.graph.id_type == "string"
    assert opened.graph.node_ids.dtype == np.dtype("<U16") and opened.graph.node_ids.tolist() == NAMES.tolist()
    index = ids.IdIndex(opened.graph.node_ids)
    internal, unknown = index.lookup(ids.to_array(["ü-30 with, comma", "nope", "acct-10", "acct-1"], "string"))
    assert internal.tolist() == [2, -1, 0, -1] and unknown.tolist() == ["acct-1", "nope"]


# The hand bundles' digest and manifest sha256, computed before string ids existed.
GOLDEN = {False: ("520488a1019197c6c8ad5124d574f8c9c53d2a7f150983ef057013d2338e62f4",
                      "21dee44579b78e22656ac2684dcc80cb3dae175932fde3ecb412624bce154243"),
              True: ("3650a3bc74b2ab0f767439823b873879a25d130ed1dae682d3a2e7ece2062e49",
                     "4aaa722bca89e5e5226be9f1963357653971692834800c7092e4b00930f3dfdb")}


@pytest.mark.parametrize("degree", [False, True])
def test_int_bundles_keep_the_manifest_bytes_and_digest_of_earlier_releases(tmp_path, degree):
    # id_type "int64" is the default and is left out of the manifest, so it is out of the digest too.
    manifest = write_hand_bundle(tmp_path / "b", degree)
    raw = (tmp_path / "b" / "manifest.json").read_bytes()
    assert manifest.graph.id_type == "int64" and b"id_type" not in raw
    assert (manifest.digest, hashlib.sha256(raw).hexdigest()) == GOLDEN[degree]
    assert files.open_bundle(tmp_path / "b").manifest.version == f"hand-gcn-{GOLDEN[degree][0][:12]}"


def test_id_type_int64_written_out_reads_as_the_same_version(tmp_path):
    write_hand_bundle(tmp_path / "b")
    path = tmp_path / "b" / "manifest.json"
    data = json.loads(path.read_text())
    data["graph"]["id_type"] = "int64"
    path.write_text(json.dumps(data))
    assert files.open_bundle(tmp_path / "b").manifest.digest == GOLDEN[False][0]


@pytest.mark.parametrize("bad, needle", [
    (np.array(["acct-10", "acct-20", "acct-10"]), "not unique"),
    (np.array(["acct-10", "a\x00b", "acct-30"]), "index 1 .* control character"),
    (np.array(["acct-10", "acct-20", "tab\there"]), "index 2 .* control character"),
    (np.array(["acct-10", "\x85", "acct-30"]), "index 1 .* control character"),  # C1 control (NEL)
    (np.array(["", "acct-20", "acct-30"]), "index 0 .* is empty"),
    (np.array(["a" * 257, "b", "c"]), "<U1 .. <U256"),
    (np.array(["acct-10", "acct-20", "acct-30"], dtype=">U7"), "<U1 .. <U256"),  # big-endian
    (np.array([b"acct-10", b"acct-20", b"acct-30"]), "<U1 .. <U256"),  # bytes: not the contract's form
    (np.array([10, 20, 30]), "<U1 .. <U256"),  # int64 under id_type "string"
])
def test_bad_string_ids_are_refused_at_load_naming_the_file(tmp_path, bad, needle):
    root = tmp_path / "b"
    write_string_bundle(root)
    tamper(root, "graph/node_ids.npy", npy(bad), rehash=True)
    with pytest.raises(BundleInvalid, match=needle) as caught:
        files.open_bundle(root)
    assert "graph/node_ids.npy" in caught.value.message
    assert caught.value.detail == {"file": "graph/node_ids.npy"}


def test_object_arrays_are_refused_not_unpickled(tmp_path):
    root = tmp_path / "b"
    write_string_bundle(root)
    tamper(root, "graph/node_ids.npy", npy(NAMES.astype(object), allow_pickle=True), rehash=True)
    with pytest.raises(BundleInvalid, match="graph/node_ids.npy is not a plain .npy array: it holds pickled objects"):
        files.open_bundle(root)


def test_string_ids_under_an_int_manifest_are_refused(tmp_path):
    root = tmp_path / "b"
    write_hand_bundle(root)
    tamper(root, "graph/node_ids.npy", npy(NAMES), rehash=True)
    with pytest.raises(BundleInvalid, match="graph/node_ids.npy: expected int64"):
        files.open_bundle(root)


def test_the_writer_cannot_save_object_or_overlong_ids(tmp_path):
    csr = files.CSR(np.array([0, 0]), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
    for i, bad in enumerate([np.array(["a"], dtype=object), np.array(["a" * 257])]):
        (tmp_path / str(i)).mkdir()
        graph = files.GraphArrays(np.ones((1, 2), dtype=np.float32), bad, csr)
        with pytest.raises(BundleInvalid, match="node_ids: the contract wants int64 or <U1 .. <U256"):
            files.save_graph(tmp_path / str(i), graph)


def test_request_ids_follow_the_same_rule():
    assert ids.key_problem("acct-1", "string") is None and ids.key_problem(7, "int64") is None
    assert "send JSON strings" in str(ids.key_problem(7, "string"))
    assert "send JSON integers" in str(ids.key_problem("7", "int64"))
    assert "send JSON integers" in str(ids.key_problem(True, "int64"))
    for bad in ("", "a" * 257, "a\x00", "x\ny", "\ud800"):
        assert "1 to 256 characters" in str(ids.key_problem(bad, "string")), bad
    assert ids.key_problem("a" * 256, "string") is None
    with pytest.raises(ids.IdError, match="send JSON strings"):
        ids.to_array(["a", 1], "string")
    with pytest.raises(ids.IdError, match="send JSON integers"):
        ids.to_array([1, "a"], "int64")
    with pytest.raises(ids.IdError, match="1 to 256"):
        ids.to_array(["ok", "a\x00"], "string")  # numpy would strip the NUL and match "a"
    assert ids.to_array([], "string").shape == (0,)


def test_int_lookup_keeps_the_identity_fast_path_and_searches_other_ids():
    dense, sparse = ids.IdIndex(np.arange(4, dtype=np.int64)), ids.IdIndex(np.array([40, -3, 7], dtype=np.int64))
    internal, unknown = dense.lookup(np.array([3, 4, -1, 0]))
    assert internal.tolist() == [3, -1, -1, 0] and unknown.tolist() == [-1, 4]
    internal, unknown = sparse.lookup(np.array([7, 40, 8, -3]))
    assert internal.tolist() == [2, 0, -1, 1] and unknown.tolist() == [8]
