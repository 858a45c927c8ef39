"""The offline job: data -> teacher -> scratch and distilled students -> verified ONNX bundle."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from distill import bundle, export, kd, losses, policy, report, writer
from distill.config import RunConfig
from distill.data import Dataset, load_dataset
from distill.errors import ConfigError
from distill.models import STUDENTS, FeatureNorm, _Stack, build_student, build_teacher
from distill.train import Graph, TrainConfig, fit, predict, resolve_device, test_metrics

PARITY_NODES = 64


@dataclass
class StudentGraph:
    """The student's view of the graph under the neighbourhood policy."""

    policy: policy.NeighbourhoodPolicy
    pruned: Tensor
    prop_index: Tensor
    prop_weight: Tensor
    score: str = "hash"

    @property
    def neighbour_edges(self) -> Tensor:
        """The pruned graph's edges [2, E] (no self-loops): whose similarities LSP distils.
        A graph-free student still learns its teacher's local structure over the policy's edges."""
        return self.pruned

    @property
    def graph(self) -> Graph:
        return Graph(self.prop_index, self.prop_weight)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def feature_norm(cfg: RunConfig, ds: Dataset) -> FeatureNorm:
    """The input normalisation every model (and so the ONNX student) carries."""
    mode = cfg.feature_norm
    if mode == "auto":
        mode = "row" if ds.source["kind"] == "planetoid" else "standard"
    x = ds.data.x[ds.data.train_mask]
    return FeatureNorm(mode, x.mean(0), x.std(0).clamp(min=1e-6))


def propagation_of(student: str) -> str:
    """The propagation weights a student reads (gcn / mean / none)."""
    if student not in STUDENTS:
        raise ConfigError(f"unknown student {student!r}; choose one of {sorted(STUDENTS)}")
    return STUDENTS[student][1]


def student_graph(cfg: RunConfig, ds: Dataset, propagation: str, importance: Tensor | None = None,
                  score_name: str = "hash") -> StudentGraph:
    """Prune under the policy (by teacher `importance` [E] when given, else by the seeded hash)."""
    n = ds.data.num_nodes
    k_hops = 0 if propagation == "none" else cfg.student_layers
    pol = policy.NeighbourhoodPolicy(cfg.fanout, k_hops, propagation, cfg.seed)
    pruned = policy.prune(ds.data.edge_index, n, cfg.fanout, cfg.seed, importance)
    prop_index, prop_weight = policy.propagation(pruned, n, propagation)
    return StudentGraph(pol, pruned, prop_index, prop_weight, score_name)


def attention_graph(sg: StudentGraph, ds: Dataset, edges: Tensor, self_loops: Tensor) -> StudentGraph:
    """`sg`'s kept neighbours, propagated with the teacher's attention (`edges` [E] on the data edges,
    `self_loops` [N]) instead of the student's fixed weights."""
    n = ds.data.num_nodes
    kept = kd.importance_on_edges(sg.pruned, ds.data.edge_index, edges, n)
    prop_index, prop_weight = policy.propagation(sg.pruned, n, "attention", (kept, self_loops))
    return StudentGraph(replace(sg.policy, propagation="attention"), sg.pruned, prop_index, prop_weight, sg.score)


def teacher_model(cfg: RunConfig, ds: Dataset, norm: FeatureNorm, device: torch.device, restart: int = 0
                  ) -> tuple[torch.nn.Module, Graph]:
    """An untrained teacher (initialisation `restart` of this seed) and the graph it sees (the full
    graph, or capped by --teacher-fanout)."""
    edges = ds.data.edge_index
    if cfg.teacher_fanout:
        edges = policy.prune(edges, ds.data.num_nodes, cfg.teacher_fanout, cfg.seed)
    torch.manual_seed(cfg.seed + 1_000_003 * restart)
    teacher = build_teacher(
        cfg.teacher, in_channels=ds.data.num_features, hidden_channels=cfg.teacher_hidden,
        num_layers=cfg.teacher_layers, out_channels=ds.num_classes, dropout=cfg.teacher_dropout,
        heads=cfg.teacher_heads, attn_dropout=cfg.attn_dropout, residual=cfg.teacher_residual,
        norm=cfg.teacher_norm, jk=cfg.teacher_jk,
    )
    teacher.feature_norm = FeatureNorm(norm.mode, norm.mean, norm.std)
    return teacher.to(device), Graph(edges).to(device)


