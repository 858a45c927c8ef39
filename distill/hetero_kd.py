"""Type-specific distillation losses for heterogeneous graphs (issue 12), and their type-agnostic
("pooled") counterparts, so what pooling does is measured rather than asserted.

- response: `response_kd` on the labelled type (distill/objectives.py), unchanged.
- feature, per-type: each node type has its own projection student -> teacher width, its own
  centring (subtracting the type's mean), and its own mean of the normalised-embedding MSE; types
  then count equally. Pooled: one projection, every type's nodes concatenated, centred by one mean
  and averaged as one set, so ACM's 7,167 authors outweigh its 60 subjects 120 to 1, and the
  per-type offset (which type a node is) dominates what the cosine sees.
- structure, per-type: LSP (distill/structure.py `lsp_loss`) on each relation's edges src -> dst
  (a destination's similarity distribution over its neighbours of that one type), averaged over
  relations. Pooled: all relations' edges merged, one distribution over all neighbours of any type,
  averaged over nodes.

Student and teacher layers are paired by depth (`teacher_layer`): the student's hidden layer 1 (all
types) against the teacher's layer round(L_t / L_s).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from distill.errors import ConfigError
from distill.hetero_models import TypedOutputs
from distill.hetero_student import Relation
from distill.objectives import class_balanced_weights, feature_loss, response_kd, supervised
from distill.structure import lsp_loss
from distill.train import Edges, FitResult, TrainConfig, fit

KD_TYPES = ("pooled", "per-type")
TYPED_KINDS = ("response", "feature", "structure")


@dataclass(frozen=True)
class TypedKDConfig:
    """Which terms (`kinds`, of TYPED_KINDS; empty = hard labels only), pooled or per-type, and
    their weights: alpha / temperature of response KD, beta of feature KD, gamma of structure KD."""

    kinds: tuple[str, ...] = TYPED_KINDS
    kd_types: str = "per-type"
    alpha: float = 0.8
    temperature: float = 1.0
    beta: float = 1.0
    gamma: float = 0.1
    balanced: bool = False  # soft targets weighted by the teacher-predicted class, as --kd-balance on weighs them

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in TYPED_KINDS]
        if unknown:
            raise ConfigError(f"unknown distillation kinds {unknown}; choose from {list(TYPED_KINDS)}")
        if self.kd_types not in KD_TYPES:
            raise ConfigError(f"--kd-types {self.kd_types!r}: choose one of {list(KD_TYPES)}")
        if self.balanced and "response" not in self.kinds:
            raise ConfigError(f"balanced soft targets need the response term; kinds are {list(self.kinds)}")
        if not 0.0 <= self.alpha <= 1.0 or self.temperature <= 0 or self.beta < 0 or self.gamma < 0:
            raise ConfigError(f"bad weights {self}: alpha in [0, 1], temperature > 0, beta and gamma >= 0")


def centred(h: Tensor) -> Tensor:
    """h [N, H] minus its mean row."""
    return h - h.mean(0, keepdim=True)


def per_type_feature_loss(student: dict[str, Tensor], teacher: dict[str, Tensor]) -> Tensor:
    """Mean over types of `feature_loss` between each type's centred (already projected) student and
    centred teacher states: {type: [N_type, H]} both -> scalar."""
    return torch.stack([feature_loss(centred(student[t]), centred(teacher[t])) for t in teacher]).mean()


def pooled_feature_loss(student: dict[str, Tensor], teacher: dict[str, Tensor]) -> Tensor:
    """`feature_loss` over all types' nodes as one set, centred by one mean -> scalar."""
    s = torch.cat([student[t] for t in teacher])
    t = torch.cat(list(teacher.values()))
    return feature_loss(centred(s), centred(t))


def _bipartite(h: dict[str, Tensor], rel: Relation, edge_index: Tensor) -> tuple[Tensor, Tensor]:
    """One node space for a relation: destination rows, then source rows (when the types differ)
    -> (states [n_dst (+ n_src), H], edge_index shifted into it [2, E])."""
    src, _, dst = rel
    if src == dst:
        return h[dst], edge_index
    shift = torch.stack([edge_index[0] + h[dst].size(0), edge_index[1]])
    return torch.cat([h[dst], h[src]]), shift


def per_relation_lsp(student: dict[str, Tensor], teacher: dict[str, Tensor], edges: dict[Relation, Tensor]) -> Tensor:
    """Mean over relations of `lsp_loss` on that relation's edges alone -> scalar."""
    terms = []
    for rel, edge_index in edges.items():
        s, index = _bipartite(student, rel, edge_index)
        t, _ = _bipartite(teacher, rel, edge_index)
        terms.append(lsp_loss(s, t, index))
    return torch.stack(terms).mean()


