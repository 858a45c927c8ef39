"""A type-aware teacher for heterogeneous graphs (distill/hetero.py), behind the same interface as
the homogeneous teachers: `run(x, edge_index)` with x the labelled type's features [N, F] in the
homogeneous view's order. The typed graph is held inside the model (non-persistent buffers, so
teacher.pt stays the weights only), and the homogeneous view's edges are not used: the teacher sees
every node and edge type, the student only the meta-path graph it is served on."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import HeteroData
from torch_geometric.nn import HeteroConv, SAGEConv

from distill.errors import ConfigError
from distill.hetero import target_type
from distill.models import FeatureNorm, NodeOutputs, input_dropout


@dataclass
class TypedOutputs(NodeOutputs):
    """`NodeOutputs` of a type-aware model (logits [N, C] and `hidden` [N, H] per layer of the
    target type), plus `typed`: per layer, every node type's hidden state {type: [N_type, H]}, what
    per-type feature and per-relation structure distillation read (distill/hetero_kd.py)."""

    typed: list[dict[str, Tensor]] = field(default_factory=list)


class HeteroSAGE(nn.Module):
    """R-GCN-style teacher (Schlichtkrull et al. 2018, with SAGE aggregation per relation): per-type
    input projections (a learned embedding for a type without features), `num_layers` HeteroConv
    blocks (one SAGEConv per edge type, summed per destination type), per-type LayerNorm and
    residual, a classifier on the target type."""

    def __init__(self, in_channels: int, hidden_channels: int, num_layers: int, out_channels: int,
                 dropout: float = 0.5, graph: HeteroData | None = None, target: str | None = None) -> None:
        super().__init__()
        if graph is None:
            raise ConfigError("a heterogeneous teacher needs a heterogeneous dataset (synthetic-hetero, acm:PATH)")
        # The labelled type by default: the one holding `y` (ACM's papers, synthetic-hetero's transactions).
        target = target or target_type(graph)
        self.dropout, self.input_drop, self.target = dropout, dropout, target
        self.node_types, self.edge_types = graph.metadata()
        self._edge_keys = [f"edges_{i}" for i in range(len(self.edge_types))]
        for key, edge_type in zip(self._edge_keys, self.edge_types, strict=True):
            self.register_buffer(key, graph[edge_type].edge_index, persistent=False)
        self.lin_in = nn.ModuleDict()
        self.embed = nn.ModuleDict()
        for t in self.node_types:
            if t == target:
                self.lin_in[t] = nn.Linear(in_channels, hidden_channels)
            elif "x" in graph[t]:
                self.register_buffer(f"x_{t}", graph[t].x, persistent=False)
                self.lin_in[t] = nn.Linear(graph[t].x.size(1), hidden_channels)
            else:
                self.embed[t] = nn.Embedding(graph[t].num_nodes, hidden_channels)
        self.convs = nn.ModuleList(
            HeteroConv({e: SAGEConv((hidden_channels, hidden_channels), hidden_channels) for e in self.edge_types},
                       aggr="sum")
            for _ in range(num_layers)
        )
        self.norms = nn.ModuleList(
            nn.ModuleDict({t: nn.LayerNorm(hidden_channels) for t in self.node_types}) for _ in range(num_layers)
        )
        self.lin_out = nn.Linear(hidden_channels, out_channels)
        self.feature_norm = FeatureNorm()

    def _inputs(self, x: Tensor) -> dict[str, Tensor]:
        h = {}
        for t in self.node_types:
            if t in self.embed:
                h[t] = self.embed[t].weight
                continue
            raw = self.feature_norm(x) if t == self.target else getattr(self, f"x_{t}")
            h[t] = self.lin_in[t](input_dropout(raw, self.input_drop, self.training))
        return h

    def run(self, x: Tensor, edge_index: Tensor | None = None, edge_weight: Tensor | None = None) -> TypedOutputs:
        """x [N, F] (the target type's features) -> logits [N, C], the target type's hidden state
        [N, H] after each block (`hidden`) and every type's (`typed`: {type: [N_type, H]} per block);
        `edge_index` (the homogeneous view) is not used, no attention."""
        edges = {e: getattr(self, k) for e, k in zip(self.edge_types, self._edge_keys, strict=True)}
        h = self._inputs(x)
        typed = []
        for conv, norms in zip(self.convs, self.norms, strict=True):
            z = conv(h, edges)
            h = {t: h[t] + F.dropout(F.elu(norms[t](z[t])), self.dropout, self.training) if t in z else h[t]
                 for t in self.node_types}
            typed.append(h)
        return TypedOutputs(self.lin_out(h[self.target]), [layer[self.target] for layer in typed], [], typed)

    def forward(self, x: Tensor, edge_index: Tensor | None = None, edge_weight: Tensor | None = None) -> Tensor:
        return self.run(x, edge_index, edge_weight).logits
