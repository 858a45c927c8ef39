"""The deep teachers, trained offline purely for accuracy, and the registry that names them."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv, GCN2Conv, GraphConv, JumpingKnowledge
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import degree, to_torch_csr_tensor

from distill.errors import ConfigError
from distill.hetero_models import HeteroSAGE
from distill.memo import LastResult
from distill.models import GCN, SAGE, FeatureNorm, NodeOutputs, ResSAGE, input_dropout, norm_layer


class GAT(nn.Module):
    """Deep GAT teacher: input projection, `num_layers` GATConv blocks with residual connections,
    normalisation and attention dropout, optional jumping knowledge, linear classifier; with
    `ego=True` each block attends over neighbours only and adds a separate transform of the node."""

    def __init__(self, in_channels: int, hidden_channels: int, num_layers: int, out_channels: int,
                 dropout: float = 0.5, heads: int = 4, attn_dropout: float = 0.3,
                 residual: bool = True, norm: str = "layer", jk: str = "none", ego: bool = False) -> None:
        super().__init__()
        if hidden_channels % heads:
            raise ConfigError(f"hidden_channels={hidden_channels} must be divisible by heads={heads}")
        self.dropout, self.input_drop, self.residual = dropout, dropout, residual
        self.lin_in = nn.Linear(in_channels, hidden_channels)
        # ego=True ("gat-sep", Platonov et al. 2023): attention over the neighbours only, the node's own
        # state through a separate transform, so neighbours cannot outvote it (fraud graphs, heterophily).
        self.convs = nn.ModuleList(
            GATConv(hidden_channels, hidden_channels // heads, heads=heads, dropout=attn_dropout,
                    add_self_loops=not ego)
            for _ in range(num_layers)
        )
        self.egos = nn.ModuleList(nn.Linear(hidden_channels, hidden_channels) for _ in range(num_layers)) if ego \
            else None
        self.norms = nn.ModuleList(norm_layer(norm, hidden_channels) for _ in range(num_layers))
        self.jk = JumpingKnowledge(jk, hidden_channels, num_layers) if jk != "none" else None
        jk_width = hidden_channels * num_layers if jk == "cat" else hidden_channels
        self.lin_out = nn.Linear(jk_width, out_channels)
        self.feature_norm = FeatureNorm()

    def run(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> NodeOutputs:
        h = self.lin_in(input_dropout(self.feature_norm(x), self.input_drop, self.training))
        hidden, attention = [], []
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            z, (att_ei, alpha) = conv(h, edge_index, return_attention_weights=True)
            if self.egos is not None:
                z = z + self.egos[i](h)
            z = F.dropout(F.elu(norm(z)), self.dropout, self.training)
            h = h + z if self.residual else z
            hidden.append(h)
            attention.append((att_ei, alpha))
        out = self.jk(hidden) if self.jk is not None else h
        return NodeOutputs(self.lin_out(out), hidden, attention)

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        return self.run(x, edge_index, edge_weight).logits


def csr(index: Tensor, value: Tensor, n: int) -> Tensor:
    """The [n, n] CSR matrix with `value` [E] at (index[0], index[1]) ([2, E]); torch's notes that
    its CSR support is in beta are silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse (CSR tensor support|invariant checks)")
        return to_torch_csr_tensor(index, value, (n, n))


