"""The report's first line: the teacher's lead over the scratch student and how much of it distillation recovers."""

import math
from types import SimpleNamespace

import pytest

from distill import report
from distill.config import RunConfig


def _m(accuracy: float | None) -> dict:
    return {"accuracy": accuracy, "macro_f1": 0.5, "auroc": 0.9, "pr_auc": 0.4, "per_class_recall": [1.0, 0.5, 0.0],
            "epochs_run": 10}


@pytest.mark.parametrize(
    "t, s, d, lead, recovered, share, sentence",
    [
        (0.90, 0.859, 0.888, 0.041, 0.029, 0.7073,
         "Teacher beats the scratch student by 4.1 points of accuracy; "
         "the distilled student recovers 2.9 of them (71 %)."),
        (0.95, 0.90, 0.96, 0.05, 0.06, 1.2,
         "Teacher beats the scratch student by 5.0 points of accuracy; "
         "the distilled student recovers 6.0 of them (120 %)."),
        (0.90, 0.88, 0.87, 0.02, -0.01, -0.5,
         "Teacher beats the scratch student by 2.0 points of accuracy; "
         "the distilled student recovers none of them (1.0 points below scratch)."),
        (0.9524, 0.9537, 0.9537, -0.0013, 0.0, None,
         "The teacher did not beat the scratch student (0.1 points of accuracy behind it), "
         "so there was no lead for distillation to recover."),
        (0.90, 0.90, 0.91, 0.0, 0.01, None,
         "The teacher did not beat the scratch student (0.0 points of accuracy behind it), "
         "so there was no lead for distillation to recover."),
    ],
)
def test_gap_golden_numbers(t, s, d, lead, recovered, share, sentence):
    g = report.gap(_m(t), _m(s), _m(d), "accuracy")
    assert g["metric"] == "accuracy"
    assert g["teacher_lead"] == pytest.approx(lead, abs=1e-6)
    assert g["recovered"] == pytest.approx(recovered, abs=1e-6)
    assert g["share"] == (None if share is None else pytest.approx(share, abs=1e-4))
    assert report.gap_sentence(g) == sentence


@pytest.mark.parametrize("missing", [None, math.nan])
def test_gap_without_a_number_says_so(missing):
    g = report.gap(_m(0.9), _m(missing), _m(0.8), "accuracy")
    assert g == {"metric": "accuracy", "teacher_lead": None, "recovered": None, "share": None}
    assert report.gap_sentence(g) == "No summary: a model has no test accuracy."


def test_the_sentence_sits_right_under_the_title_and_the_numbers_in_report_json():
    ds = SimpleNamespace(num_classes=3, name="synthetic", class_names=["legit", "suspicious", "fraud"])
    rep = report.build(ds, RunConfig(), _m(0.90), _m(0.859), {**_m(0.888), "propagation": "gcn", "alpha": 0.2})
    assert rep["gap"]["share"] == pytest.approx(0.7073, abs=1e-4)
    lines = report.markdown(rep).splitlines()
    assert lines[0].startswith("# synthetic:")
    assert lines[2] == ("Teacher beats the scratch student by 4.1 points of accuracy; "
                        "the distilled student recovers 2.9 of them (71 %).")
    # A report.json from before `gap` existed renders the same sentence from its own numbers.
    del rep["gap"]
    assert report.markdown(rep).splitlines()[2] == lines[2]


def test_the_report_names_every_teacher_family_tried_and_any_the_budget_skipped():
    ds = SimpleNamespace(num_classes=3, name="synthetic", class_names=["legit", "suspicious", "fraud"])
    teacher = {**_m(0.90), "family": "gcnii", "families_val": {"gat": 0.81, "gcnii": 0.83},
               "families_skipped": ["gat-sep"]}
    rep = report.build(ds, RunConfig(), teacher, _m(0.859), {**_m(0.888), "propagation": "gcn"})
    assert ("Teacher: `gcnii-16`, the best of the families trained on validation accuracy (gat 0.8100, "
            "gcnii 0.8300); skipped by --teacher-budget: gat-sep.") in report.markdown(rep).splitlines()
    losses = {"families_val": {"gat": 0.61, "gcnii": 0.55}}  # what the loss rule records and compares
    by_loss = report.build(ds, RunConfig(), {**teacher, **losses, "keep_on": "loss"}, _m(0.859),
                           {**_m(0.888), "propagation": "gcn"})
    lines = report.markdown(by_loss).splitlines()
    assert any(line.startswith("Teacher: `gcnii-16`, the best of the families trained on validation loss "
                               "(gat 0.6100, gcnii 0.5500)") for line in lines)
    assert "Test set. Early stopping on validation accuracy (the teacher's on validation loss)." in lines
    single = report.build(ds, RunConfig(teacher="gat"), _m(0.90), _m(0.859), {**_m(0.888), "propagation": "gcn"})
    assert not any(line.startswith("Teacher:") for line in report.markdown(single).splitlines())


def test_the_report_names_an_ensemble_teacher_and_each_member_alone():
    ds = SimpleNamespace(num_classes=3, name="synthetic", class_names=["legit", "suspicious", "fraud"])
    members = [{"seed": 4, "family": "gcnii", "accuracy": 0.85}, {"seed": 5, "family": "gcnii", "accuracy": 0.84}]
    teacher = {**_m(0.90), "family": "gcnii", "members": members}
    rep = report.build(ds, RunConfig(teacher_ensemble=2), teacher, _m(0.859), {**_m(0.888), "propagation": "gcn"})
    lines = report.markdown(rep).splitlines()
    assert lines[0].startswith("# synthetic: gcnii-16 x2 teacher")
    assert ("Teacher: the mean prediction of 2 teachers (--teacher-ensemble), each alone on test accuracy: "
            "seed 4 0.8500, seed 5 0.8400.") in lines
