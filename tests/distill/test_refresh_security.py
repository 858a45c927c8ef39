"""Nothing from a bundle is executed: refresh takes its dataset from the command line, and a
Planetoid spec (raw files are pickles) loads only the globals real Planetoid files use."""

import dataclasses
import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from distill import refresh
from distill.cli import main
from distill.data import PLANETOID_PARTS, load_dataset
from distill.errors import DatasetError, DistillError
from tests.distill.test_select_refresh import TINY


class _Payload:
    """Unpickling this creates `marker`: the proof that a pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def plant_planetoid(folder: Path, marker: Path) -> Path:
    """A Planetoid-shaped folder whose every raw file is a pickle that creates `marker` when loaded."""
    raw = folder / "raw"
    raw.mkdir(parents=True)
    for part in PLANETOID_PARTS:
        (raw / f"ind.evil.{part}").write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    return folder


def test_a_planetoid_pickle_naming_other_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "pwned"
    folder = plant_planetoid(tmp_path / "evil", marker)
    with pytest.raises(DatasetError, match="refusing to load posix.mkdir"):  # never called: not on the list
        load_dataset(f"planetoid:{folder}")
    assert not marker.exists()


def test_refresh_never_reads_the_dataset_a_parent_names(tmp_path, capsys):
    parent = tmp_path / "v1"
    assert main(["run", "--out", str(parent), *TINY]) == 0
    marker = tmp_path / "pwned"
    plant_planetoid(parent / "evil", marker)  # files inside the bundle, pointed at by its own config
    manifest = json.loads((parent / "manifest.json").read_text())
    manifest["config"]["dataset"] = f"planetoid:{parent / 'evil'}"
    (parent / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit) as exit_info:  # no --dataset: refused, the parent's is not a default
        main(["refresh", "--bundle", str(parent), "--out", str(tmp_path / "v2"), "--quiet"])
    assert exit_info.value.code == 2 and "--dataset" in capsys.readouterr().err
    assert main(["refresh", "--bundle", str(parent), "--out", str(tmp_path / "v2"), "--quiet", "--reuse-teacher",
                 *TINY[:2]]) == 0
    assert not marker.exists()
    assert json.loads((tmp_path / "v2" / "manifest.json").read_text())["config"]["dataset"] == TINY[1]


class _ObjectDtype:
    def __reduce__(self):
        return (np.dtype, ("O",))


class _ForgedPointers:
    """An object array over the pickle's own bytes (what `list()` would dereference as pointers)."""

    def __reduce__(self):
        return (np.ndarray, ((1,), _ObjectDtype(), b"\x41" * 8))


class _Listed:
    def __reduce__(self):
        return (list, (_ForgedPointers(),))


def _out_of_bounds_csr() -> sp.csr_matrix:
    matrix = sp.csr_matrix(np.ones((1, 2), dtype=np.float32))
    matrix.indices = np.array([1 << 40, 1], dtype=np.int64)  # .todense() would write far outside the array
    return matrix


@pytest.mark.parametrize("payload, needle", [(_Listed(), "refusing"), (_out_of_bounds_csr(), "malformed sparse")],
                         ids=["forged-object-array", "csr-indices-out-of-bounds"])
def test_allow_listed_globals_cannot_forge_memory(tmp_path, payload, needle):
    raw = tmp_path / "evil" / "raw"
    raw.mkdir(parents=True)
    for part in PLANETOID_PARTS:
        (raw / f"ind.evil.{part}").write_bytes(pickle.dumps(payload, protocol=4))
    # In a child process: the failure this guards against is a segfault, which would end pytest itself.
    code = ("from distill.data import load_dataset\nfrom distill.errors import DatasetError\ntry:\n"
            f"    load_dataset('planetoid:{tmp_path / 'evil'}')\nexcept DatasetError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and needle in done.stdout, (done.returncode, done.stdout, done.stderr[-500:])


def test_refresh_uses_only_what_it_verified(tmp_path):
    parent = tmp_path / "v1"
    assert main(["run", "--out", str(parent), *TINY]) == 0
    verified = refresh.read_parent(parent)
    (parent / "teacher.pt").write_bytes(b"swapped after the check")
    with pytest.raises(DistillError, match="does not match its sha256"):
        refresh.verified_teacher(verified)
    unlisted = dataclasses.replace(verified, manifest=verified.manifest.model_copy(
        update={"files": {k: v for k, v in verified.manifest.files.items() if k != "teacher.pt"}}))
    with pytest.raises(DistillError, match="lists no teacher file"):
        refresh.verified_teacher(unlisted)
    manifest = json.loads((parent / "manifest.json").read_text())
    manifest["files"]["teacher.pt"] = hashlib.sha256(b"swapped after the check").hexdigest()
    (parent / "manifest.json").write_text(json.dumps(manifest))  # still a valid bundle, another manifest
    with pytest.raises(DistillError, match="changed while the child was trained"):
        refresh.parent_validation(verified, None, np.arange(3))
