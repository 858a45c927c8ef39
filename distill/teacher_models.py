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
from torch_geometric.utils import degree, scatter, to_torch_csr_tensor

from distill.errors import ConfigError
from distill.hetero_models import HeteroSAGE
from distill.memo import LastResult
from distill.models import GCN, SAGE, FeatureNorm, NodeOutputs, ResSAGE, input_dropout, mostly_zeros, norm_layer


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


def gcn_adjacency(kept: LastResult[Tensor], edge_index: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """gcn_norm's D^-1/2 (A + I) D^-1/2 of `edge_index` as a CSR [n, n] whose rows are targets
    (what PyG's convs take as adj_t). Training passes the same edges every epoch, so the last one is
    kept in the model's `kept` while they are the same, unmodified tensor."""
    adjacency = kept.get(edge_index, (n, dtype))
    if adjacency is not None:
        return adjacency
    ei, ew = gcn_norm(edge_index, None, n, add_self_loops=True, dtype=dtype)
    return kept.put(edge_index, (n, dtype), csr(ei.flip(0), ew, n))


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
        """`gcn_adjacency`, kept by this model."""
        return gcn_adjacency(self._adjacency_of, edge_index, n, dtype)

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


class GRAND(nn.Module):
    """GRAND teacher (Feng et al., NeurIPS 2020): random propagation, then an MLP. Each training pass
    drops whole nodes' features (DropNode), averages the features over 0..`num_layers` hops of the
    normalised adjacency (mixed-order propagation, no weights in it, so depth cannot over-smooth or
    overfit), and reads them with a 2-layer MLP, `samples` times; `regulariser` pulls the views'
    predictions towards their sharpened mean (consistency), which is what lets it learn from the
    unlabelled nodes. Evaluation propagates the whole features once (inverted DropNode scaling)."""

    def __init__(self, in_channels: int, hidden_channels: int, num_layers: int, out_channels: int,
                 dropout: float = 0.5, samples: int = 4, drop_node: float = 0.5, temperature: float = 0.5,
                 consistency: float = 1.0) -> None:
        super().__init__()
        if samples < 1 or not 0.0 <= drop_node < 1.0:
            raise ConfigError(f"grand needs samples >= 1 (got {samples}) and drop_node in [0, 1) (got {drop_node})")
        self.dropout, self.input_drop, self.order = dropout, dropout, num_layers
        self.samples, self.drop_node = samples, drop_node
        self.temperature, self.consistency = temperature, consistency
        self.lin1 = nn.Linear(in_channels, hidden_channels)
        self.lin2 = nn.Linear(hidden_channels, out_channels)
        self.feature_norm = FeatureNorm()
        self._adjacency_of: LastResult[Tensor] = LastResult()
        self._entries_of: LastResult[list[tuple[Tensor, Tensor]]] = LastResult()

    def _propagate(self, x: Tensor, step: Callable[[Tensor], Tensor]) -> Tensor:
        """The mean of x [N, D] and its `order` propagations by `step` -> [N, D]."""
        total = h = x
        for _ in range(self.order):
            h = step(h)
            total = total + h
        return total / (self.order + 1)

    def _view(self, x: Tensor, step: Callable[[Tensor], Tensor], keep: Tensor | None) -> tuple[Tensor, Tensor]:
        """Normalised features [N, F] (rows not in `keep` [N] dropped, the rest rescaled) -> (logits
        [N, C], hidden [N, H]). Input dropout acts before propagation, so the first layer is linear
        in what is propagated and may run first: the propagation then moves H columns, not F (Cora:
        64, not 1433), with the same result."""
        if x.size(1) <= self.lin1.out_features:
            x = input_dropout(x, self.input_drop, self.training)
            hidden = self.lin1(self._propagate(x if keep is None else x * keep.unsqueeze(-1), step))
        else:
            hidden = self._propagate(self._project(x, keep), step) + self.lin1.bias
        h = F.dropout(F.relu(hidden), self.dropout, self.training)
        return self.lin2(h), hidden

    def _project(self, x: Tensor, keep: Tensor | None) -> Tensor:
        """x [N, F] after input dropout and DropNode (`keep` [N], already rescaled), times the first
        layer's weight -> [N, H]. Bag-of-words features are mostly zeros (CiteSeer: 0.9 % non-zero),
        so there only the non-zeros are dropped and multiplied: a sparse product, several times
        faster than the dense one on a CPU, with the same numbers."""
        entries = self._entries(x)
        if entries is None:
            x = input_dropout(x, self.input_drop, self.training)
            return F.linear(x if keep is None else x * keep.unsqueeze(-1), self.lin1.weight)
        index, value = entries
        if self.training and self.input_drop > 0:
            value = value * (torch.rand_like(value) >= self.input_drop) / (1.0 - self.input_drop)
        if keep is not None:
            value = value * keep[index[0]]
        sparse = torch.sparse_coo_tensor(index, value, x.shape, is_coalesced=True)
        return torch.sparse.mm(sparse, self.lin1.weight.t())

    def _entries(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """(index [2, nnz], value [nnz]) of x's non-zeros when under a quarter of it is non-zero and
        nothing differentiates it, else None; kept while x is the same tensor (every epoch)."""
        if x.requires_grad:
            return None
        kept = self._entries_of.get(x, ())
        if kept is None:
            coo = x.to_sparse_coo().coalesce() if mostly_zeros(x) else None
            kept = self._entries_of.put(x, (), [] if coo is None else [(coo.indices(), coo.values())])
        return kept[0] if kept else None

    def run(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> NodeOutputs:
        """x [N, F], edge_index [2, E], edge_weight [E] or None -> logits [N, C] and, training, the
        further views and the consistency term; hidden: the MLP's hidden layer [N, H]."""
        x = self.feature_norm(x)
        n = x.size(0)
        if edge_weight is None:
            adj = gcn_adjacency(self._adjacency_of, edge_index, n, x.dtype)
            step: Callable[[Tensor], Tensor] = lambda h: adj @ h  # noqa: E731
        else:  # weights to differentiate (structure KD's gradient importance): gather and scatter
            ei, ew = gcn_norm(edge_index, edge_weight, n, add_self_loops=True, dtype=x.dtype)
            step = lambda h: scatter(h[ei[0]] * ew.unsqueeze(-1), ei[1], 0, n, "sum")  # noqa: E731
        if not self.training:
            logits, hidden = self._view(x, step, None)
            return NodeOutputs(logits, [hidden])
        views = [self._view(x, step, (torch.rand(n, device=x.device) >= self.drop_node) / (1.0 - self.drop_node))
                 for _ in range(self.samples)]
        logits = [v[0] for v in views]
        return NodeOutputs(logits[0], [views[0][1]], views=logits[1:], regulariser=self._consistency(logits))

    def _consistency(self, logits: list[Tensor]) -> Tensor:
        """Mean squared distance of each view's prediction to their sharpened mean (held fixed)."""
        probs = [F.softmax(z, dim=-1) for z in logits]
        mean = torch.stack(probs).mean(0)
        sharp = mean.pow(1.0 / self.temperature)
        sharp = (sharp / sharp.sum(-1, keepdim=True)).detach()
        return self.consistency * torch.stack([(p - sharp).pow(2).sum(-1).mean() for p in probs]).mean()

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        return self.run(x, edge_index, edge_weight).logits


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
    "grand": GRAND,
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
                                       "grand": _SHAPE,
                                       "gcn": _SHAPE, "sage": _SHAPE, "sage-res": _SHAPE,
                                       "hetero-sage": _SHAPE + ("graph",)}


def build_teacher(name: str, **kwargs: object) -> nn.Module:
    """Build a teacher by name from the arguments it takes (others are ignored); unknown names raise
    ConfigError listing the choices."""
    if name not in TEACHERS:
        raise ConfigError(f"unknown teacher {name!r}; choose one of {sorted(TEACHERS)}")
    return TEACHERS[name](**{k: v for k, v in kwargs.items() if k in ACCEPTS[name]})
