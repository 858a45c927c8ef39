"""What the stages of the job hand each other, as typed records. A leaf module: it imports no
other stage, so pipeline, writer, select and refresh can all depend on it without a circle."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from distill.config import RunConfig
from distill.data import Dataset
from distill.models import FeatureNorm, LayerStack
from distill.policy import StudentGraph
from distill.train import Edges, FitResult, TrainConfig


@dataclass(frozen=True)
class TeacherSignals:
    """What a trained teacher hands the student: logits [N, C], hidden [N, H_t] per layer (detached)."""

    logits: Tensor
    hidden: list[Tensor]


@dataclass(frozen=True)
class TrainedTeacher:
    """The kept teacher, the edges it saw, and its test metrics and training record."""

    model: torch.nn.Module
    edges: Edges
    metrics: dict[str, Any]


@dataclass(frozen=True)
class EdgeImportance:
    """The teacher's importance of every data edge, edges [E]; for a GAT also of every node's
    self-loop, self_loops [N] (attention has one; a gradient score does not)."""

    edges: Tensor
    self_loops: Tensor | None = None


@dataclass(frozen=True)
class TailAdjustment:
    """The chosen logit `shift` of the rarest labelled class, the per-class offsets [C] it makes
    (centred), and, without (shift 0) and with them: validation balanced accuracy, selection
    metric and recall of the rarest class, and the share of all nodes predicted as it; the scratch
    student's floors, when given (distill.tail)."""

    shift: float
    offsets: list[float]
    val_balanced_before: float
    val_balanced_after: float
    val_metric_before: float
    val_metric_after: float
    rare_class: int
    val_rare_before: float
    val_rare_after: float
    floor: float | None  # the scratch student's validation recall of `rare_class`
    rate_before: float
    rate_after: float
    rate_floor: float | None  # the share of all nodes the scratch student predicts as `rare_class`


@dataclass(frozen=True)
class Trained:
    """A trained student (or the kept one of several candidates) and its torch evaluation:
    logits [N, C] on CPU from the full-graph pass over `graph`, test metrics, training record."""

    model: LayerStack
    logits: Tensor
    graph: StudentGraph
    fit: FitResult
    test: dict[str, Any]
    kd: tuple[str, ...]
    alpha: float | None
    student: str  # the student family (what --student auto kept)
    candidates_val: dict[str, float] = field(default_factory=dict)
    tail: TailAdjustment | None = None
    temperature: float | None = None  # the distillation temperature, where soft targets weighed in
    regularised: bool = True  # trained with weight decay and dropout (--soft-regularise)
    balanced: bool = False  # soft targets weighted by class (--kd-balance on), where they weighed in

    def record(self) -> dict[str, Any]:
        """The report's entry: test metrics, training record and the validation choice."""
        return {**self.test, **self.fit.__dict__, "student": self.student, "kd": list(self.kd), "alpha": self.alpha,
                "temperature": self.temperature, "regularised": self.regularised, "balanced": self.balanced,
                "propagation": self.graph.policy.propagation,
                "candidates_val": dict(self.candidates_val),
                **({"tail": asdict(self.tail)} if self.tail is not None else {})}


@dataclass(frozen=True)
class InputDropout:
    """The run's decision: `on`, why (`rule`: "set" by the option, "bag-of-words", or "probe"), and
    the probing scratch students' validation score with dropout "on" and "off" where it ran."""

    on: bool
    rule: str
    probe_val: dict[str, float] = field(default_factory=dict)

    def config(self, cfg: RunConfig) -> RunConfig:
        """`cfg` with the decision written in (auto resolved), as the teacher is built and keyed."""
        return replace(cfg, input_dropout="on" if self.on else "off")


@dataclass(frozen=True)
class Prepared:
    """Everything a student needs from one teacher run: data, normalisation, budget, teacher signals."""

    ds: Dataset
    device: torch.device
    norm: FeatureNorm
    tcfg: TrainConfig
    teacher: torch.nn.Module
    teacher_edges: Edges
    teacher_metrics: dict[str, Any]
    signals: TeacherSignals
    input_dropout: InputDropout = InputDropout(True, "set")  # the run's decision, for every student
    scratch: Trained | None = None  # the scratch students of cfg.students the input-dropout probe kept

    @classmethod
    def without_teacher(cls, ds: Dataset, device: torch.device, norm: FeatureNorm, tcfg: TrainConfig,
                        input_dropout: InputDropout) -> Prepared:
        """For scratch students only (they read no teacher field): the teacher fields are empty."""
        empty = torch.zeros(0)
        return cls(ds, device, norm, tcfg, torch.nn.Identity(), Edges(torch.zeros(2, 0, dtype=torch.long)), {},
                   TeacherSignals(empty, []), input_dropout)


@dataclass(frozen=True)
class Distilled:
    """A trained student (the kept candidate) and its ONNX export."""

    cfg: RunConfig
    trained: Trained
    onnx_bytes: bytes
