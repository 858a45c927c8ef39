"""The teacher: trained purely for accuracy, restarted from several initialisations, the best
kept on validation; then read once for the signals a student learns from."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch

from distill.artefacts import TeacherSignals, TrainedTeacher
from distill.choose import best_on_validation
from distill.config import RunConfig
from distill.data import Dataset, bag_of_words
from distill.errors import ConfigError
from distill.models import FeatureNorm
from distill.objectives import supervised_views
from distill.policy import prune
from distill.teacher_models import HETERO_TEACHERS, MeanTeacher, build_teacher
from distill.train import Edges, TrainConfig, fit, predict, test_metrics, val_rank, validate


def feature_norm(cfg: RunConfig, ds: Dataset) -> FeatureNorm:
    """The input normalisation every model (and so the ONNX student) carries."""
    mode = cfg.feature_norm
    if mode == "auto":
        mode = "row" if bag_of_words(ds.data.x) else "standard"
    x = ds.data.x[ds.data.train_mask]
    std = x.std(0) if len(x) > 1 else x.new_zeros(x.size(1))
    # A column (nearly) constant on the training rows, next to its range over all nodes, is only
    # centred: dividing by its tiny std would blow up the rows where it differs (a category no labelled
    # node has) by orders of magnitude. Relative to the range, not the magnitude, so a column on a 1e-8
    # scale and a timestamp (a large offset, a small spread) are still standardised.
    span = ds.data.x.amax(0) - ds.data.x.amin(0)
    return FeatureNorm(mode, x.mean(0), torch.where(std <= 1e-4 * span, torch.ones_like(std), std))


def input_dropout_on(cfg: RunConfig) -> bool:
    """What a teacher built straight from `cfg` does with its input features: on / off as set; auto,
    where no run decided it (a teacher restored for evaluation, bench/teacher_ablation.py), on: the
    behaviour before the option, and `Prepared`'s default for the students beside it."""
    return cfg.input_dropout != "off"


def teacher_model(cfg: RunConfig, ds: Dataset, norm: FeatureNorm, device: torch.device,
                  family: str | None = None) -> tuple[torch.nn.Module, Edges]:
    """An untrained teacher of `family` (default: the config's, which must then name one) to load a
    trained one's state into: under --teacher-ensemble K, a MeanTeacher of K members of it."""
    if cfg.teacher_ensemble == 1:
        return _single_model(cfg, ds, norm, device, 0, family)
    members = [_single_model(member_config(cfg, i, family), ds, norm, device, 0, family)
               for i in range(cfg.teacher_ensemble)]
    return MeanTeacher([m for m, _ in members]).to(device), members[0][1]


def member_config(cfg: RunConfig, i: int, family: str | None = None) -> RunConfig:
    """The config of member `i` of --teacher-ensemble: one teacher of seed cfg.seed + i, of `family`
    when given (members after the first keep the family the first chose under --teacher auto)."""
    return replace(cfg, seed=cfg.seed + i, teacher_ensemble=1, teacher=family or cfg.teacher)


def _single_model(cfg: RunConfig, ds: Dataset, norm: FeatureNorm, device: torch.device, restart: int = 0,
                  family: str | None = None) -> tuple[torch.nn.Module, Edges]:
    """An untrained teacher of `family` (default: the config's, which must then name one),
    initialisation `restart` of this seed, and the edges it sees (the full graph, or capped by
    --teacher-fanout)."""
    family = family or cfg.teacher
    if family == "auto":
        raise ConfigError("--teacher auto names no single architecture; pass the family the run kept")
    edges = ds.data.edge_index
    if cfg.teacher_fanout:
        edges = prune(edges, ds.data.num_nodes, cfg.teacher_fanout, cfg.seed)
    torch.manual_seed(cfg.seed + 1_000_003 * restart)
    teacher = build_teacher(
        family, in_channels=ds.data.num_features, hidden_channels=cfg.teacher_hidden,
        num_layers=cfg.teacher_depth(family), out_channels=ds.num_classes, dropout=cfg.teacher_dropout,
        heads=cfg.teacher_heads, attn_dropout=cfg.attn_dropout, residual=cfg.teacher_residual,
        norm=cfg.teacher_norm, jk=cfg.teacher_jk, alpha=cfg.gcnii_alpha, theta=cfg.gcnii_theta, graph=ds.hetero,
    )
    teacher.feature_norm = FeatureNorm(norm.mode, norm.mean, norm.std)
    teacher.input_drop = teacher.dropout if input_dropout_on(cfg) else 0.0
    return teacher.to(device), Edges(edges).to(device)


def train_family(cfg: RunConfig, ds: Dataset, norm: FeatureNorm, tcfg: TrainConfig, device: torch.device,
                 progress: bool, family: str) -> TrainedTeacher:
    """Train `family` `cfg.teacher_restarts` times from different initialisations and keep the best
    on validation. Deep GATs are unstable on small label sets, and a bad teacher is exactly what
    distillation copies. Metrics: the kept restart's training record, `restarts_val` and `family`."""
    data = ds.data.to(device)

    def restart(i: int) -> TrainedTeacher:
        teacher, edges = _single_model(cfg, ds, norm, device, i, family)
        result = fit(teacher, data, edges, lambda out: supervised_views(out, data.y, data.train_mask), tcfg,
                     f"teacher {family} {i + 1}/{cfg.teacher_restarts}", progress)
        return TrainedTeacher(teacher, edges, result.__dict__)

    best = best_on_validation(((f"restart {i}", lambda i=i: restart(i)) for i in range(cfg.teacher_restarts)),
                              key=lambda t: _rank(t.metrics, tcfg.keep_on), shown=lambda t: t.metrics["best_val"])
    kept = best.item
    return TrainedTeacher(kept.model, kept.edges,
                          {**kept.metrics, "restarts_val": list(best.scores.values()), "family": family})


