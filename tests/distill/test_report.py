"""The run report: flags a user must not miss, and the line that says which candidate was kept."""

from types import SimpleNamespace

from distill import report
from distill.config import RunConfig

DS = SimpleNamespace(num_classes=2, name="tiny", class_names=["ok", "fraud"])


def _m(auroc, **extra):
    return {"accuracy": 0.9, "macro_f1": 0.5, "auroc": auroc, "pr_auc": 0.4, "per_class_recall": [1.0, 0.0],
            "epochs_run": 10,
            **extra}


def test_flags_a_weak_teacher_a_losing_student_and_alpha_zero():
    cfg = RunConfig(kd="response,structure")
    distilled = _m(0.70, propagation="attention", alpha=0.0,
                   candidates_val={"gcn, alpha 0": 0.71, "attention, alpha 0": 0.74, "attention, alpha 0.2": 0.73})
    rep = report.build(DS, cfg, _m(0.70), _m(0.72, propagation="gcn", alpha=None), distilled)
    assert [f.split(" ")[0] for f in rep["flags"]] == ["teacher", "distilled", "validation"]
    text = report.markdown(rep)
    assert "`attention` propagation, soft-target weight alpha 0, chosen on validation auroc" in text
    assert "attention, alpha 0 0.7400" in text


def test_no_alpha_flag_when_the_soft_labels_were_kept():
    rep = report.build(DS, RunConfig(), _m(0.80), _m(0.70), _m(0.75, propagation="gcn", alpha=0.2))
    assert rep["flags"] == []


def test_says_what_the_run_decided_about_input_dropout_and_why():
    probe = {"on": False, "rule": "probe", "probe_val": {"on": 0.9535, "off": 0.9750}}
    rep = report.build(DS, RunConfig(), _m(0.80, input_dropout=probe), _m(0.70), _m(0.75, propagation="gcn", alpha=0.2))
    assert ("Input dropout: off for the teacher and every student (dense features: the scratch students scored "
            "validation auroc 0.9535 with it, 0.9750 without).") in report.markdown(rep)
    words = {"on": True, "rule": "bag-of-words", "probe_val": {}}
    rep = report.build(DS, RunConfig(), _m(0.80, input_dropout=words), _m(0.70), _m(0.75, propagation="gcn", alpha=0.2))
    assert "Input dropout: on for the teacher and every student (bag-of-words features)." in report.markdown(rep)
    rep = report.build(DS, RunConfig(), _m(0.80), _m(0.70), _m(0.75, propagation="gcn", alpha=0.2))
    assert "Input dropout" not in report.markdown(rep)  # a report written before the option
