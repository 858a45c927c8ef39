"""What the job reports is what the service serves: the distilled student's metrics in the manifest
and report equal metrics recomputed, node by node, through the service's own scoring code."""

import json

import numpy as np
import pytest

from distill.cli import main
from distill.data import load_dataset
from distill.metrics import evaluate
from serve.runtime import open_service

SPEC = "synthetic:nodes=300,features=8"
TINY = ["--teacher-layers", "2", "--teacher-hidden", "16", "--epochs", "20", "--patience", "5", "--quiet"]


@pytest.mark.parametrize("student", ["gcn", "mlp"])
def test_reported_metrics_equal_the_served_path(tmp_path, student):
    out = tmp_path / "b"
    assert main(["run", "--out", str(out), "--dataset", SPEC, "--student", student, *TINY]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    report = json.loads((out / "report.json").read_text())
    data = load_dataset(SPEC).data
    test_nodes = np.flatnonzero(data.test_mask.numpy())
    service = open_service(out)  # exactly what `python -m serve` builds, minus HTTP
    probs = np.concatenate([service.scorer.score([int(i)]).probabilities for i in test_nodes])
    served = evaluate(probs, data.y.numpy()[test_nodes])
    for reported in (manifest["metrics"]["distilled"], report["distilled"]):
        assert reported["served"] is True
        assert reported["accuracy"] == round(served["accuracy"], 6)
        assert reported["macro_f1"] == round(served["macro_f1"], 6)
        assert reported["per_class_recall"] == [round(r, 6) for r in served["per_class_recall"]]
        assert reported["auroc"] == pytest.approx(served["auroc"], abs=2e-6)