def teacher_families(cfg: RunConfig, ds: Dataset) -> tuple[str, ...]:
    """The families a run trains: cfg.families, and under --teacher auto on a heterogeneous dataset
    the type-aware ones too (a homogeneous teacher sees only the meta-path view), unless structure
    KD is asked for: it weighs the student's edges by the teacher's attention or gradient on them,
    and a type-aware teacher never sees the meta-path edges the student is served on."""
    structure = "structure" in cfg.kd_kinds
    if cfg.teacher == "auto" and ds.hetero is not None and not structure:
        return (*cfg.families, *HETERO_TEACHERS)
    if set(cfg.families) & set(HETERO_TEACHERS):
        if ds.hetero is None:
            raise ConfigError(f"--teacher {cfg.teacher} needs a heterogeneous dataset (synthetic-hetero, acm:PATH); "
                              f"{ds.name} has one node type")
        if structure:
            raise ConfigError(f"--teacher {cfg.teacher} has no importance for the meta-path edges structure KD "
                              "weighs; drop structure from --kd or pick a homogeneous teacher")
    return cfg.families


def train_teacher(cfg: RunConfig, ds: Dataset, norm: FeatureNorm, tcfg: TrainConfig, device: torch.device,
                  progress: bool) -> TrainedTeacher:
    """`train_single`, or under --teacher-ensemble K, K of them read as one (`ensemble`)."""
    return ensemble(cfg, lambda member: train_single(member, ds, norm, tcfg, device, progress), ds, device)


def ensemble(cfg: RunConfig, one: Callable[[RunConfig], TrainedTeacher], ds: Dataset,
             device: torch.device) -> TrainedTeacher:
    """The teacher `one` gives for `cfg` (trained, or loaded from a cache), or under --teacher-ensemble
    K the K teachers it gives for `member_config(cfg, i)` (members after the first in the family the
    first kept) as one MeanTeacher. Metrics: its test metrics and validation score, the first
    member's family record, the members' summed training record and, under `members`, each one's
    seed and scores."""
    first = one(member_config(cfg, 0))
    if cfg.teacher_ensemble == 1:
        return first
    family = cfg.teacher_family(first.metrics)
    members = [first, *(one(member_config(cfg, i, family)) for i in range(1, cfg.teacher_ensemble))]
    model, edges, data = MeanTeacher([m.model for m in members]), first.edges, ds.data.to(device)
    best_val, neg_loss = validate(model, data, edges)
    summed = {k: sum(m.metrics[k] for m in members) for k in ("epochs_run", "seconds")}
    record = [{"seed": cfg.seed + i, **{k: m.metrics.get(k) for k in ("family", "best_val", "accuracy", "auroc")}}
              for i, m in enumerate(members)]
    metrics = {**first.metrics, **summed, **test_metrics(predict(model, data, edges), data),
               "best_val": best_val, "best_val_loss": -neg_loss, "members": record}
    return TrainedTeacher(model, edges, metrics)


def train_single(cfg: RunConfig, ds: Dataset, norm: FeatureNorm, tcfg: TrainConfig, device: torch.device,
                 progress: bool) -> TrainedTeacher:
    """Train every family of `cfg.families` in order (each with its restarts) and keep the best on
    validation. Past `cfg.teacher_budget` seconds no further family is started; the first always is.
    Metrics: test metrics of the kept teacher, its training record, `family`, `families_val` (the
    validation score of every family trained) and `families_skipped` (those the budget left out)."""
    start, order, skipped = time.perf_counter(), teacher_families(cfg, ds), []
    tcfg = replace(tcfg, keep_on=cfg.teacher_keep_on)

    def candidates() -> Iterator[tuple[str, Callable[[], TrainedTeacher]]]:
        for i, family in enumerate(order):
            if i and cfg.teacher_budget and time.perf_counter() - start > cfg.teacher_budget:
                skipped.extend(order[i:])
                return
            yield family, lambda family=family: train_family(cfg, ds, norm, tcfg, device, progress, family)

    shown = "best_val_loss" if tcfg.keep_on == "loss" else "best_val"  # families_val: what the choice read
    best = best_on_validation(candidates(), key=lambda t: _rank(t.metrics, tcfg.keep_on),
                              shown=lambda t: t.metrics[shown])
    kept, data = best.item, ds.data.to(device)
    logits = predict(kept.model, data, kept.edges)
    metrics = {**test_metrics(logits, data), **kept.metrics, "families_val": best.scores,
               "families_skipped": skipped, "keep_on": tcfg.keep_on}
    return TrainedTeacher(kept.model, kept.edges, metrics)


@torch.no_grad()
def teacher_signals(teacher: torch.nn.Module, ds: Dataset, edges: Edges, device: torch.device) -> TeacherSignals:
    """Eval-mode logits [N, C] and per-layer embeddings of the trained teacher, detached."""
    teacher.eval()
    out = teacher.run(ds.data.x.to(device), edges.edge_index, edges.edge_weight)
    return TeacherSignals(out.logits.detach(), [h.detach() for h in out.hidden])


def _rank(metrics: dict[str, Any], keep_on: str) -> tuple[float, ...]:
    return val_rank(metrics["best_val"], metrics.get("best_val_loss", float("nan")), keep_on)
