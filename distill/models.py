"""Students (and the shared pieces every model uses) as plain `nn.Module`s built from PyG convs, and
the student registry. The deep teachers live in `distill.teacher_models`.

Every model's `run` returns `NodeOutputs`: logits plus per-layer node embeddings (and, for GAT,
per-layer attention), the one API that feature- and structure-based distillation read.
Students also have `forward_dense(x, adj)`: the same maths on a dense propagation matrix, which is
what gets exported to ONNX (MatMul runs far faster in onnxruntime than scatter ops).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GCNConv, GraphConv

from distill.errors import ConfigError
from distill.memo import LastResult


@dataclass
class NodeOutputs:
    """logits [N, C]; hidden: one [N, H_l] per layer; attention: (edge_index [2, E], alpha [E, heads]) per GAT layer."""

    logits: Tensor
    hidden: list[Tensor] = field(default_factory=list)
    attention: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    # Training only, from a model that trains on several random views of one pass (GRAND): the logits
    # [N, C] of the views after the first (`logits`), and its own label-free term added to the loss.
    views: list[Tensor] = field(default_factory=list, kw_only=True)
    regulariser: Tensor | None = field(default=None, kw_only=True)


class FeatureNorm(nn.Module):
    """Input normalisation stored inside the model, so the ONNX file takes raw features.

    `row`: divide each row by its L1 norm (bag-of-words); `standard`: z-score with train statistics.
    """

    def __init__(self, mode: str = "none", mean: Tensor | None = None, std: Tensor | None = None) -> None:
        super().__init__()
        self.mode = mode
        self.register_buffer("mean", mean if mean is not None else torch.zeros(0))
        self.register_buffer("std", std if std is not None else torch.ones(0))
        self._last: LastResult[Tensor] = LastResult()

    def forward(self, x: Tensor) -> Tensor:
        """x [..., F] -> normalised [..., F]. Full-batch training feeds the same feature matrix every
        epoch; normalising CiteSeer's 3327 x 3703 floats took 40 % of a student's training, so the
        last result is reused while the input is the same, unmodified tensor, or the same view of one
        (a model that slices its input makes a new view every call; never while exporting)."""
        # A view shares its base's storage and version counter: the base is what is held, the view's
        # place in it part of the key.
        base = x if x._base is None else x._base
        key = (x.storage_offset(), tuple(x.shape), x.stride(), x.dtype, self.mean._version, self.std._version)
        last = self._last.get(base, key)
        if last is not None:
            return last
        out = self._normalise(x)
        if not (x.requires_grad or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()):
            self._last.put(base, key, out)
        return out

    def _normalise(self, x: Tensor) -> Tensor:
        if self.mode == "row":
            return x / x.abs().sum(dim=-1, keepdim=True).clamp(min=1e-12)
        if self.mode == "standard":
            return (x - self.mean) / self.std
        return x


def mostly_zeros(x: Tensor) -> bool:
    """Whether at most a quarter of x is non-zero: where working on the non-zeros alone pays."""
    return 4 * int(torch.count_nonzero(x)) <= x.numel()


def input_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """`F.dropout` for a model's input features [N, F]. On sparse inputs (bag-of-words: Cora 1.3 %
    non-zero) only the non-zeros draw a random number: the same distribution (a dropped zero is
    still zero), at 1/density less RNG work, which was 60 % of a Cora student's training time."""
    if not training or p == 0.0 or x.requires_grad:
        return F.dropout(x, p, training)
    # Count before listing: on a dense input (a neighbour-mean half) listing every non-zero cost
    # more than the dropout itself.
    if not mostly_zeros(x):
        return F.dropout(x, p, training)
    rows, cols = x.nonzero(as_tuple=True)
    keep = torch.rand(rows.numel(), device=x.device) >= p
    rows, cols = rows[keep], cols[keep]
    out = torch.zeros_like(x)
    out[rows, cols] = x[rows, cols] / (1.0 - p)
    return out


