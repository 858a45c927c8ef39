"""bench/accuracy.py: the teacher cache must hand back the same teacher, and only for the same options."""

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from distill import teacher as teachers
from distill.config import RunConfig
from distill.data import load_dataset
from tests.bench.scripts import load

TINY = "synthetic:nodes=120,avg_degree=6,features=5,seed=2"


def _bench():
    return load("accuracy")


def test_teacher_cache_hits_for_student_options_and_misses_for_teacher_options(tmp_path, monkeypatch):
    acc = _bench()
    cfg = RunConfig(dataset=TINY, teacher_layers=2, teacher_hidden=8, teacher_heads=2, epochs=4, patience=2,
                    min_epochs=0)
    ds = load_dataset(cfg.dataset)
    norm = teachers.feature_norm(cfg, ds)
    cpu = torch.device("cpu")
    first = acc.teacher_for(cfg, ds, norm, cfg.train_config, cpu, tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 1

    def no_training(*args, **kwargs):
        raise RuntimeError("trained again")

    monkeypatch.setattr(acc.teachers, "train_teacher", no_training)
    again = acc.teacher_for(replace(cfg, student="mlp", alpha="0.5", kd="response,structure"), ds, norm,
                                   cfg.train_config, cpu, tmp_path)
    assert again.metrics["accuracy"] == first.metrics["accuracy"]
    for name, value in first.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[name], value), name
    with pytest.raises(RuntimeError, match="trained again"):
        acc.teacher_for(replace(cfg, teacher_hidden=16), ds, norm, cfg.train_config, cpu, tmp_path)
    with pytest.raises(RuntimeError, match="trained again"):
        acc.teacher_for(replace(cfg, seed=1), ds, norm, cfg.train_config, cpu, tmp_path)


def test_teacher_cache_keeps_apart_runs_whose_kd_changes_the_teacher_families(tmp_path, monkeypatch):
    # On a heterogeneous graph --teacher auto adds the type-aware families unless structure KD is asked
    # for: a response-KD run's cached teacher (maybe hetero-sage) must not serve a structure run.
    acc = _bench()
    cfg = RunConfig(dataset="synthetic-hetero", teacher_layers=2, teacher_hidden=8, teacher_heads=2, epochs=2,
                    patience=2, min_epochs=0, kd="response")
    ds = load_dataset(cfg.dataset)
    norm = teachers.feature_norm(cfg, ds)
    trained: list[tuple[str, ...]] = []
    real = acc.teachers.train_teacher

    def counted(run_cfg, *args, **kwargs):
        trained.append(teachers.teacher_families(run_cfg, ds))
        return real(run_cfg, *args, **kwargs)

    monkeypatch.setattr(acc.teachers, "train_teacher", counted)
    for kd in ("response", "response,structure", "response", "response,structure", "auto"):
        acc.teacher_for(replace(cfg, kd=kd), ds, norm, cfg.train_config, torch.device("cpu"), tmp_path)
    structure_families = teachers.teacher_families(replace(cfg, kd="response,structure"), ds)
    assert trained == [teachers.teacher_families(cfg, ds), structure_families]  # auto = response's families
    assert len(list(tmp_path.glob("*.pt"))) == 2
    # A type-aware teacher under the structure run's key (as caches written before the key held the
    # families could hold): a family the run would not train, so it is trained again and replaced.
    structure = replace(cfg, kd="response,structure")
    (saved,) = [p for p in tmp_path.glob("*.pt") if torch.load(p)["options"]["families"] == list(structure_families)]
    stale = torch.load(saved)
    torch.save({**stale, "metrics": {**stale["metrics"], "family": "hetero-sage"}}, saved)
    acc.teacher_for(structure, ds, norm, cfg.train_config, torch.device("cpu"), tmp_path)
    assert trained[-1] == structure_families and torch.load(saved)["metrics"]["family"] in structure_families


def test_paired_gain_compares_each_seed_with_its_own_scratch_run():
    acc = _bench()
    scratch = {0: 0.80, 1: 0.70, 2: 0.75}
    rows = [{"seed": 0, "accuracy": 0.82}, {"seed": 1, "accuracy": 0.69}, {"seed": 2, "accuracy": 0.78}]
    # gains +0.02, -0.01, +0.03: mean +0.0133, population std 0.0170, two seeds of three up
    assert acc.paired_gain(rows, scratch, "accuracy") == "+0.0133 ± 0.0170 (2/3)"
    assert acc.paired_gain([{"seed": 9, "accuracy": 0.9}], scratch, "accuracy") == ""


