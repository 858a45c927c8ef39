"""One seed of the temporal benchmark: baseline, teacher, scratch and distilled student under the
early-detection protocol (distill.temporal.protocol), selected on validation, reported on test."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from torch import nn

from bundle.temporal import TemporalBlock, TemporalPolicy
from distill.temporal.batch import build_blocks
from distill.temporal.data import TemporalDataset
from distill.temporal.loop import EvalSet, LoopConfig, Scores, TrainSet, mean_auroc, per_k_scores, predict, train
from distill.temporal.models import TemporalStudent, make_model
from distill.temporal.protocol import EVAL_KS, TRAIN_KS, Examples, early_examples, stratified_split

ROLES = ("baseline", "teacher", "scratch", "distilled")


@dataclass(frozen=True)
class ExperimentConfig:
    student_policy: TemporalPolicy = TemporalPolicy(fanout=10, k_hops=2)
    teacher_policy: TemporalPolicy = TemporalPolicy(fanout=20, k_hops=2)
    unlabelled_cap: int = 8000  # unlabelled examples (at EVAL_KS) that carry the teacher's soft targets
    teacher_members: int = 3  # the teacher is the mean of this many independently initialised attention models
    kd_weights: tuple[float, ...] = (1.0, 2.0)  # distilled student: one per weight, the best on validation kept
    loop: LoopConfig = field(default_factory=LoopConfig)


@dataclass(frozen=True)
class Prepared:
    """Examples and their blocks, shared by every seed: labelled users at TRAIN_KS, a capped sample of
    unlabelled users at EVAL_KS; blocks under the student's and the teacher's policy."""

    labelled: Examples
    unlabelled: Examples
    student_blocks: list[TemporalBlock]
    teacher_blocks: list[TemporalBlock]
    student_unlabelled: list[TemporalBlock]
    teacher_unlabelled: list[TemporalBlock]


def prepare(data: TemporalDataset, cfg: ExperimentConfig, progress: bool = True) -> Prepared:
    ks = tuple(sorted(set(TRAIN_KS) | set(EVAL_KS)))
    labelled = early_examples(data.store, data.labelled, data.labels, ks)
    others = np.flatnonzero(data.labels < 0).astype(np.int64)
    unlabelled = early_examples(data.store, others, data.labels, EVAL_KS)
    if len(unlabelled) > cfg.unlabelled_cap:
        keep = np.sort(np.random.default_rng(0).choice(len(unlabelled), cfg.unlabelled_cap, replace=False))
        unlabelled = unlabelled.subset(keep)
    s, t = cfg.student_policy, cfg.teacher_policy
    return Prepared(labelled, unlabelled,
                    build_blocks(data.store, labelled, s, "student blocks", progress),
                    build_blocks(data.store, labelled, t, "teacher blocks", progress),
                    build_blocks(data.store, unlabelled, s, "student blocks (unlabelled)", progress),
                    build_blocks(data.store, unlabelled, t, "teacher blocks (unlabelled)", progress))


@dataclass(frozen=True)
class SeedResult:
    """Per role: validation score (mean AUROC over EVAL_KS) and test Scores per k."""

    seed: int
    val: dict[str, float]
    test: dict[str, dict[int, Scores]]
    users_per_k: dict[int, int]
    student: TemporalStudent
    kd_weight: float


def _mean_prob(models: list[nn.Module], blocks: Sequence[TemporalBlock]) -> np.ndarray:
    """Mean positive-class probability of `models` per block, float64 [m]."""
    return np.mean([predict(m, blocks) for m in models], axis=0)


def _pick(blocks: list[TemporalBlock], mask: np.ndarray) -> list[TemporalBlock]:
    return [b for b, m in zip(blocks, mask, strict=True) if m]


def run_seed(data: TemporalDataset, prep: Prepared, seed: int, cfg: ExperimentConfig,
             progress: bool = True) -> SeedResult:
    """Train the four roles for one split seed and score them."""
    split = stratified_split(data.labelled, data.labels, seed)
    ex = prep.labelled
    in_train = np.isin(ex.node, split.train)
    evals = np.isin(ex.k, EVAL_KS)
    masks = {"val": np.isin(ex.node, split.val) & evals, "test": np.isin(ex.node, split.test) & evals}

    def sets(blocks: list[TemporalBlock]) -> tuple[TrainSet, EvalSet, EvalSet]:
        tr = TrainSet(_pick(blocks, in_train), ex.label[in_train])
        va, te = (EvalSet(_pick(blocks, m), ex.label[m], ex.k[m]) for m in (masks["val"], masks["test"]))
        return tr, va, te

    s_train, s_val, s_test = sets(prep.student_blocks)
    t_train, t_val, t_test = sets(prep.teacher_blocks)
    val: dict[str, float] = {}
    test: dict[str, dict[int, Scores]] = {}
    kept: dict[str, tuple[object, float]] = {}  # role -> (model kept on validation, its kd weight)

    def run(role: str, kind: str, tr: TrainSet, va: EvalSet, te: EvalSet, loop: LoopConfig = cfg.loop) -> None:
        model = make_model(kind, seed)
        score = train(model, tr, va, loop, seed, f"seed {seed} {role}", progress).best_val
        if score > val.get(role, -np.inf):
            val[role] = score
            test[role] = per_k_scores(predict(model, te.blocks), te.label, te.k)
            kept[role] = (model, loop.kd_weight)

    run("baseline", "baseline", s_train, s_val, s_test)
    teachers = [make_model("teacher", seed * 1000 + i) for i in range(cfg.teacher_members)]
    for i, model in enumerate(teachers):
        train(model, t_train, t_val, cfg.loop, seed * 1000 + i, f"seed {seed} teacher {i}", progress)
    val["teacher"] = mean_auroc(_mean_prob(teachers, t_val.blocks), t_val)
    test["teacher"] = per_k_scores(_mean_prob(teachers, t_test.blocks), t_test.label, t_test.k)
    run("scratch", "student", s_train, s_val, s_test)
    p = _mean_prob(teachers, list(t_train.blocks) + prep.teacher_unlabelled)
    soft = np.stack([1.0 - p, p], axis=1).astype(np.float32)
    kd = TrainSet(list(s_train.blocks) + prep.student_unlabelled,
                  np.r_[s_train.label, np.full(len(prep.unlabelled), -1)], soft)
    for w in cfg.kd_weights:
        run("distilled", "student", kd, s_val, s_test, replace(cfg.loop, kd_weight=w))
    users = {k: int(((ex.k == k) & (ex.label >= 0)).sum()) for k in EVAL_KS}
    student, weight = kept["distilled"]
    return SeedResult(seed, val, test, users, student, weight)  # type: ignore[arg-type]
