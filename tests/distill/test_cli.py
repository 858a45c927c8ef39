"""The CLI as a user meets it: bad input -> exit 2, one line naming the problem, nothing written."""

import json
import subprocess
import sys

import numpy as np
import pytest

from bundle import files
from distill.cli import main
from tests.distill.fixtures import write_npz

TINY = ["--teacher-layers", "2", "--teacher-hidden", "16", "--student-hidden", "16", "--epochs", "20",
        "--patience", "5", "--quiet"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distill", *args], capture_output=True, text=True, timeout=300)


def _bad_cases(tmp_path):
    truncated = tmp_path / "trunc.npz"
    truncated.write_bytes(write_npz(tmp_path / "ok.npz").read_bytes()[:300])
    return [
        (["--dataset", "graphml:/x"], "graphml:/x"),
        (["--dataset", f"npz:{tmp_path / 'missing.npz'}"], "does not exist"),
        (["--dataset", f"npz:{truncated}"], "cannot read"),
        (["--dataset", f"planetoid:{tmp_path}"], "expected exactly one raw/ind.<name>.x"),
        (["--dataset", "synthetic:nodes=5"], "nodes=5"),
        (["--alpha", "1.5"], "--alpha 1.5"),
        (["--alpha", "often"], "--alpha 'often'"),
        (["--fanout", "0"], "--fanout 0"),
        (["--threads", "-1"], "--threads -1"),
        (["--seed", "-1"], "--seed -1"),
    ]


def test_bad_inputs_exit_2_and_write_nothing(tmp_path, capsys):
    # In-process (one torch import, not ten): an exception main() did not turn into exit 2 fails the
    # test as it would crash the process; the entry point itself is run by the next test.
    for args, needle in _bad_cases(tmp_path):
        out = tmp_path / "bundle"
        try:
            code = main(["run", "--out", str(out), *TINY, *args])
        except SystemExit as stop:  # argparse's own usage errors
            code = stop.code
        stderr = capsys.readouterr().err
        assert code == 2, (args, stderr)
        error_lines = [line for line in stderr.splitlines() if line.startswith("distill: error:")]
        assert len(error_lines) == 1 and needle in error_lines[0], (args, stderr)
        assert "Traceback" not in stderr
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")]


def test_unknown_choice_is_rejected_by_argparse(tmp_path):
    proc = _cli("run", "--out", str(tmp_path / "b"), "--student", "transformer")
    assert proc.returncode == 2 and "invalid choice: 'transformer'" in proc.stderr


def test_existing_out_needs_force(tmp_path, capsys):
    out = tmp_path / "b"
    out.mkdir()
    assert main(["run", "--out", str(out), *TINY]) == 2
    assert "--force" in capsys.readouterr().err


def test_failed_parity_leaves_no_bundle(tmp_path, monkeypatch):
    from distill import served
    from distill.errors import ParityError

    def broken(*args, **kwargs):
        raise ParityError("the served student differs from torch by 1 (> 0.0001)")

    monkeypatch.setattr(served, "check", broken)
    out = tmp_path / "b"
    assert main(["run", "--out", str(out), "--dataset", "synthetic:nodes=200", *TINY]) == 2
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("student", ["gcn", "mlp"])
def test_end_to_end_small_synthetic(tmp_path, student, capsys):
    out = tmp_path / "b"
    assert main(["run", "--out", str(out), "--dataset", "synthetic:nodes=400", "--student", student, *TINY]) == 0
    assert "| distilled |" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"] == files.file_hashes(out)
    assert set(manifest["files"]) == {"student.onnx", "teacher.pt", "report.json", "report.md",
                                      *manifest["graph"].values()}
    assert manifest["config"]["student"] == student and manifest["seed"] == 0
    assert manifest["policy"]["k_hops"] == (0 if student == "mlp" else 2)
    assert manifest["parity"]["max_abs_diff"] <= 1e-4 and manifest["reproducibility"]["threads"] >= 1
    assert manifest["version"].startswith(f"synthetic-{student}-")
    report = json.loads((out / "report.json").read_text())
    for role in ("teacher", "scratch", "distilled"):
        assert {"accuracy", "macro_f1", "auroc", "per_class_recall"} <= set(report[role])
    n = manifest["dataset"]["num_nodes"]
    indptr = np.load(out / "graph/indptr.npy", allow_pickle=False)
    assert indptr.shape == (n + 1,) and indptr[-1] == len(np.load(out / "graph/indices.npy"))


def test_out_under_missing_parents_is_created(tmp_path):
    # `make demo` on a fresh clone writes out/demo before out/ exists.
    out = tmp_path / "new" / "deeper" / "b"
    assert main(["run", "--out", str(out), "--dataset", "synthetic:nodes=200", *TINY]) == 0
    assert (out / "manifest.json").is_file()


def test_out_under_a_file_is_refused_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(["run", "--out", str(blocker / "b"), *TINY]) == 2
    assert "is not a writable directory" in capsys.readouterr().err
