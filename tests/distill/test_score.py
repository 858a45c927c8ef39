"""`distill score`: the probabilities it writes are the service's (serve.scoring.Scorer through
serve.runtime.open_service) for the same nodes, in every format; bad input ends with exit 2 and one
line, nothing written; it runs without importing torch."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distill import score
from distill.cli import main
from serve.runtime import open_service

ROOT = Path(__file__).resolve().parents[2]
SPEC = "synthetic:nodes=300,features=8"
TINY = ["--teacher-layers", "2", "--teacher-hidden", "16", "--epochs", "20", "--patience", "5", "--quiet",
        "--threads", "1"]
# Scores may differ from the service's only by float rounding of a different pack size in onnxruntime's GEMM.
TOL = 1e-6


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """mlp (graph-free) and sage-res (graph, degree column) bundles of a 300-node graph."""
    root = tmp_path_factory.mktemp("score")
    out = {}
    for student in ("mlp", "sage-res"):
        out[student] = root / student
        assert main(["run", "--out", str(out[student]), "--dataset", SPEC, "--student", student, *TINY]) == 0
    return out


def served(bundle: Path, ids: list[int]) -> np.ndarray:
    """What the service answers for `ids`: its default packing, its filled cache -> float32 [n, C]."""
    return open_service(bundle).scorer.score(ids).probabilities


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("distill: error: ") and "\n" not in err, err
    return err


@pytest.mark.slow
@pytest.mark.parametrize("student", ["mlp", "sage-res"])
@pytest.mark.parametrize("batch", ["0", "7"])
def test_every_node_scores_as_served(bundles, tmp_path, student, batch):
    out = tmp_path / "scores.npy"
    assert main(["score", "--bundle", str(bundles[student]), "--out", str(out), "--batch", batch, "--quiet"]) == 0
    table = np.load(out, allow_pickle=False)
    assert table.dtype.names == ("node_id", "label", "prob_legit", "prob_suspicious", "prob_fraud")
    assert table["node_id"].tolist() == list(range(300))
    probs = np.stack([table[name] for name in table.dtype.names[2:]], axis=1)
    expected = served(bundles[student], list(range(300)))
    assert np.abs(probs - expected).max() <= TOL
    assert (table["label"] == probs.argmax(axis=1)).all()
    assert (table["label"] == expected.argmax(axis=1)).all()


@pytest.mark.slow
def test_a_nodes_file_picks_and_orders_the_rows(bundles, tmp_path):
    ids = [299, 5, 5, 0, 123]
    text, npy = tmp_path / "ids.txt", tmp_path / "ids.npy"
    text.write_text("\n".join(map(str, ids)) + "\n\n")
    np.save(npy, np.array(ids, dtype=np.int32))
    expected = served(bundles["sage-res"], ids)
    for nodes in (text, npy):
        out = tmp_path / f"{nodes.suffix[1:]}.csv"
        assert main(["score", "--bundle", str(bundles["sage-res"]), "--out", str(out), "--nodes", str(nodes),
                     "--quiet"]) == 0
        with out.open(newline="") as fh:
            header, *rows = list(csv.reader(fh))
        assert header == ["node_id", "label", "prob_legit", "prob_suspicious", "prob_fraud"]
        assert [int(r[0]) for r in rows] == ids
        probs = np.array([[float(v) for v in r[2:]] for r in rows], dtype=np.float32)
        assert np.abs(probs - expected).max() <= TOL
        assert [int(r[1]) for r in rows] == expected.argmax(axis=1).tolist()


@pytest.mark.slow
def test_parquet_without_pyarrow_is_refused_before_scoring(bundles, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` now raises ImportError
    out = tmp_path / "scores.parquet"
    assert main(["score", "--bundle", str(bundles["mlp"]), "--out", str(out), "--quiet"]) == 2
    assert "pip install pyarrow" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_parquet_round_trip(bundles, tmp_path):
    import pyarrow.parquet as pq  # in the dev extra: the Parquet path is tested, not skipped

    out = tmp_path / "scores.parquet"
    assert main(["score", "--bundle", str(bundles["mlp"]), "--out", str(out), "--quiet"]) == 0
    table = pq.read_table(out).to_pydict()
    probs = np.array([table[f"prob_{c}"] for c in ("legit", "suspicious", "fraud")], dtype=np.float32).T
    assert np.abs(probs - served(bundles["mlp"], table["node_id"])).max() <= TOL


@pytest.mark.slow
def test_bad_input_is_exit_2_one_line_nothing_written(bundles, tmp_path, capsys):
    good = bundles["mlp"]
    tampered = tmp_path / "tampered"
    shutil.copytree(good, tampered)
    features = tampered / "graph" / "features.npy"
    data = bytearray(features.read_bytes())
    data[-1] ^= 0xFF
    features.write_bytes(data)
    unknown, junk = tmp_path / "unknown.txt", tmp_path / "junk.txt"
    unknown.write_text("1\n300\n-4\n")
    junk.write_text("1\nabc\n")
    out = tmp_path / "out" / "scores.npy"
    out.parent.mkdir()
    cases = [
        (["--bundle", str(tmp_path / "missing")], "missing"),
        (["--bundle", str(tampered)], "features.npy"),
        (["--bundle", str(good), "--nodes", str(unknown)], "2 id(s) are not in the bundle's graph"),
        (["--bundle", str(good), "--nodes", str(junk)], "not a readable list of integer node ids"),
        (["--bundle", str(good), "--nodes", str(tmp_path / "absent.txt")], "absent.txt"),
        (["--bundle", str(good), "--threads", "0"], "--threads 0"),
        (["--bundle", str(good), "--batch", "-1"], "--batch -1"),
    ]
    for argv, needle in cases:
        assert main(["score", "--out", str(out), "--quiet", *argv]) == 2, argv
        assert needle in one_error_line(capsys), argv
    assert main(["score", "--bundle", str(good), "--out", str(out.with_suffix(".txt"))]) == 2
    assert "--format npy|csv|parquet" in one_error_line(capsys)
    assert main(["score", "--bundle", str(good), "--out", str(tmp_path / "nodir" / "s.npy")]) == 2
    assert "does not exist" in one_error_line(capsys)
    assert list(out.parent.iterdir()) == []


@pytest.mark.slow
def test_runs_without_torch(bundles, tmp_path):
    out = tmp_path / "scores.npy"
    code = ("import sys\nfrom distill.cli import main\n"
            f"rc = main(['score', '--bundle', {str(bundles['sage-res'])!r}, '--out', {str(out)!r}, '--quiet'])\n"
            "sys.exit(rc if 'torch' not in sys.modules else 99)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "scored 300 nodes" in done.stdout
    assert len(np.load(out, allow_pickle=False)) == 300


def test_chunks_cover_every_index_once():
    assert [(s.start, s.stop) for s in score.chunks(10, 4)] == [(0, 4), (4, 8), (8, 10)]
    assert list(score.chunks(0, 4)) == []


def test_output_format_from_flag_or_suffix(tmp_path):
    assert score.output_format(tmp_path / "a.CSV", None) == "csv"
    assert score.output_format(tmp_path / "a.bin", "npy") == "npy"
    with pytest.raises(score.ScoreError, match="cannot tell the output format"):
        score.output_format(tmp_path / "a", None)
