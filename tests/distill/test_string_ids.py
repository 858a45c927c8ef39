"""Graphs keyed by strings on the job's side: `synthetic:ids=str` and an npz file's `node_ids` give the
Dataset its external ids, the job writes them into the bundle (and its served check scores through
them), and `distill score` reads string ids and writes them back in every format."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from distill.cli import main
from distill.data import load_dataset
from distill.errors import DatasetError
from distill.synthetic import SyntheticConfig
from serve.runtime import open_service

TINY = ["--teacher-layers", "2", "--teacher-hidden", "16", "--epochs", "20", "--patience", "5", "--quiet",
        "--threads", "1"]
N = 60
# Ids that CSV must quote (a comma, a quote), a non-ASCII one, and one with inner blanks.
AWKWARD = ["has,comma", 'has"quote', "ünï-çødé", "two  blanks"]
NAMES = AWKWARD + [f"user-{i:04d}" for i in range(len(AWKWARD), N)]


def write_graph(path: Path, node_ids: np.ndarray | None = None) -> Path:
    """A 60-node two-class npz graph (a ring with chords), one split, and `node_ids` when given."""
    rng = np.random.default_rng(0)
    y = np.arange(N) % 2
    arrays = {
        "node_features": (rng.normal(size=(N, 4)) + y[:, None]).astype(np.float32),
        "node_labels": y.astype(np.int64),
        "edges": np.array([[i, (i + 1) % N] for i in range(N)] + [[i, (i + 7) % N] for i in range(N)]),
        "train_masks": (np.arange(N) < 30)[None], "val_masks": ((np.arange(N) >= 30) & (np.arange(N) < 40))[None],
        "test_masks": (np.arange(N) >= 40)[None],
    }
    if node_ids is not None:
        arrays["node_ids"] = node_ids
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sage-res bundle (graph student, degree column) of the npz graph keyed by NAMES."""
    root = tmp_path_factory.mktemp("string-ids")
    data = write_graph(root / "graph.npz", np.array(NAMES))
    out = root / "bundle"
    assert main(["run", "--out", str(out), "--dataset", f"npz:{data}", "--student", "sage-res", *TINY]) == 0
    return out


