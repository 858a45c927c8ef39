"""--student auto: every family trained, the best on validation kept, the kept family named everywhere."""

import json

from distill.cli import main
from distill.config import AUTO_STUDENTS, RunConfig


def test_auto_trains_each_family_and_keeps_the_best_on_validation(tmp_path):
    out = tmp_path / "b"
    assert main(["run", "--dataset", "synthetic:nodes=300,seed=1", "--teacher", "gat", "--teacher-layers", "2",
                 "--epochs", "20", "--min-epochs", "0", "--patience", "5", "--kd", "none", "--quiet",
                 "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    for role in ("scratch", "distilled"):
        scores = rep[role]["candidates_val"]
        assert list(scores) == [f"{s}: {p}" for s, p in zip(AUTO_STUDENTS, ("gcn", "mean"), strict=True)]
        best = max(scores, key=lambda k: (scores[k], -list(scores).index(k)))
        assert best.startswith(rep[role]["student"] + ": ") and rep[role]["best_val"] == scores[best]
    kept = rep["distilled"]["student"]
    assert manifest["model"]["student"] == kept and manifest["config"]["student"] == "auto"
    assert manifest["version"].split("-")[1] == kept.split("-")[0] and rep["student"] == f"{kept}-2"
    assert manifest["policy"]["degree_input"] == (kept == "sage-res")


def test_a_named_student_is_the_only_family():
    assert RunConfig(student="mlp").students == ("mlp",) and RunConfig().students == AUTO_STUDENTS