def pooled_lsp(student: dict[str, Tensor], teacher: dict[str, Tensor], edges: dict[Relation, Tensor]) -> Tensor:
    """`lsp_loss` on one node space (all types stacked) with every relation's edges merged -> scalar."""
    types = list(teacher)
    offset = dict(zip(types, torch.tensor([0] + [teacher[t].size(0) for t in types]).cumsum(0).tolist(),
                      strict=False))
    merged = torch.cat([torch.stack([e[0] + offset[r[0]], e[1] + offset[r[2]]]) for r, e in edges.items()], 1)
    return lsp_loss(torch.cat([student[t] for t in types]), torch.cat([teacher[t] for t in types]), merged)


class TypedKD(nn.Module):
    """The typed student's loss: response KD (or plain CE) on the target type, plus feature and
    structure KD per type / relation or pooled. Holds the feature projections student -> teacher
    width (one per type, or one shared; trained with the student, not exported)."""

    def __init__(self, cfg: TypedKDConfig, node_types: tuple[str, ...], student_width: int,
                 teacher_width: int) -> None:
        super().__init__()
        self.cfg = cfg
        names = node_types if cfg.kd_types == "per-type" else ("pooled",)
        self.proj = nn.ModuleDict({t: nn.Linear(student_width, teacher_width) for t in names}
                                  if "feature" in cfg.kinds else {})
        self.last_terms: dict[str, float] = {}

    def project(self, h: dict[str, Tensor]) -> dict[str, Tensor]:
        """Student states {type: [N, H_s]} -> teacher width {type: [N, H_t]}."""
        return {t: self.proj[t if self.cfg.kd_types == "per-type" else "pooled"](v) for t, v in h.items()}

    def forward(self, out: TypedOutputs, y: Tensor, train_mask: Tensor, teacher: TypedOutputs | None,
                edges: dict[Relation, Tensor], teacher_layer: int = 1) -> Tensor:
        """Total loss. `teacher`: its detached eval-mode outputs; `edges` {relation: [2, E]}."""
        cfg, terms = self.cfg, {}
        if teacher is not None and "response" in cfg.kinds:
            weight = class_balanced_weights(teacher.logits) if cfg.balanced else None
            terms["response"] = response_kd(out.logits, teacher.logits, y, train_mask, cfg.temperature, cfg.alpha,
                                            weight)
        else:
            terms["ce"] = supervised(out.logits, y, train_mask)
        if teacher is not None and ("feature" in cfg.kinds or "structure" in cfg.kinds):
            s, t = out.typed[0], teacher.typed[teacher_layer - 1]
            t = {k: t[k] for k in s}
            pooled = cfg.kd_types == "pooled"
            if "feature" in cfg.kinds:
                loss = pooled_feature_loss if pooled else per_type_feature_loss
                terms["feature"] = cfg.beta * loss(self.project(s), t)
            if "structure" in cfg.kinds:
                terms["structure"] = cfg.gamma * (pooled_lsp if pooled else per_relation_lsp)(s, t, edges)
        self.last_terms = {k: float(v.detach()) for k, v in terms.items()}
        return torch.stack(list(terms.values())).sum()


def linear_cka(a: Tensor, b: Tensor) -> float:
    """Debiased linear CKA (Kornblith et al. 2019, with Song et al. 2012's unbiased HSIC) between two
    representations of the same N >= 4 nodes, a [N, H_a] and b [N, H_b]: 1 = the same up to rotation
    and scale, about 0 = unrelated. It needs no projection, so pooled and per-type students compare
    on equal terms, and it is debiased because plain CKA drifts towards 1 when N is near the width
    (ACM: 60 subjects, 64 dims). Computed in feature space, O(N H^2): no N x N Gram matrix."""
    a, b = centred(a.double()), centred(b.double())

    def hsic(x: Tensor, y: Tensor) -> Tensor:
        n, rows_x, rows_y = x.size(0), x.pow(2).sum(1), y.pow(2).sum(1)
        return ((x.T @ y).pow(2).sum() - n / (n - 2) * rows_x.dot(rows_y)
                + rows_x.sum() * rows_y.sum() / ((n - 1) * (n - 2)))

    return float(hsic(a, b) / (hsic(a, a) * hsic(b, b)).sqrt().clamp_min(1e-30))


def fit_typed(student: nn.Module, data: Data, kd: TypedKD, teacher: TypedOutputs | None,
              edges: dict[Relation, Tensor], tcfg: TrainConfig, desc: str, progress: bool = True,
              teacher_layer: int = 1) -> FitResult:
    """Train a typed student with `kd` through the one loop (`fit`, early stopping on validation);
    `data` is the homogeneous view (target features, labels, masks); the typed graph is the
    student's own."""
    y, mask = data.y, data.train_mask
    return fit(student, data, Edges(data.edge_index),
               lambda out: kd(out, y, mask, teacher, edges, teacher_layer), tcfg, desc, progress, extra=kd)