class GCNII(nn.Module):
    """GCNII teacher (Chen et al. 2020): dropout, linear in, ReLU, `num_layers` GCN2Conv blocks
    (initial residual `alpha` to the first hidden state, identity mapping with beta_l =
    log(theta / l + 1)), dropout, linear out. Deep without over-smoothing, and its propagation takes
    an edge weight, so gradient edge importance works on it. Unweighted, every layer propagates by
    one sparse product with the normalised adjacency, built once per graph."""

    def __init__(self, in_channels: int, hidden_channels: int, num_layers: int, out_channels: int,
                 dropout: float = 0.5, alpha: float = 0.1, theta: float = 0.5,
                 conv_weight_decay: float = 0.01) -> None:
        super().__init__()
        self.dropout, self.input_drop, self.conv_weight_decay = dropout, dropout, conv_weight_decay
        self.lin_in = nn.Linear(in_channels, hidden_channels)
        # normalize=False: run() applies PyG's gcn_norm (self-loops, symmetric) to the raw graph once per
        # pass; every conv would otherwise recompute the identical normalisation, num_layers times.
        self.convs = nn.ModuleList(
            GCN2Conv(hidden_channels, alpha, theta, layer=i + 1, normalize=False) for i in range(num_layers)
        )
        self.lin_out = nn.Linear(hidden_channels, out_channels)
        self.feature_norm = FeatureNorm()
        self._adjacency_of: LastResult[Tensor] = LastResult()

    def _adjacency(self, edge_index: Tensor, n: int, dtype: torch.dtype) -> Tensor:
        """gcn_norm's D^-1/2 (A + I) D^-1/2 of `edge_index` as a CSR [n, n] whose rows are targets
        (what PyG's convs take as adj_t); training passes the same edges every epoch, so the last one
        is kept while they are the same, unmodified tensor."""
        kept = self._adjacency_of.get(edge_index, (n, dtype))
        if kept is not None:
            return kept
        ei, ew = gcn_norm(edge_index, None, n, add_self_loops=True, dtype=dtype)
        return self._adjacency_of.put(edge_index, (n, dtype), csr(ei.flip(0), ew, n))

    def run(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> NodeOutputs:
        """x [N, F], edge_index [2, E], edge_weight [E] or None -> logits [N, C], hidden: one [N, H]
        per block (the conv output before ReLU, as the students expose theirs), no attention."""
        h = input_dropout(self.feature_norm(x), self.input_drop, self.training)
        h0 = h = F.relu(self.lin_in(h))
        graph: Tensor
        if edge_weight is None:  # gather-scatter over a large graph is several times slower on a CPU
            graph, ew = self._adjacency(edge_index, x.size(0), h.dtype), None
        else:  # weights to differentiate (structure KD's gradient importance): message passing
            graph, ew = gcn_norm(edge_index, edge_weight, x.size(0), add_self_loops=True, dtype=h.dtype)
        hidden = []
        for conv in self.convs:
            z = conv(F.dropout(h, self.dropout, self.training), h0, graph, ew)
            hidden.append(z)
            h = F.relu(z)
        return NodeOutputs(self.lin_out(F.dropout(h, self.dropout, self.training)), hidden, [])

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        return self.run(x, edge_index, edge_weight).logits

    def param_groups(self, weight_decay: float) -> list[dict[str, object]]:
        """Optimiser groups for `distill.train.fit`: the paper's heavier decay (0.01) on the conv
        weights, the run's `weight_decay` on the dense input and output layers."""
        dense = [p for name, p in self.named_parameters() if not name.startswith("convs.")]
        return [{"params": list(self.convs.parameters()), "weight_decay": self.conv_weight_decay},
                {"params": dense, "weight_decay": weight_decay}]


class ResSAGETeacher(ResSAGE):
    """The sage-res student's block at teacher depth over the raw graph: ego and neighbour-mean
    transforms kept apart, the node's log-degree, LayerNorm and a residual per layer (the recipe
    that makes classic GNNs strong at depth on heterophilous graphs, Luo et al., NeurIPS 2024). It
    reads raw features and computes the degree of the edges it is given itself; mean aggregation
    still takes edge weights, so structure KD's gradient importance applies."""

    def __init__(self, in_channels: int, hidden_channels: int, num_layers: int, out_channels: int,
                 dropout: float = 0.5) -> None:
        super().__init__(in_channels, hidden_channels, num_layers, out_channels, dropout, mean_input=False)
        self._operators_of: LastResult[tuple[Tensor, Tensor]] = LastResult()

    def _layer(self, width: int) -> nn.Module:
        return GraphConv(width, width, aggr="mean")

    def _operators(self, edge_index: Tensor, n: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """log1p(in-degree) [n, 1] and the mean operator (CSR [n, n], rows 1 / in-degree) of
        `edge_index`. Training feeds the same edges every forward, and on a graph of a million edges
        building the operator is a sizeable share of an epoch: the last pair is kept while the edges
        are the same, unmodified tensor (held, so its memory cannot be reused by another)."""
        kept = self._operators_of.get(edge_index, (n, dtype))
        if kept is not None:
            return kept
        in_degree = degree(edge_index[1], n, dtype=dtype)
        mean = csr(edge_index.flip(0), (1.0 / in_degree.clamp(min=1))[edge_index[1]], n)
        return self._operators_of.put(edge_index, (n, dtype), (in_degree.log1p().unsqueeze(-1), mean))

    def run(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> NodeOutputs:
        """x [N, F] raw features, edge_index [2, E] (source -> target), edge_weight [E] or None."""
        log_degree, mean = self._operators(edge_index, x.size(0), x.dtype)
        x = torch.cat([x, log_degree], dim=-1)
        if edge_weight is not None:  # weights to differentiate (structure KD's importance): message passing
            return super().run(x, edge_index, edge_weight)
        # Unweighted, the mean is one sparse product with 1 / in-degree: the same numbers as PyG's
        # gather-scatter, several times faster on a CPU (bench/epoch_time.py, README "A sage-res teacher").
        return self._blocks(x, lambda conv, h: mean @ h)

    def forward_dense(self, x: Tensor, adj: Tensor) -> Tensor:
        raise NotImplementedError("a teacher is never exported")


class MeanTeacher(nn.Module):
    """Several trained teachers read as one: logits are the log of their mean softmax (the ensemble
    a student is distilled from, Hinton et al. 2015); hidden states and attention are the first
    member's, for the feature and structure terms, which pair one network's layers."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def run(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> NodeOutputs:
        """x [N, F], edge_index [2, E], edge_weight [E] or None -> log mean probabilities [N, C]."""
        outs = [m.run(x, edge_index, edge_weight) for m in self.members]
        mean = torch.stack([F.softmax(o.logits, dim=-1) for o in outs]).mean(0)
        # The first member's outputs with the mean's logits: typed outputs of a heterogeneous one survive.
        return replace(outs[0], logits=mean.clamp_min(1e-30).log())

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        return self.run(x, edge_index, edge_weight).logits


TEACHERS: dict[str, Callable[..., nn.Module]] = {
    "gat": GAT,
    "gat-sep": lambda **kw: GAT(ego=True, **kw),
    "gcnii": GCNII,
    "gcn": lambda **kw: GCN(normalize=True, **kw),
    "sage": lambda **kw: SAGE(aggr="mean", **kw),
    "sage-res": ResSAGETeacher,
    "hetero-sage": HeteroSAGE,
}
# Families that read the typed graph (Dataset.hetero) instead of the homogeneous view's edges.
HETERO_TEACHERS = ("hetero-sage",)

_SHAPE = ("in_channels", "hidden_channels", "num_layers", "out_channels", "dropout")
_GAT = _SHAPE + ("heads", "attn_dropout", "residual", "norm", "jk")
# The constructor arguments each family takes; build_teacher drops the rest, so one call site can
# pass every family's options.
ACCEPTS: dict[str, tuple[str, ...]] = {"gat": _GAT, "gat-sep": _GAT, "gcnii": _SHAPE + ("alpha", "theta"),
                                       "gcn": _SHAPE, "sage": _SHAPE, "sage-res": _SHAPE,
                                       "hetero-sage": _SHAPE + ("graph",)}


def build_teacher(name: str, **kwargs: object) -> nn.Module:
    """Build a teacher by name from the arguments it takes (others are ignored); unknown names raise
    ConfigError listing the choices."""
    if name not in TEACHERS:
        raise ConfigError(f"unknown teacher {name!r}; choose one of {sorted(TEACHERS)}")
    return TEACHERS[name](**{k: v for k, v in kwargs.items() if k in ACCEPTS[name]})