def test_the_job_writes_the_graphs_string_ids(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["graph"]["id_type"] == "string"
    stored = np.load(bundle / "graph/node_ids.npy", allow_pickle=False)
    assert stored.dtype == np.dtype("<U11") and stored.tolist() == NAMES
    assert manifest["parity"]["max_abs_diff"] <= manifest["parity"]["tolerance"]  # the served check ran on them


def test_synthetic_ids_str_names_the_same_graph(tmp_path: Path) -> None:
    ints, strs = load_dataset("synthetic:nodes=40"), load_dataset("synthetic:nodes=40,ids=str")
    assert ints.node_ids is None and ints.external_ids.tolist() == list(range(40))
    assert strs.node_ids is not None and strs.node_ids.tolist() == [f"acct-{i:06d}" for i in range(40)]
    assert bool((ints.data.x == strs.data.x).all()) and bool((ints.data.edge_index == strs.data.edge_index).all())
    # Int graphs record the options as before (the record enters the version digest).
    assert "ids" not in ints.source["config"] and strs.source["config"]["ids"] == "str"
    with pytest.raises(DatasetError, match=r"ids='uuid'; expected one of \['int', 'str'\]"):
        SyntheticConfig.parse("ids=uuid")


@pytest.mark.slow
def test_a_synthetic_ids_str_job_writes_a_string_bundle(tmp_path: Path) -> None:
    out = tmp_path / "b"
    assert main(["run", "--out", str(out), "--dataset", "synthetic:nodes=300,features=8,ids=str", "--student", "mlp",
                 *TINY]) == 0
    assert json.loads((out / "manifest.json").read_text())["graph"]["id_type"] == "string"
    scorer = open_service(out).scorer
    assert scorer.store.id_type == "string" and scorer.store.node_ids[17] == "acct-000017"
    assert scorer.score(["acct-000017"]).probabilities.shape == (1, 3)


def test_npz_node_ids_are_checked(tmp_path: Path) -> None:
    cases = {
        "dup": (np.array(["a"] * N), "not unique"),
        "short": (np.array(NAMES[:-1]), r"node_ids must be \[N\] = \[60\]"),
        "control": (np.array(["bad\tid", *NAMES[1:]]), "control character"),
        "long": (np.array(["x" * 257, *NAMES[1:]]), "257 characters; at most 256"),
        "float": (np.linspace(0, 1, N), "integers or strings, not float64"),
        "object": (np.array(NAMES, dtype=object), "cannot read"),  # np.load refuses pickles
    }
    for key, (ids, needle) in cases.items():
        with pytest.raises(DatasetError, match=needle):
            load_dataset(f"npz:{write_graph(tmp_path / f'{key}.npz', ids)}")
    utf8 = load_dataset(f"npz:{write_graph(tmp_path / 'bytes.npz', np.array([n.encode() for n in NAMES]))}")
    assert utf8.node_ids is not None and utf8.node_ids.tolist() == NAMES
    ints = load_dataset(f"npz:{write_graph(tmp_path / 'ints.npz', np.arange(N, dtype=np.int32) * 10)}")
    assert ints.node_ids is not None and ints.node_ids.dtype == np.int64 and ints.node_ids[3] == 30


def test_score_reads_and_writes_string_ids(bundle: Path, tmp_path: Path) -> None:
    picked = [NAMES[5], AWKWARD[0], AWKWARD[1], AWKWARD[2], AWKWARD[3], NAMES[5]]
    nodes = tmp_path / "ids.txt"
    nodes.write_text("\r\n".join(picked) + "\r\n\r\n", encoding="utf-8")
    expected = open_service(bundle).scorer.score(picked).probabilities
    out = tmp_path / "s.csv"
    assert main(["score", "--bundle", str(bundle), "--out", str(out), "--nodes", str(nodes), "--quiet"]) == 0
    with out.open(newline="", encoding="utf-8") as fh:
        header, *rows = list(csv.reader(fh))
    assert header[0] == "node_id" and [r[0] for r in rows] == picked
    np.testing.assert_allclose(np.array([[float(v) for v in r[2:]] for r in rows]), expected, atol=1e-6, rtol=0)

    npy_nodes = tmp_path / "ids.npy"
    np.save(npy_nodes, np.array(picked), allow_pickle=False)
    out = tmp_path / "s.npy"
    assert main(["score", "--bundle", str(bundle), "--out", str(out), "--nodes", str(npy_nodes), "--quiet"]) == 0
    table = np.load(out, allow_pickle=False)
    assert table.dtype["node_id"] == np.dtype("<U11") and table["node_id"].tolist() == picked


def test_score_writes_every_string_id_to_parquet(bundle: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq  # in the dev extra: the Parquet path is tested, not skipped

    out = tmp_path / "s.parquet"
    assert main(["score", "--bundle", str(bundle), "--out", str(out), "--quiet"]) == 0
    table = pq.read_table(out)
    assert str(table.schema.field("node_id").type) == "string" and table.column("node_id").to_pylist() == NAMES


@pytest.mark.parametrize("content, needle", [
    ("user-0010\nnobody\n", "1 id(s) are not in the bundle's graph (e.g. nobody)"),
    ("user-0010\nbad\x01id\n", "not a readable list of string node ids"),
])
def test_score_refuses_bad_string_id_files(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           content: str, needle: str) -> None:
    nodes = tmp_path / "ids.txt"
    nodes.write_text(content, encoding="utf-8")
    out = tmp_path / "s.csv"
    assert main(["score", "--bundle", str(bundle), "--out", str(out), "--nodes", str(nodes), "--quiet"]) == 2
    assert needle in capsys.readouterr().err and not out.exists()


def test_score_refuses_integer_npy_for_a_string_bundle(bundle: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    nodes = tmp_path / "ids.npy"
    np.save(nodes, np.arange(3))
    assert main(["score", "--bundle", str(bundle), "--out", str(tmp_path / "s.csv"), "--nodes", str(nodes),
                 "--quiet"]) == 2
    assert "this bundle's node ids are strings: expected a 1-D unicode array" in capsys.readouterr().err


def test_refresh_compares_parent_and_child_on_the_same_string_ids(bundle: Path, tmp_path: Path) -> None:
    data = bundle.parent / "graph.npz"
    child = tmp_path / "child"
    assert main(["refresh", "--bundle", str(bundle), "--dataset", f"npz:{data}", "--out", str(child),
                 "--reuse-teacher", "--quiet", "--allow-worse"]) == 0
    gate = json.loads((child / "manifest.json").read_text())["refresh"]
    assert gate["nodes"] == 10  # every validation node (30..39) matched in the parent by its string id


def test_select_times_a_string_bundle(tmp_path: Path) -> None:
    data = write_graph(tmp_path / "graph.npz", np.array(NAMES))
    out = tmp_path / "sel"
    assert main(["select", "--out", str(out), "--dataset", f"npz:{data}", "--latency-budget-ms", "50",
                 "--grid", "mlp:2:8", "--calls", "100", "--http-calls", "20", *TINY]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["graph"]["id_type"] == "string" and manifest["selection"]["timed"] == "http"
