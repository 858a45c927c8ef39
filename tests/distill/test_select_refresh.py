"""distill select (choice under a latency budget) and distill refresh (versioned re-distillation)."""

import json

import pytest

from distill import select
from distill.cli import main
from distill.errors import ConfigError

TINY = ["--dataset", "synthetic:nodes=300,features=8", "--teacher-layers", "2", "--teacher-hidden", "16",
        "--epochs", "20", "--patience", "5", "--quiet"]


def _row(name, params, val, p99, nbytes=100):
    return {"name": name, "params": params, "bytes": nbytes, "p99_ms": p99, "val_metric": val}


def test_choose_most_accurate_that_fits_then_smallest():
    rows = [_row("big", 900, 0.90, 2.0), _row("mid", 500, 0.85, 0.5), _row("small", 100, 0.85, 0.2),
            _row("tiny", 50, 0.70, 0.1)]
    assert select.choose(rows, 1.0)["name"] == "small"
    assert select.choose(rows, 5.0)["name"] == "big"
    assert select.choose(rows, 0.05) is None


def test_candidate_parse():
    assert select.Candidate.parse("sage:3:32") == select.Candidate("sage", 3, 32)
    with pytest.raises(ConfigError, match="STUDENT:LAYERS:HIDDEN"):
        select.Candidate.parse("gcn:two:64")
    with pytest.raises(ConfigError, match="unknown student"):
        select.Candidate.parse("gin:2:64")


def test_select_writes_chosen_bundle_with_table_and_plot(tmp_path, capsys):
    out = tmp_path / "sel"
    code = main(["select", "--out", str(out), "--latency-budget-ms", "50", "--grid", "gcn:2:8,mlp:2:16",
                 "--calls", "100", *TINY])
    assert code == 0
    summary = json.loads((out / "select.json").read_text())
    assert summary["budget_ms"] == 50 and len(summary["candidates"]) == 2
    assert sum(c["chosen"] for c in summary["candidates"]) == 1
    for c in summary["candidates"]:
        assert {"name", "params", "bytes", "p50_ms", "p99_ms", "val_metric", "test_metric", "chosen"} <= set(c)
        assert 0 < c["p50_ms"] <= c["p99_ms"]
    assert (out / "select.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((out / "manifest.json").read_text())
    chosen = next(c for c in summary["candidates"] if c["chosen"])
    assert manifest["selection"]["chosen"]["name"] == chosen["name"]
    assert "select.json" in manifest["files"]


def test_select_with_impossible_budget_fails_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "sel"
    assert main(["select", "--out", str(out), "--latency-budget-ms", "0.00001", "--grid", "mlp:2:8",
                 "--calls", "100", *TINY]) == 2
    assert "no candidate meets --latency-budget-ms" in capsys.readouterr().err
    assert not out.exists()


def test_refresh_records_parent_and_refuses_worse(tmp_path, capsys):
    parent = tmp_path / "v1"
    assert main(["run", "--out", str(parent), *TINY]) == 0
    child = tmp_path / "v2"
    assert main(["refresh", "--bundle", str(parent), "--out", str(child), "--reuse-teacher", "--quiet"]) == 0
    old = json.loads((parent / "manifest.json").read_text())
    new = json.loads((child / "manifest.json").read_text())
    assert new["parent"]["version"] == old["version"] and new["config"] == old["config"]
    assert set(new["deltas"]) == {"accuracy", "macro_f1", "auroc"}
    assert new["metrics"]["teacher"]["reused"] is True
    # An impossible bar: any drop at all (even none) beyond -1.0 means "must improve by 1.0".
    blocked = tmp_path / "v3"
    assert main(["refresh", "--bundle", str(parent), "--out", str(blocked), "--reuse-teacher", "--quiet",
                 "--max-drop", "-1.0"]) == 2
    assert "worse than its parent" in capsys.readouterr().err and not blocked.exists()
    assert main(["refresh", "--bundle", str(parent), "--out", str(blocked), "--reuse-teacher", "--quiet",
                 "--max-drop", "-1.0", "--allow-worse"]) == 0


def test_refresh_refuses_tampered_parent(tmp_path, capsys):
    parent = tmp_path / "v1"
    assert main(["run", "--out", str(parent), *TINY]) == 0
    with open(parent / "graph" / "weights.npy", "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x00\x80\x7f")
    assert main(["refresh", "--bundle", str(parent), "--out", str(tmp_path / "v2"), "--quiet"]) == 2
    assert "do not match" in capsys.readouterr().err
