"""--input-dropout: models drop their input features only where that is an augmentation (bag-of-words
under auto), never dense hand-crafted columns; hidden dropout is unchanged either way."""

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from distill import input_dropout as dropouts
from distill import teacher as teachers
from distill.artefacts import InputDropout
from distill.config import RunConfig
from distill.data import load_dataset
from distill.errors import ConfigError
from distill.models import MLP, build_student, with_input_dropout

DENSE = "synthetic:nodes=60,avg_degree=4,features=5,seed=1"


def test_a_model_built_without_a_runs_decision_drops_its_inputs_unless_told_off():
    """auto is decided by a run (`decide`); a teacher built straight from the config (restored for
    evaluation) keeps the behaviour before the option, as `Prepared` does for students."""
    assert RunConfig().input_dropout == "auto"
    assert teachers.input_dropout_on(RunConfig()) is True
    assert teachers.input_dropout_on(RunConfig(input_dropout="on")) is True
    assert teachers.input_dropout_on(RunConfig(input_dropout="off")) is False
    with pytest.raises(ConfigError, match="input"):
        RunConfig(input_dropout="sometimes")


def test_without_input_dropout_a_one_layer_model_is_deterministic_in_training():
    """A 1-layer MLP has only its input dropout: off, training mode equals eval mode; on, it does not."""
    torch.manual_seed(0)
    model, x = MLP(5, 8, 1, 3, dropout=0.5), torch.randn(30, 5)
    model.eval()
    expected = model(x, torch.zeros(2, 0, dtype=torch.long))
    model.train()
    with_input_dropout(model, on=False)
    assert model.input_drop == 0.0 and model.dropout == 0.5
    torch.testing.assert_close(model(x, torch.zeros(2, 0, dtype=torch.long)), expected)
    with_input_dropout(model, on=True)
    assert model.input_drop == 0.5
    assert not torch.allclose(model(x, torch.zeros(2, 0, dtype=torch.long)), expected)


@pytest.mark.parametrize("family", ["gat-sep", "gcnii"])
def test_the_pipeline_builds_teachers_and_students_by_the_rule(family: str):
    ds = load_dataset(DENSE)
    cfg = RunConfig(dataset=DENSE, teacher=family)
    norm = teachers.feature_norm(cfg, ds)
    teacher, _ = teachers.teacher_model(replace(cfg, input_dropout="off"), ds, norm, torch.device("cpu"))
    assert teacher.input_drop == 0.0 and teacher.dropout == cfg.teacher_dropout > 0
    on, _ = teachers.teacher_model(cfg, ds, norm, torch.device("cpu"))
    assert on.input_drop == cfg.teacher_dropout
    student, _ = build_student("sage-res", in_channels=5, hidden_channels=8, num_layers=2, out_channels=2)
    assert student.input_drop == student.dropout  # built alone: the model's own rate, as before


def test_auto_on_dense_features_keeps_what_the_scratch_students_validate_better(monkeypatch):
    """The probe is the scratch student search, with and without input dropout; the better
    validation score decides and its students are kept, an exact tie keeps it on. The search is
    replaced by a scorer of the input dropout it was given."""
    ds = load_dataset(DENSE)
    cfg = RunConfig(dataset=DENSE)
    norm = teachers.feature_norm(cfg, ds)
    for scores, expected in (({True: 0.70, False: 0.80}, False), ({True: 0.80, False: 0.70}, True),
                             ({True: 0.75, False: 0.75}, True)):
        seen: list[bool] = []

        def search(c, prep, kinds, progress, scores=scores, seen=seen):
            assert kinds == () and c is cfg and prep.ds is ds
            seen.append(prep.input_dropout.on)
            return SimpleNamespace(fit=SimpleNamespace(best_val=scores[prep.input_dropout.on]),
                                   on=prep.input_dropout.on)

        monkeypatch.setattr(dropouts, "train_candidates", search)
        got = dropouts.decide(cfg, ds, norm, cfg.train_config, torch.device("cpu"))
        assert seen == [True, False] and got.dropout.rule == "probe" and got.dropout.on is expected
        assert got.dropout.probe_val == {"on": scores[True], "off": scores[False]}
        assert got.scratch.on is expected  # the kept search is the run's scratch baseline
        assert got.dropout.config(cfg).input_dropout == ("on" if expected else "off")


def test_no_probe_where_the_option_or_the_features_decide(monkeypatch):
    monkeypatch.setattr(dropouts, "train_candidates", lambda *a, **k: pytest.fail("no probe expected"))
    ds = load_dataset(DENSE)
    for value, on in (("on", True), ("off", False)):
        got = dropouts.decide(RunConfig(dataset=DENSE, input_dropout=value), ds, None, None, torch.device("cpu"))
        assert (got.dropout.on, got.dropout.rule, got.scratch) == (on, "set", None)
    words = SimpleNamespace(data=SimpleNamespace(x=(torch.rand(30, 40) > 0.9).float()))
    got = dropouts.decide(RunConfig(), words, None, None, torch.device("cpu"))
    assert (got.dropout.on, got.dropout.rule) == (True, "bag-of-words")


@pytest.mark.parametrize("on", [True, False])
def test_the_teacher_and_every_student_follow_the_runs_decision(monkeypatch, on: bool):
    from distill import pipeline
    from distill.students import train_candidates

    probed = SimpleNamespace(name="the probe's scratch students")
    decision = dropouts.Decision(InputDropout(on, "probe", {"on": 0.5, "off": 0.6}), probed)
    monkeypatch.setattr(dropouts, "decide", lambda *args, **kwargs: decision)
    cfg = RunConfig(dataset="synthetic:nodes=200,avg_degree=8,features=6,seed=3", teacher="gcn", teacher_layers=2,
                    teacher_hidden=16, epochs=3, patience=3, min_epochs=0, student="sage-res", kd="response",
                    alpha="0.8", temperature="1")
    prep = pipeline.prepare(cfg, progress=False)
    assert prep.input_dropout.on is on and prep.scratch is probed
    assert prep.teacher_metrics["input_dropout"] == {"on": on, "rule": "probe", "probe_val": {"on": 0.5, "off": 0.6}}
    assert prep.teacher.input_drop == (cfg.teacher_dropout if on else 0.0)
    for kinds in ((), cfg.kd_kinds):  # scratch and distilled
        student = train_candidates(cfg, prep, kinds, progress=False).model
        assert student.input_drop == (cfg.student_dropout if on else 0.0) and student.dropout == cfg.student_dropout
