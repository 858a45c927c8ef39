"""Nothing from a bundle is executed: refresh takes its dataset from the command line, and a
Planetoid spec (raw files are pickles) loads only the globals real Planetoid files use."""

import json
import os
import pickle
from pathlib import Path

import pytest

from distill.cli import main
from distill.data import PLANETOID_PARTS, load_dataset
from distill.errors import DatasetError
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
    with pytest.raises(DatasetError, match="refusing to load posix.mkdir"):
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