def test_pick_default_keeps_the_better_validation_row_per_seed_and_the_first_of_ties():
    acc = _bench()

    def row(variant, seed, val, test, student="auto-2", propagation="gcn"):
        return {"dataset": "d", "student": student, "variant": variant, "seed": seed, "best_val": val,
                "auroc": test, "propagation": propagation, "kept": "mlp" if propagation == "none" else "gcn"}

    rows = [{"dataset": "d", "student": "gat-6", "variant": "teacher", "seed": s} for s in range(3)]
    rows += [row("response", 0, 0.80, 0.81), row("response+structure", 0, 0.82, 0.84),
             row("response+structure", 1, 0.79, 0.83), row("response", 1, 0.79, 0.80),  # a tie: response first
             row("response", 2, 0.90, 0.90),  # seed 2 lacks a structure row: no default for it
             row("response", 0, 0.70, 0.70, "mlp-2", "none"), row("response+structure", 0, 0.75, 0.75, "mlp-2", "none")]
    picked = acc.pick_default(rows)
    assert acc.AUTO_VARIANTS == ["response", "response+structure"]
    assert [(r["student"], r["seed"], r["auroc"], r["kd"], r["variant"]) for r in picked] == [
        ("auto-2", 0, 0.84, ["response", "structure"], "default"), ("auto-2", 1, 0.80, ["response"], "default"),
        ("mlp-2", 0, 0.70, ["response"], "default")]  # auto never tries structure on a graph-free student
    assert rows[3]["variant"] == "response"  # the source rows are left as they were
    typed = [{**r, "student": "hetero-sage-2"} if r["variant"] == "teacher" else r for r in rows]
    assert [r["auroc"] for r in acc.pick_default(typed)][:2] == [0.81, 0.80]


def test_the_cache_key_leaves_out_exactly_the_student_and_distillation_options():
    options = _bench().STUDENT_OPTIONS
    assert {"student", "fanout", "alpha", "soft_regularise", "kd_balance", "tail_adjust"} <= options
    assert not {"dataset", "teacher", "teacher_layers", "epochs", "lr", "seed", "feature_norm"} & options


def test_an_option_added_after_teachers_were_cached_keys_them_only_off_its_default():
    bench = _bench()
    cfg = RunConfig()
    assert "teacher_keep_on" not in bench.teacher_key(cfg, cfg.families)
    assert bench.teacher_key(replace(cfg, teacher_keep_on="loss"), cfg.families)["teacher_keep_on"] == "loss"


def test_a_family_joining_teacher_auto_keys_the_families_so_older_auto_teachers_are_not_reused():
    bench = _bench()
    cfg = RunConfig()
    # teachers cached by an auto run before grand joined it were keyed without families: none matches now
    assert bench.teacher_key(cfg, cfg.families)["families"] == list(cfg.families)
    assert "grand" in cfg.families
    named = replace(cfg, teacher="gcnii")
    assert "families" not in bench.teacher_key(named, named.families)


def test_ensemble_members_are_cached_as_the_single_teachers_they_are(tmp_path, monkeypatch):
    acc = _bench()
    cfg = RunConfig(dataset=TINY, teacher="gcn", teacher_layers=2, teacher_hidden=8, epochs=4, patience=2,
                    min_epochs=0)
    ds, cpu = load_dataset(cfg.dataset), torch.device("cpu")
    norm = teachers.feature_norm(cfg, ds)
    for seed in (0, 1):
        acc.teacher_for(replace(cfg, seed=seed), ds, norm, cfg.train_config, cpu, tmp_path)

    def no_training(*args, **kwargs):
        raise RuntimeError("trained again")

    monkeypatch.setattr(acc.teachers, "train_teacher", no_training)
    ens = acc.teacher_for(replace(cfg, teacher_ensemble=2), ds, norm, cfg.train_config, cpu, tmp_path)
    assert [m["seed"] for m in ens.metrics["members"]] == [0, 1]
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_the_scratch_row_is_the_probes_students_only_for_the_families_the_probe_trained(monkeypatch):
    """bench/accuracy.py reports what `distill run` keeps: the input-dropout probe's scratch students
    stand for the run's own families; any other student is trained, and distilled rows always are."""
    acc = _bench()
    probed, trained = object(), object()
    calls: list[tuple[str, tuple[str, ...]]] = []

    def train(cfg, prep, kinds, progress):
        calls.append((cfg.student, kinds))
        return trained

    monkeypatch.setattr(acc, "train_candidates", train)
    prep = SimpleNamespace(scratch=probed)
    cfg = RunConfig()
    assert acc.train_variant(cfg, prep, "scratch", probed=True) is probed and calls == []
    assert acc.train_variant(replace(cfg, student="mlp"), prep, "scratch", probed=False) is trained
    assert acc.train_variant(cfg, prep, "response", probed=True) is trained
    assert acc.train_variant(cfg, SimpleNamespace(scratch=None), "scratch", probed=True) is trained
    assert calls == [("mlp", ()), ("auto", ("response",)), ("auto", ())]
