"""distill select (choice under a latency budget) and distill refresh (versioned re-distillation)."""

import json

import numpy as np
import pytest

from bundle.files import open_bundle
from distill import budget, refresh
from distill.budget_report import Row
from distill.cli import main
from distill.config import RunConfig
from distill.errors import ConfigError
from distill.latency import Percentiles, Timing
from tests.tamper import tamper

TINY = ["--dataset", "synthetic:nodes=300,features=8", "--teacher-layers", "2", "--teacher-hidden", "16",
        "--epochs", "20", "--patience", "5", "--quiet"]


def _row(name, params, val, p99, nbytes=100):
    timing = Timing(Percentiles(p99 / 2, p99), Percentiles(p99, 2 * p99))
    return Row(name, params, nbytes, timing, val, 0.0, 0.0)


def test_choose_most_accurate_that_fits_then_smallest():
    rows = [_row("big", 900, 0.90, 2.0), _row("mid", 500, 0.85, 0.5), _row("small", 100, 0.85, 0.2),
            _row("tiny", 50, 0.70, 0.1)]
    assert budget.choose(rows, 1.0).name == "small"
    assert budget.choose(rows, 5.0).name == "big"
    assert budget.choose(rows, 0.05) is None
    http = Timing(Percentiles(0.1, 0.2), Percentiles(0.1, 0.2), http=Percentiles(1.0, 3.0))
    assert budget.choose([Row("slow-over-http", 10, 10, http, 0.9, 0.0, 0.0)], 1.0) is None  # HTTP p99 decides


def test_candidate_parse():
    assert budget.Candidate.parse("sage:3:32") == budget.Candidate("sage", 3, 32)
    with pytest.raises(ConfigError, match="STUDENT:LAYERS:HIDDEN"):
        budget.Candidate.parse("gcn:two:64")
    with pytest.raises(ConfigError, match="unknown student"):
        budget.Candidate.parse("gin:2:64")


def test_a_candidate_may_carry_its_own_fanout():
    cand = budget.Candidate.parse("sage-res:2:64:5")
    assert cand == budget.Candidate("sage-res", 2, 64, 5) and cand.name == "sage-res-2x64-f5"
    assert budget.Candidate.parse("gcn:2:64").name == "gcn-2x64"
    for bad in ("gcn:2:64:0", "gcn:2:64:5:1", "gcn:2:64:", "gcn:0:64", "gcn:2:64:-1"):
        with pytest.raises(ConfigError, match=r"STUDENT:LAYERS:HIDDEN\[?.*FANOUT"):
            budget.Candidate.parse(bad)
    cfg = RunConfig(dataset="synthetic:nodes=300,features=8", fanout=10)
    assert (cand.config(cfg).fanout, cand.config(cfg).student, cand.config(cfg).student_hidden) == (5, "sage-res", 64)
    assert budget.Candidate("gcn", 2, 8).config(cfg).fanout == 10  # no fan-out of its own: the run's