def train_teacher(cfg: RunConfig, ds: Dataset, norm: FeatureNorm, tcfg: TrainConfig,
                  device: torch.device, progress: bool) -> tuple[torch.nn.Module, Graph, dict[str, Any]]:
    """Train the teacher for accuracy alone, `cfg.teacher_restarts` times from different
    initialisations, and keep the best on validation -> (model, the graph it saw, test metrics).
    Deep GATs are unstable on small label sets (Cora: test 0.74-0.81 over seeds, the worst seed
    also worst on validation), and a bad teacher is what distillation copies."""
    data = ds.data.to(device)
    best: tuple[torch.nn.Module, Graph, Any] | None = None
    vals = []
    for restart in range(cfg.teacher_restarts):
        teacher, graph = teacher_model(cfg, ds, norm, device, restart)
        result = fit(teacher, data, graph, lambda out: losses.supervised(out.logits, data.y, data.train_mask),
                     tcfg, f"teacher {cfg.teacher} {restart + 1}/{cfg.teacher_restarts}", progress)
        vals.append(result.best_val)
        if best is None or result.best_val > best[2].best_val:
            best = (teacher, graph, result)
    assert best is not None  # teacher_restarts >= 1
    teacher, graph, result = best
    logits = predict(teacher, data, graph)
    return teacher, graph, {**test_metrics(logits, data), **result.__dict__, "restarts_val": vals}


@torch.no_grad()
def teacher_signals(teacher: torch.nn.Module, ds: Dataset, graph: Graph, device: torch.device) -> kd.TeacherSignals:
    """Eval-mode logits and per-layer embeddings of the trained teacher, detached."""
    teacher.eval()
    out = teacher.run(ds.data.x.to(device), graph.edge_index, graph.edge_weight)
    return kd.TeacherSignals(out.logits.detach(), [h.detach() for h in out.hidden])


@dataclass
class EdgeImportance:
    """The teacher's importance of every data edge, edges [E]; for a GAT also of every node's
    self-loop, self_loops [N] (attention has one; a gradient score does not)."""

    edges: Tensor
    self_loops: Tensor | None = None


def edge_importance(cfg: RunConfig, teacher: torch.nn.Module, ds: Dataset, graph: Graph,
                    device: torch.device) -> EdgeImportance:
    """GAT: attention averaged over heads and the teacher layers of the layer map; other teachers:
    |d(predicted-class log-prob) / d(edge weight)|."""
    teacher.eval()
    x = ds.data.x.to(device)
    n = ds.data.num_nodes
    if cfg.teacher != "gat":
        weight = torch.ones(graph.edge_index.size(1), device=device, requires_grad=True)
        log_probs = torch.log_softmax(teacher(x, graph.edge_index, weight), -1)
        log_probs.max(-1).values.sum().backward()
        return EdgeImportance(kd.importance_on_edges(ds.data.edge_index, graph.edge_index.cpu(),
                                                     weight.grad.abs().cpu(), n))
    with torch.no_grad():
        attention = teacher.run(x, graph.edge_index).attention
    scored = attention[0][0].cpu()
    score = torch.stack([attention[t - 1][1].mean(-1) for t, _ in cfg.layer_pairs]).mean(0).cpu()
    loops = scored[0] == scored[1]  # GATConv adds one self-loop per node
    self_loops = torch.zeros(n).index_put_((scored[0][loops],), score[loops])
    return EdgeImportance(kd.importance_on_edges(ds.data.edge_index, scored, score, n), self_loops)


def train_student(cfg: RunConfig, ds: Dataset, norm: FeatureNorm, sg: StudentGraph, tcfg: TrainConfig,
                  device: torch.device, teacher: kd.TeacherSignals | None, progress: bool,
                  kinds: tuple[str, ...] | None = None, alpha: float | None = None
                  ) -> tuple[_Stack, Tensor, dict[str, Any]]:
    """Scratch student when `teacher` is None, else distilled with `kinds` (default: cfg.kd) and
    soft-target weight `alpha` (default: the largest of cfg.alphas). Same initialisation, same budget,
    same loop either way."""
    data = ds.data.to(device)
    kinds = () if teacher is None else (cfg.kd_kinds if kinds is None else kinds)
    torch.manual_seed(cfg.seed)
    student, _ = build_student(cfg.student, in_channels=ds.data.num_features, hidden_channels=cfg.student_hidden,
                               num_layers=cfg.student_layers, out_channels=ds.num_classes,
                               dropout=cfg.student_dropout)
    student.feature_norm = FeatureNorm(norm.mode, norm.mean, norm.std)
    widths = [cfg.student_hidden] * (cfg.student_layers - 1) + [ds.num_classes]
    teacher_widths = [h.size(1) for h in teacher.hidden] if teacher is not None else []
    alpha = max(cfg.alphas) if alpha is None else alpha
    objective = kd.Objective(kinds, cfg.layer_pairs, widths, teacher_widths, alpha, cfg.temperature,
                             cfg.beta, cfg.gamma)
    student.to(device)
    objective.to(device)
    graph = sg.graph.to(device)
    lsp_edges = sg.neighbour_edges.to(device)
    desc = f"{'+'.join(kinds) or 'scratch'} {cfg.student}"
    result = fit(student, data, graph, lambda out: objective(out, data.y, data.train_mask, teacher, lsp_edges),
                 tcfg, desc, progress, extra=objective)
    logits = predict(student, data, graph)
    return student, logits, {**test_metrics(logits, data), **result.__dict__, "kd": list(kinds),
                             "alpha": alpha if "response" in kinds else None}


