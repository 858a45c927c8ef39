"""Students: one trained per candidate (graph x soft-target weight), the best kept on validation.
The scratch baseline is the same search with no teacher: same initialisation, budget and loop."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace

import torch

from distill.artefacts import Prepared, Trained
from distill.choose import best_on_validation
from distill.config import RunConfig
from distill.models import FeatureNorm, build_student, propagation_of, with_input_dropout
from distill.objectives import Objective, class_balanced_weights
from distill.policy import StudentGraph
from distill.structure import candidate_graphs, teacher_importance
from distill.teacher_models import HETERO_TEACHERS
from distill.train import fit, predict, test_metrics


def train_student(cfg: RunConfig, prep: Prepared, sg: StudentGraph, kinds: tuple[str, ...],
                  alpha: float | None, progress: bool, temperature: float | None = None,
                  regularised: bool = True) -> Trained:
    """Train `cfg.student` on `sg` with the objectives `kinds` (() = scratch, hard labels only),
    soft-target weight `alpha` and distillation `temperature` (default: the first of the run's);
    without weight decay and dropout unless `regularised` -> the student, its full-graph logits [N, C]
    and test metrics."""
    temperature = temperature if temperature is not None else cfg.temperatures[0]
    tcfg = prep.tcfg if regularised else replace(prep.tcfg, weight_decay=0.0)
    raw = prep.ds.data.to(prep.device)
    data = copy.copy(raw)  # the same graph and labels, with the student's input rows (sg.inputs)
    data.x = sg.inputs(raw.x)
    torch.manual_seed(cfg.seed)
    student, _ = build_student(cfg.student, in_channels=raw.num_features, hidden_channels=cfg.student_hidden,
                               num_layers=cfg.student_layers, out_channels=prep.ds.num_classes,
                               dropout=cfg.student_dropout if regularised else 0.0, mean_input=sg.policy.mean_input)
    student.feature_norm = FeatureNorm(prep.norm.mode, prep.norm.mean, prep.norm.std)
    with_input_dropout(student, prep.input_dropout.on)
    teacher = prep.signals if kinds else None
    widths = [cfg.student_hidden] * (cfg.student_layers - 1) + [prep.ds.num_classes]
    teacher_widths = [h.size(1) for h in teacher.hidden] if teacher is not None else []
    # Pairs by the kept teacher's own depth (a 16-layer gcnii under auto, not --teacher-layers).
    pairs = cfg.layer_pairs_for(len(teacher.hidden)) if teacher is not None else cfg.layer_pairs
    balance = class_balanced_weights(teacher.logits) if teacher is not None and cfg.kd_balance == "on" else None
    objective = Objective(kinds, pairs, widths, teacher_widths, alpha if alpha is not None else 0.0,
                          temperature, cfg.beta, cfg.gamma, balance).to(prep.device)
    student.to(prep.device)
    edges, kept = sg.edges.to(prep.device), sg.kept.to(prep.device)
    result = fit(student, data, edges, lambda out: objective(out, data.y, data.train_mask, teacher, kept),
                 tcfg, f"{'+'.join(kinds) or 'scratch'} {cfg.student}", progress, extra=objective)
    logits = predict(student, data, edges)
    soft = "response" in kinds and bool(alpha)
    return Trained(student.cpu().eval(), logits.cpu(), sg, result, test_metrics(logits, data), kinds,
                   alpha if "response" in kinds else None, temperature=temperature if soft else None,
                   student=cfg.student, regularised=regularised, balanced=soft and balance is not None)


def candidate_name(propagation: str, alpha: float | None, temperature: float | None = None,
                   regularised: bool = True) -> str:
    """How a candidate appears in metrics and reports: `gcn`, `attention, alpha 0.2`, `gcn, alpha 0.8, T 4`
    or `none, alpha 0.8, T 1, unregularised`."""
    name = propagation if alpha is None else f"{propagation}, alpha {alpha:g}"
    name = name if temperature is None else f"{name}, T {temperature:g}"
    return name if regularised else f"{name}, unregularised"


def _settings(cfg: RunConfig, kinds: tuple[str, ...]) -> list[tuple[float | None, float | None, bool]]:
    """(alpha, temperature, regularised) to try: the temperature and the regularisation choice matter
    only where soft targets weigh in."""
    if "response" not in kinds:
        return [(None, None, True)]
    return [(alpha, t, reg) for alpha in cfg.alphas
            for t in (cfg.temperatures if alpha else (None,))
            for reg in (cfg.soft_regularisation if alpha else (True,))]


def train_candidates(cfg: RunConfig, prep: Prepared, kinds: tuple[str, ...], progress: bool) -> Trained:
    """Train each student family of `cfg.students` with `kinds` on each candidate graph and, with
    response KD, each soft-target weight of `cfg.alphas` and temperature of `cfg.temperatures`;
    keep the best on validation (its record names every candidate's score)."""
    return _best(_candidates(cfg, prep, [(kinds, cfg.students)], progress))


def train_distilled(cfg: RunConfig, prep: Prepared, progress: bool) -> Trained:
    """`train_candidates` over every objective set of `cfg.kd_sets` at once (`--kd auto`: response,
    and response + structure), the best on validation kept. Under auto, structure is tried only
    where it can be: for a homogeneous teacher (a type-aware one never sees the meta-path edges
    the student is served on) and a student that has neighbours (not mlp)."""
    family = cfg.teacher_family(prep.teacher_metrics)
    plan = [(kinds, tuple(s for s in cfg.students if not (
        cfg.kd == "auto" and "structure" in kinds and not auto_tries_structure(family, s))))
        for kinds in cfg.kd_sets]
    return _best(_candidates(cfg, prep, [(kinds, students) for kinds, students in plan if students], progress))


def auto_tries_structure(teacher_family: str, student: str) -> bool:
    """Whether `--kd auto` trains `student` with structure KD from a `teacher_family` teacher: not
    from a type-aware teacher, and not for a student without neighbours."""
    return teacher_family not in HETERO_TEACHERS and propagation_of(student) != "none"


def _best(candidates: list[tuple[str, Callable[[], Trained]]]) -> Trained:
    best = best_on_validation(candidates, key=lambda t: (t.fit.best_val,))
    return replace(best.item, candidates_val=best.scores)


def _candidates(cfg: RunConfig, prep: Prepared, plan: list[tuple[tuple[str, ...], tuple[str, ...]]],
                progress: bool) -> list[tuple[str, Callable[[], Trained]]]:
    """(name, build) per (objective set, student families) of `plan` x candidate graph x (alpha, T)."""
    several_t = len(cfg.temperatures) > 1
    # The teacher's edge importance does not depend on the student: computed once for every family.
    importance = teacher_importance(cfg, prep) if any(
        "structure" in kinds and propagation_of(s) != "none" for kinds, students in plan for s in students) else None

    def family(student: str, kinds: tuple[str, ...]) -> list[tuple[str, Callable[[], Trained]]]:
        scfg = replace(cfg, student=student)
        prefix = f"{student}: " if len(cfg.students) > 1 else ""
        prefix = f"{'+'.join(kinds)}: {prefix}" if len(plan) > 1 else prefix
        return [(prefix + candidate_name(sg.policy.propagation, alpha, t if several_t else None, reg),
                 lambda sg=sg, alpha=alpha, t=t, reg=reg: train_student(scfg, prep, sg, kinds, alpha, progress, t, reg))
                for sg in candidate_graphs(scfg, prep, kinds, importance) for alpha, t, reg in _settings(scfg, kinds)]

    return [c for kinds, students in plan for student in students for c in family(student, kinds)]
