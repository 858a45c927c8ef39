"""The deep teachers, trained offline purely for accuracy, and the registry that names them."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv, JumpingKnowledge

from distill.errors import ConfigError
from distill.models import GCN, SAGE, FeatureNorm, NodeOutputs, input_dropout, norm_layer


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
        self.dropout, self.residual = dropout, residual
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
        h = self.lin_in(input_dropout(self.feature_norm(x), self.dropout, self.training))
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


TEACHERS: dict[str, Callable[..., nn.Module]] = {
    "gat": GAT,
    "gat-sep": lambda **kw: GAT(ego=True, **kw),
    "gcn": lambda **kw: GCN(normalize=True, **kw),
    "sage": lambda **kw: SAGE(aggr="mean", **kw),
}

def build_teacher(name: str, **kwargs: object) -> nn.Module:
    """Build a teacher by name; unknown names raise ConfigError listing the choices."""
    if name not in TEACHERS:
        raise ConfigError(f"unknown teacher {name!r}; choose one of {sorted(TEACHERS)}")
    if name not in ("gat", "gat-sep"):
        kwargs = {k: v for k, v in kwargs.items() if k in ("in_channels", "hidden_channels", "num_layers",
                                                           "out_channels", "dropout")}
    return TEACHERS[name](**kwargs)