def test_select_serves_the_chosen_candidates_own_fanout(tmp_path):
    out = tmp_path / "sel"
    assert main(["select", "--out", str(out), "--latency-budget-ms", "1000", "--grid", "gcn:2:8:2", "--calls", "100",
                 *TINY]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["selection"]["chosen"]["name"] == "gcn-2x8-f2"
    assert manifest["policy"]["fanout"] == 2 and manifest["config"]["fanout"] == 2


def test_select_writes_chosen_bundle_with_table_and_plot(tmp_path, capsys):
    out = tmp_path / "sel"
    code = main(["select", "--out", str(out), "--latency-budget-ms", "50", "--grid", "gcn:2:8,ppr-mlp:2:8,mlp:2:16",
                 "--calls", "100", "--int8", *TINY])
    assert code == 0
    summary = json.loads((out / "select.json").read_text())
    assert summary["budget_ms"] == 50
    assert sum(c["chosen"] for c in summary["candidates"]) == 1
    for c in summary["candidates"]:
        assert {"name", "params", "bytes", "p50_ms", "p99_ms", "batch16_p99_ms", "val_metric", "test_metric",
                "chosen"} <= set(c)
        assert 0 < c["p50_ms"] <= c["p99_ms"] and c["p99_ms"] == c["single_p99_ms"]  # in-process served path
        assert 0 < c["batch16_p50_ms"] <= c["batch16_p99_ms"]
    assert (out / "select.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((out / "manifest.json").read_text())
    chosen = next(c for c in summary["candidates"] if c["chosen"])
    assert manifest["selection"]["chosen"]["name"] == chosen["name"]
    assert "select.json" in manifest["files"]
    assert open_bundle(out).manifest.selection["chosen"]["name"] == chosen["name"]  # readable, int8 or not
    assert len(summary["candidates"]) == 3 + sum(c["name"].endswith("-int8") for c in summary["candidates"])


def test_select_with_impossible_budget_fails_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "sel"
    assert main(["select", "--out", str(out), "--latency-budget-ms", "0.00001", "--grid", "mlp:2:8",
                 "--calls", "100", *TINY]) == 2
    assert "no candidate meets --latency-budget-ms" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_select_can_time_the_real_service_over_http(tmp_path):
    out = tmp_path / "sel"
    assert main(["select", "--out", str(out), "--latency-budget-ms", "1000", "--grid", "mlp:2:8", "--calls", "100",
                 "--http-calls", "30", *TINY]) == 0
    summary = json.loads((out / "select.json").read_text())
    row = summary["candidates"][0]
    assert summary["timed"] == "http" and row["p99_ms"] == row["http_p99_ms"] > 0


def test_refresh_records_parent_and_gates_on_validation(tmp_path, capsys):
    parent = tmp_path / "v1"
    assert main(["run", "--out", str(parent), *TINY]) == 0
    child = tmp_path / "v2"
    assert main(["refresh", "--bundle", str(parent), *TINY[:2], "--out", str(child), "--reuse-teacher", "--quiet"]) == 0
    old = json.loads((parent / "manifest.json").read_text())
    new = json.loads((child / "manifest.json").read_text())
    # The parent's config, with --teacher auto resolved to the family of the teacher.pt it reused.
    reused = {**old["config"], "teacher": old["metrics"]["teacher"]["family"]}
    assert old["config"]["teacher"] == "auto" and new["parent"]["version"] == old["version"] and new["config"] == reused
    gate = new["refresh"]
    assert gate["metric"] == "accuracy" and gate["nodes"] > 0 and gate["max_drop"] == 0.01
    assert gate["child_val"] >= gate["parent_val"] - 0.01
    assert new["metrics"]["teacher"]["reused"] is True
    # The child inherits the parent's input-dropout decision instead of probing again.
    assert old["config"]["input_dropout"] in ("on", "off")
    assert new["metrics"]["teacher"]["input_dropout"]["rule"] == "set"
    # An impossible bar: "must improve by 1.0 on validation".
    blocked = tmp_path / "v3"
    assert main(["refresh", "--bundle", str(parent), *TINY[:2], "--out", str(blocked), "--reuse-teacher", "--quiet",
                 "--max-drop", "-1.0"]) == 2
    assert "worse than its parent" in capsys.readouterr().err and not blocked.exists()
    assert main(["refresh", "--bundle", str(parent), *TINY[:2], "--out", str(blocked), "--reuse-teacher", "--quiet",
                 "--max-drop", "-1.0", "--allow-worse"]) == 0


def test_refresh_that_passes_on_test_but_not_on_validation_is_refused(tmp_path, capsys, monkeypatch):
    parent = tmp_path / "v1"
    assert main(["run", "--out", str(parent), *TINY]) == 0
    parent_test = json.loads((parent / "manifest.json").read_text())["metrics"]["distilled"]["accuracy"]
    real = refresh.parent_validation

    def perfect_on_validation(parent, prep, nodes):
        """The parent as served, except that it is right on every validation node it is asked about."""
        scores = real(parent, prep, nodes)
        y = prep.ds.data.y.numpy()[scores.nodes]
        return refresh.ParentScores(scores.nodes, np.eye(scores.probabilities.shape[1], dtype=np.float32)[y])

    monkeypatch.setattr(refresh, "parent_validation", perfect_on_validation)
    child = tmp_path / "v2"
    assert main(["refresh", "--bundle", str(parent), *TINY[:2], "--out", str(child), "--reuse-teacher", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "on validation accuracy" in err and "< 1.0000" in err and not child.exists()
    # The same child on test: identical inputs give the parent's own test accuracy, so a test gate passes.
    assert main(["refresh", "--bundle", str(parent), *TINY[:2], "--out", str(child), "--reuse-teacher", "--quiet",
                 "--allow-worse"]) == 0
    assert json.loads((child / "manifest.json").read_text())["metrics"]["distilled"]["accuracy"] >= parent_test


def test_two_refreshes_with_the_same_inputs_give_the_same_version(tmp_path):
    parent = tmp_path / "v1"
    assert main(["run", "--out", str(parent), *TINY]) == 0
    versions = []
    for name in ("a", "b"):
        assert main(["refresh", "--bundle", str(parent), *TINY[:2], "--out", str(tmp_path / name), "--reuse-teacher",
                     "--quiet"]) == 0
        versions.append(json.loads((tmp_path / name / "manifest.json").read_text())["version"])
    assert versions[0] == versions[1]


def test_refresh_refuses_tampered_parent(tmp_path, capsys):
    parent = tmp_path / "v1"
    assert main(["run", "--out", str(parent), *TINY]) == 0
    tamper(parent, "graph/weights.npy", lambda data: data[:-4] + b"\x00\x00\x80\x7f")  # last weight := +inf
    assert main(["refresh", "--bundle", str(parent), *TINY[:2], "--out", str(tmp_path / "v2"), "--quiet"]) == 2
    assert "graph/weights.npy: sha256" in capsys.readouterr().err


def test_refresh_reuses_an_ensemble_teacher(tmp_path):
    parent, child = tmp_path / "v1", tmp_path / "v2"
    assert main(["run", "--out", str(parent), *TINY, "--teacher", "gcn", "--teacher-ensemble", "2"]) == 0
    assert main(["refresh", "--bundle", str(parent), *TINY[:2], "--out", str(child), "--reuse-teacher", "--quiet",
                 "--allow-worse"]) == 0
    old = json.loads((parent / "manifest.json").read_text())
    new = json.loads((child / "manifest.json").read_text())
    assert [m["seed"] for m in old["metrics"]["teacher"]["members"]] == [0, 1]
    # The reused teacher.pt is the same two-member ensemble: same test scores.
    assert new["metrics"]["teacher"]["accuracy"] == old["metrics"]["teacher"]["accuracy"]