def distilled_graphs(cfg: RunConfig, ds: Dataset, kinds: tuple[str, ...], teacher: torch.nn.Module,
                     tgraph: Graph, device: torch.device) -> list[StudentGraph]:
    """The candidate graphs of a student distilled with `kinds`. With structure KD the policy keeps
    the neighbours the teacher found most important; for a GAT teacher a second candidate also
    propagates with the teacher's attention over them, so a student without attention aggregates
    the way the teacher did at no serving cost (the weights are in the stored P). Which one serves
    is `--structure-weights` (auto: chosen on validation by `train_distilled`; on Tolokers attention
    weights helped, on Cora they hurt)."""
    prop = propagation_of(cfg.student)
    if "structure" not in kinds or prop == "none":
        return [student_graph(cfg, ds, prop)]
    importance = edge_importance(cfg, teacher, ds, tgraph, device)
    name = "teacher_attention" if cfg.teacher == "gat" else "teacher_gradient"
    fixed = student_graph(cfg, ds, prop, importance.edges, name)
    if importance.self_loops is None or cfg.structure_weights == "fixed":
        return [fixed]
    attention = attention_graph(fixed, ds, importance.edges, importance.self_loops)
    return [attention] if cfg.structure_weights == "attention" else [fixed, attention]


def train_distilled(cfg: RunConfig, prep: Prepared, kinds: tuple[str, ...], progress: bool
                    ) -> tuple[_Stack, Tensor, dict[str, Any], StudentGraph]:
    """Train the student with `kinds` (() = scratch) on each candidate graph and, with response KD,
    each soft-target weight of `cfg.alphas`; keep the best on validation -> (student, logits [N, C],
    test metrics, its graph). Metrics record the choice (`propagation`, `alpha`) and every
    candidate's validation score (`candidates_val`)."""
    best: tuple[_Stack, Tensor, dict[str, Any], StudentGraph] | None = None
    candidates: dict[str, float] = {}
    alphas = cfg.alphas if "response" in kinds else (None,)
    for sg in distilled_graphs(cfg, prep.ds, kinds, prep.teacher, prep.tgraph, prep.device):
        for alpha in alphas:
            student, logits, m = train_student(cfg, prep.ds, prep.norm, sg, prep.tcfg, prep.device,
                                               prep.signals if kinds else None, progress, kinds, alpha)
            candidates[candidate_name(sg.policy.propagation, alpha)] = m["best_val"]
            if best is None or m["best_val"] > best[2]["best_val"]:
                best = (student, logits, m, sg)
    assert best is not None  # distilled_graphs always returns at least one graph
    best[2].update(propagation=best[3].policy.propagation, candidates_val=candidates)
    return best


def candidate_name(propagation: str, alpha: float | None) -> str:
    """How a candidate appears in metrics and reports: `gcn` or `attention, alpha 0.2`."""
    return propagation if alpha is None else f"{propagation}, alpha {alpha:g}"