class LayerStack(nn.Module):
    """Base class of the GCN / SAGE / MLP students (and the GCN / SAGE teachers): a stack of layers
    with a sparse `run` for training and a dense `forward_dense(x, adj)` for the ONNX export."""

    convs: nn.ModuleList
    # True: input rows carry a last column log1p(raw in-degree) after the features (bundle.policy.node_inputs).
    takes_degree = False
    # True: the F columns after the features are the mean raw features of the node's in-neighbours.
    takes_mean = False
    # The policy's mean_restart for this family's mean columns (1: the raw neighbour mean).
    mean_restart = 1.0

    def __init__(self, dropout: float) -> None:
        super().__init__()
        # The input features' own rate: the pipeline zeroes it for dense, hand-crafted features
        # where the run's probe finds that dropping columns drops evidence (distill.input_dropout).
        self.dropout = self.input_drop = dropout
        self.feature_norm = FeatureNorm()
        # Per-class logit offsets [C] set after training (distill.tail); empty = none. A buffer, so
        # the ONNX export and hence the service apply exactly what the report evaluated.
        self.register_buffer("class_offset", torch.zeros(0))

    def with_offset(self, logits: Tensor) -> Tensor:
        """logits [n, C] plus the tail-class offsets, when set."""
        return logits + self.class_offset if self.class_offset.numel() else logits

    def layer(self, i: int, h: Tensor, edge_index: Tensor, edge_weight: Tensor | None) -> Tensor:
        raise NotImplementedError

    def dense_layer(self, i: int, h: Tensor, adj: Tensor) -> Tensor:
        raise NotImplementedError

    def _stack(self, x: Tensor, step: Callable[[int, Tensor], Tensor]) -> NodeOutputs:
        h = self.feature_norm(x)
        hidden = []
        for i in range(len(self.convs)):
            h = step(i, input_dropout(h, self.input_drop, self.training) if i == 0
                     else F.dropout(h, self.dropout, self.training))
            # Pre-activation embeddings are what KD matches: a post-ReLU target lets one large LSP step
            # kill every unit, after which no loss term has a gradient (seen on Cora, seed 2).
            hidden.append(h)
            if i < len(self.convs) - 1:
                h = F.relu(h)
        return NodeOutputs(self.with_offset(h), hidden)

    def run(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> NodeOutputs:
        return self._stack(x, lambda i, h: self.layer(i, h, edge_index, edge_weight))

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        return self.run(x, edge_index, edge_weight).logits

    def forward_dense(self, x: Tensor, adj: Tensor) -> Tensor:
        """x [n, F], adj [n, n] (adj[i, j] = P[i, j]) -> logits [n, C]; equals `forward` on the same edges."""
        return self._stack(x, lambda i, h: self.dense_layer(i, h, adj)).logits


def _widths(in_channels: int, hidden_channels: int, num_layers: int, out_channels: int) -> list[int]:
    if num_layers < 1:
        raise ConfigError(f"num_layers={num_layers} must be >= 1")
    return [in_channels] + [hidden_channels] * (num_layers - 1) + [out_channels]


class GCN(LayerStack):
    """GCN. `normalize=False` takes the policy's precomputed propagation weights (students);
    `normalize=True` lets GCNConv normalise the raw graph itself (teacher)."""

    def __init__(self, in_channels: int, hidden_channels: int, num_layers: int, out_channels: int,
                 dropout: float = 0.5, normalize: bool = False) -> None:
        super().__init__(dropout)
        w = _widths(in_channels, hidden_channels, num_layers, out_channels)
        self.convs = nn.ModuleList(GCNConv(a, b, normalize=normalize) for a, b in zip(w, w[1:], strict=False))

    def layer(self, i: int, h: Tensor, edge_index: Tensor, edge_weight: Tensor | None) -> Tensor:
        return self.convs[i](h, edge_index, edge_weight)

    def dense_layer(self, i: int, h: Tensor, adj: Tensor) -> Tensor:
        conv = self.convs[i]
        return adj @ conv.lin(h) + conv.bias


class SAGE(LayerStack):
    """GraphSAGE-mean built from PyG `GraphConv` (lin_rel on aggregated neighbours + lin_root on self).

    Student: `aggr="add"` over the policy's 1/in-degree weights, which is exactly mean aggregation
    and exports as MatMul. Teacher: `aggr="mean"`, which still takes edge weights (all ones by
    default), so gradient-based edge importance works for it too.
    """

    def __init__(self, in_channels: int, hidden_channels: int, num_layers: int, out_channels: int,
                 dropout: float = 0.5, aggr: str = "add") -> None:
        super().__init__(dropout)
        w = _widths(in_channels, hidden_channels, num_layers, out_channels)
        self.convs = nn.ModuleList(GraphConv(a, b, aggr=aggr) for a, b in zip(w, w[1:], strict=False))

    def layer(self, i: int, h: Tensor, edge_index: Tensor, edge_weight: Tensor | None) -> Tensor:
        return self.convs[i](h, edge_index, edge_weight)

    def dense_layer(self, i: int, h: Tensor, adj: Tensor) -> Tensor:
        conv = self.convs[i]
        return conv.lin_rel(adj @ h) + conv.lin_root(h)


class ResSAGE(LayerStack):
    """2-hop student that keeps what plain GCN/SAGE students throw away (Platonov et al. 2023's
    recipe for -sep models): an input projection, per layer separate ego (`lin_root`) and
    neighbour-mean (`lin_rel`) transforms of PyG `GraphConv`, the node's degree, LayerNorm, and a
    residual connection; a linear classifier on top.

    Input rows are [features | neighbour mean | log1p(in-degree of the raw graph)] (`takes_mean`,
    `takes_degree`; the policy's `mean_input`, `degree_input`): the mean of ALL of a node's raw
    in-neighbours' features and its degree before pruning to `fanout` neighbours, so a hub keeps
    what its thousands of neighbours say and still looks like a hub; every node of a served block
    carries its exact values. The mean is normalised like the features (the same FeatureNorm
    statistics), and lin_in reads both halves.
    """

    takes_degree = True
    takes_mean = True

    def __init__(self, in_channels: int, hidden_channels: int, num_layers: int, out_channels: int,
                 dropout: float = 0.5, mean_input: bool = True) -> None:
        super().__init__(dropout)
        if num_layers < 1:
            raise ConfigError(f"num_layers={num_layers} must be >= 1")
        self.in_channels, self.mean_input = in_channels, mean_input
        self.takes_mean = mean_input  # this instance's input rows (the class says the family can)
        self.lin_in = nn.Linear((2 if mean_input else 1) * in_channels, hidden_channels)
        self.convs = nn.ModuleList(self._layer(hidden_channels) for _ in range(num_layers))
        self.degree = nn.ModuleList(nn.Linear(1, hidden_channels, bias=False) for _ in range(num_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_channels) for _ in range(num_layers))
        self.lin_out = nn.Linear(hidden_channels, out_channels)

    def _layer(self, width: int) -> nn.Module:
        return GraphConv(width, width, aggr="add")

    def _transform(self, conv: nn.Module, z: Tensor, aggregate: Callable[[GraphConv, Tensor], Tensor]) -> Tensor:
        """A block's ego and neighbour transforms of its input z [n, H] -> [n, H]."""
        return conv.lin_rel(aggregate(conv, z)) + conv.lin_root(z)

    def _blocks(self, x: Tensor, aggregate: Callable[[GraphConv, Tensor], Tensor]) -> NodeOutputs:
        f, halves, log_degree = self.in_channels, 2 if self.mean_input else 1, x[:, -1:]
        # Features (and their neighbour mean) as [n, halves, F]: one FeatureNorm call normalises each alike.
        both = self.feature_norm(x[:, : halves * f].reshape(-1, halves, f)).reshape(-1, halves * f)
        h = self.lin_in(input_dropout(both, self.input_drop, self.training))
        hidden = []
        for conv, degree, norm in zip(self.convs, self.degree, self.norms, strict=True):
            z = F.dropout(h, self.dropout, self.training)
            z = self._transform(conv, z, aggregate) + degree(log_degree)
            h = h + F.relu(norm(z))
            hidden.append(h)
        logits = self.with_offset(self.lin_out(F.dropout(h, self.dropout, self.training)))
        # What KD pairs with teacher layers: the blocks' states, the last one replaced by the logits
        # (the same widths as the GCN/SAGE students: hidden per layer, classes at the end).
        return NodeOutputs(logits, hidden[:-1] + [logits])

    def run(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> NodeOutputs:
        """x [N, 2F + 1] (features, neighbour mean, log-degree), edge_index [2, E] (source -> target),
        edge_weight [E]."""
        return self._blocks(x, lambda conv, h: conv.propagate(edge_index, x=h, edge_weight=edge_weight))

    def forward_dense(self, x: Tensor, adj: Tensor) -> Tensor:
        """x [n, 2F + 1], adj [n, n] (row i = P[i, :]) -> logits [n, C]; equals `forward` on the same edges."""
        return self._blocks(x, lambda conv, h: adj @ h).logits


class PPRMLP(ResSAGE):
    """Graph-free at serving time, exact over the whole graph: a residual MLP over [features |
    propagated neighbour mean | log1p(in-degree)] (the policy's mean_input with `mean_restart`):
    the mean is the personalised-PageRank fixed point of the neighbours' rows (APPNP's propagation,
    Gasteiger et al. 2019, with SIGN's precomputed-aggregate serving, Frasca et al. 2020), so one
    stored row carries what every hop says, weighted by restart (1 - r)^k at hop k. Serving an
    existing node is one row lookup and a small MLP whatever its degree; a new node's mean is the
    same equation over its given neighbours' stored rows. ResSAGE's blocks with no neighbour term,
    h = h + relu(LayerNorm(lin(h) + degree)): the edges `run` and `forward_dense` take are not read."""

    # 0.1: APPNP's teleport; hop k weighs 0.1 * 0.9^k, so a few hops dominate and far ones still count.
    mean_restart = 0.1

    def __init__(self, in_channels: int, hidden_channels: int, num_layers: int, out_channels: int,
                 dropout: float = 0.5, mean_input: bool = True) -> None:
        if not mean_input:
            raise ConfigError("the ppr-mlp student reads the propagated neighbour mean (mean_input)")
        super().__init__(in_channels, hidden_channels, num_layers, out_channels, dropout)

    def _layer(self, width: int) -> nn.Module:
        return nn.Linear(width, width)

    def _transform(self, conv: nn.Module, z: Tensor, aggregate: Callable[[GraphConv, Tensor], Tensor]) -> Tensor:
        return conv(z)


class MLP(LayerStack):
    """Graph-free student (GLNN): sees only the node's own features."""

    def __init__(self, in_channels: int, hidden_channels: int, num_layers: int, out_channels: int,
                 dropout: float = 0.5) -> None:
        super().__init__(dropout)
        w = _widths(in_channels, hidden_channels, num_layers, out_channels)
        self.convs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(w, w[1:], strict=False))

    def layer(self, i: int, h: Tensor, edge_index: Tensor, edge_weight: Tensor | None) -> Tensor:
        return self.convs[i](h)

    def dense_layer(self, i: int, h: Tensor, adj: Tensor) -> Tensor:
        return self.convs[i](h)


def with_input_dropout(model: nn.Module, on: bool) -> nn.Module:
    """`model` with its input features dropped at its own dropout rate, or not at all
    (--input-dropout, distill.input_dropout)."""
    model.input_drop = model.dropout if on else 0.0
    return model


def norm_layer(kind: str, width: int) -> nn.Module:
    norms: dict[str, Callable[[], nn.Module]] = {
        "layer": lambda: nn.LayerNorm(width),
        "batch": lambda: nn.BatchNorm1d(width),
        "none": nn.Identity,
    }
    if kind not in norms:
        raise ConfigError(f"unknown norm {kind!r}; choose one of {sorted(norms)}")
    return norms[kind]()


# name -> (builder, propagation): the propagation names the policy's weights the student reads.
STUDENTS: dict[str, tuple[Callable[..., LayerStack], str]] = {
    "gcn": (GCN, "gcn"),
    "sage": (SAGE, "mean"),
    "mlp": (MLP, "none"),
    "sage-res": (ResSAGE, "mean"),
    "ppr-mlp": (PPRMLP, "none"),
}


def _registered(student: str) -> tuple[Callable[..., LayerStack], str]:
    """The registry entry of `student`; unknown names raise ConfigError listing the choices."""
    if student not in STUDENTS:
        raise ConfigError(f"unknown student {student!r}; choose one of {sorted(STUDENTS)}")
    return STUDENTS[student]


def build_student(name: str, **kwargs: object) -> tuple[LayerStack, str]:
    """Build a student by name -> (model, propagation kind of the neighbourhood policy)."""
    builder, prop = _registered(name)
    if not builder.takes_mean:  # type: ignore[attr-defined]
        kwargs.pop("mean_input", None)
    return builder(**kwargs), prop


def takes_degree(student: str) -> bool:
    """Whether a student's input rows end with the log-degree column (the policy's degree_input)."""
    return bool(_registered(student)[0].takes_degree)  # type: ignore[attr-defined]


# The neighbour mean doubles the first layer's multiply-adds at every node of a served block
# (n x 2F x H): small for narrow inputs, most of a request for bag-of-words ones (ACM, F = 1,902:
# single-node p99 0.27 -> 0.51 ms in-process, over the 0.5 ms bar). Past this width it is left out.
MEAN_INPUT_MAX_FEATURES = 512


def takes_mean(student: str, num_features: int) -> bool:
    """Whether a student's input rows carry the neighbour-mean columns (the policy's mean_input):
    families that read it, on inputs of at most MEAN_INPUT_MAX_FEATURES features for a graph student
    (a graph-free one reads a single row, whatever the width)."""
    builder, prop = _registered(student)
    reads = bool(builder.takes_mean)  # type: ignore[attr-defined]
    return reads and (prop == "none" or num_features <= MEAN_INPUT_MAX_FEATURES)


def mean_restart(student: str) -> float:
    """The policy's mean_restart for a student: its family's (1, the raw mean, unless it says otherwise)."""
    return float(_registered(student)[0].mean_restart)  # type: ignore[attr-defined]


def propagation_of(student: str) -> str:
    """The propagation weights a student reads (gcn / mean / none); unknown names raise."""
    return _registered(student)[1]
