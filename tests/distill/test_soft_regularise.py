"""--soft-regularise: a soft-target candidate is trained with weight decay and dropout (on, the
default), without (off) or both ways, the best on validation kept (auto); hard-label candidates
always keep both."""

from dataclasses import replace
from types import SimpleNamespace

import pytest

from distill import pipeline, report, students
from distill.config import RunConfig
from distill.errors import ConfigError
from distill.students import train_candidates

TINY = "synthetic:nodes=200,avg_degree=8,features=6,seed=3"


@pytest.fixture(scope="module")
def prep_and_cfg():
    cfg = RunConfig(dataset=TINY, teacher="gcn", teacher_layers=2, teacher_hidden=16, epochs=8, patience=4,
                    min_epochs=0, student="mlp", kd="response", alpha="auto", temperature="1",
                    student_dropout=0.4, weight_decay=1e-3, soft_regularise="auto")
    return pipeline.prepare(cfg, progress=False), cfg


def test_auto_tries_both_only_where_soft_targets_weigh_in(prep_and_cfg):
    assert RunConfig().soft_regularisation == (True,)  # the default: regularised, as every run before the option
    prep, cfg = prep_and_cfg
    trained = train_candidates(cfg, prep, cfg.kd_kinds, progress=False)
    assert list(trained.candidates_val) == ["none, alpha 0", "none, alpha 0.2", "none, alpha 0.2, unregularised",
                                            "none, alpha 0.8", "none, alpha 0.8, unregularised"]
    scratch = train_candidates(cfg, prep, (), progress=False)
    assert list(scratch.candidates_val) == ["none"] and scratch.regularised
    assert list(train_candidates(replace(cfg, soft_regularise="off"), prep, cfg.kd_kinds, progress=False)
                .candidates_val) == ["none, alpha 0", "none, alpha 0.2, unregularised",
                                     "none, alpha 0.8, unregularised"]
    assert list(train_candidates(replace(cfg, soft_regularise="on"), prep, cfg.kd_kinds, progress=False)
                .candidates_val) == ["none, alpha 0", "none, alpha 0.2", "none, alpha 0.8"]


def test_an_unregularised_candidate_trains_without_weight_decay_or_dropout(prep_and_cfg, monkeypatch):
    prep, cfg = prep_and_cfg
    seen = []
    real_fit = students.fit

    def spy(model, data, edges, loss, tcfg, *args, **kwargs):
        seen.append((tcfg.weight_decay, model.dropout))
        return real_fit(model, data, edges, loss, tcfg, *args, **kwargs)

    monkeypatch.setattr(students, "fit", spy)
    sg = next(iter(students.candidate_graphs(cfg, prep, cfg.kd_kinds, None)))
    off = students.train_student(cfg, prep, sg, cfg.kd_kinds, 0.8, False, 1.0, regularised=False)
    on = students.train_student(cfg, prep, sg, cfg.kd_kinds, 0.8, False, 1.0)
    assert seen == [(0.0, 0.0), (1e-3, 0.4)]
    assert off.record()["regularised"] is False and on.record()["regularised"] is True


def test_the_report_names_an_unregularised_choice_and_unknown_values_are_refused():
    ds = SimpleNamespace(num_classes=3, name="synthetic", class_names=["a", "b", "c"])
    m = {"accuracy": 0.8, "macro_f1": 0.5, "auroc": 0.9, "pr_auc": 0.4, "per_class_recall": [1.0, 0.5, 0.0],
         "epochs_run": 10}
    distilled = {**m, "student": "mlp", "propagation": "none", "kd": ["response"], "alpha": 0.8, "temperature": 1.0,
                 "regularised": False,
                 "candidates_val": {"none, alpha 0.8": 0.7, "none, alpha 0.8, unregularised": 0.8}}
    line = next(x for x in report.markdown(report.build(ds, RunConfig(), m, m, distilled)).splitlines()
                if x.startswith("Distilled student:"))
    assert "alpha 0.8, temperature 1, without weight decay or dropout, chosen on validation" in line
    regularised = {**distilled, "regularised": True}
    assert "without weight decay" not in report.markdown(report.build(ds, RunConfig(), m, m, regularised))
    with pytest.raises(ConfigError, match="soft-regularise"):
        RunConfig(soft_regularise="maybe")