def parity_nodes(num_nodes: int, example: int, prop_index: Tensor, seed: int) -> list[int]:
    """Held-out nodes for the ONNX check: the highest-degree ones (largest neighbourhoods) plus random."""
    degree = torch.bincount(prop_index[1], minlength=num_nodes)
    top = degree.argsort(descending=True)[: PARITY_NODES // 4].tolist()
    rng = np.random.default_rng(seed)
    rand = rng.choice(num_nodes, size=min(num_nodes, PARITY_NODES), replace=False).tolist()
    return [n for n in dict.fromkeys(top + rand) if n != example][:PARITY_NODES]


@dataclass
class Prepared:
    """Everything a student needs from one teacher run: data, normalisation, budget, teacher signals."""

    ds: Dataset
    device: torch.device
    norm: FeatureNorm
    tcfg: TrainConfig
    teacher: torch.nn.Module
    tgraph: Graph
    teacher_metrics: dict[str, Any]
    signals: kd.TeacherSignals


@dataclass
class Distilled:
    """A trained, exported and parity-checked student."""

    cfg: RunConfig
    student: _Stack
    logits: Tensor
    metrics: dict[str, Any]
    sg: StudentGraph
    onnx_bytes: bytes
    parity: export.Parity


def prepare(cfg: RunConfig, progress: bool, teacher_state: dict[str, Tensor] | None = None) -> Prepared:
    """Load the data and train the teacher, or restore it from `teacher_state` (a state_dict)."""
    device = resolve_device(cfg.device)
    ds = load_dataset(cfg.dataset, cfg.split)
    log(f"[data] {ds.name}: {ds.data.num_nodes} nodes, {ds.data.num_edges} edges, "
        f"{ds.data.num_features} features, {ds.num_classes} classes; device {device}")
    tcfg = cfg.train_config
    norm = feature_norm(cfg, ds)
    if teacher_state is None:
        teacher, tgraph, metrics = train_teacher(cfg, ds, norm, tcfg, device, progress)
    else:
        teacher, tgraph = teacher_model(cfg, ds, norm, device)
        teacher.load_state_dict(teacher_state)
        data = ds.data.to(device)
        metrics = {**test_metrics(predict(teacher, data, tgraph), data), "reused": True, "epochs_run": 0}
    log(f"[teacher{' (reused)' if teacher_state is not None else ''}] test {report.headline(metrics)}")
    return Prepared(ds, device, norm, tcfg, teacher, tgraph, metrics, teacher_signals(teacher, ds, tgraph, device))


def distill_student(cfg: RunConfig, prep: Prepared, progress: bool) -> Distilled:
    """Train the student with `cfg.kd`, export it to ONNX and check parity."""
    student, logits, metrics, sg = train_distilled(cfg, prep, cfg.kd_kinds, progress)
    student, logits = student.cpu(), logits.cpu()
    onnx_bytes, parity = export_student(student, logits, prep.ds, sg)
    return Distilled(cfg, student, logits, metrics, sg, onnx_bytes, parity)


def scratch_metrics(cfg: RunConfig, prep: Prepared, progress: bool) -> dict[str, Any]:
    """The same student trained on hard labels only, same budget: the baseline distillation must beat."""
    return train_distilled(cfg, prep, (), progress)[2]


def run(cfg: RunConfig, out: Path, force: bool = False, progress: bool = True,
        teacher_state: dict[str, Tensor] | None = None, parent: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the whole job and write the bundle at `out`. Returns the report dict.

    `teacher_state` reuses a trained teacher; `parent` (from `distill refresh`) is recorded in the
    manifest and may veto the bundle through `writer.check_against_parent`.
    """
    bundle.check_target(out, force)
    started = time.perf_counter()
    prep = prepare(cfg, progress, teacher_state)
    scratch_m = scratch_metrics(cfg, prep, progress)
    log(f"[scratch] test {report.headline(scratch_m)}")
    result = distill_student(cfg, prep, progress)
    log(f"[distilled {cfg.kd}] test {report.headline(result.metrics)}")
    log(f"[export] parity max |diff| {result.parity.max_abs_diff:.2e} on {result.parity.nodes_checked} "
        "held-out neighbourhoods")
    rep = report.build(prep.ds, cfg, prep.teacher_metrics, scratch_m, result.metrics)
    rep["seconds"] = round(time.perf_counter() - started, 2)
    extra = writer.check_against_parent(rep, parent) if parent is not None else {}
    writer.write_bundle(out, force, prep, result, rep, extra)
    return rep


def export_student(student: _Stack, logits: Tensor, ds: Dataset, sg: StudentGraph) -> tuple[bytes, export.Parity]:
    """The student as ONNX bytes, exported on the busiest node's neighbourhood and checked on other nodes'
    neighbourhoods against `logits` [N, C] (its full-graph output under the policy). Raises on a parity miss."""
    graph_free = sg.policy.propagation == "none"
    n = ds.data.num_nodes
    example = int(torch.bincount(sg.prop_index[1], minlength=n).argmax()) if not graph_free else 0
    subset, adj, _ = policy.neighbourhood(example, sg.policy.k_hops, sg.prop_index, sg.prop_weight, n)
    onnx_bytes = export.export_onnx(student, ds.data.x[subset], adj, graph_free)
    nodes = parity_nodes(n, example, sg.prop_index, sg.policy.seed)
    parity = export.check_parity(onnx_bytes, logits, ds.data.x, sg.prop_index, sg.prop_weight,
                                 sg.policy.k_hops, nodes, graph_free)
    return onnx_bytes, parity
