"""Route (b) of issue 12: a small type-aware student that exports to one ONNX graph.

`TypedSAGE` is a slim R-GCN with mean aggregation per relation (Schlichtkrull et al. 2018; SAGE's
separate root and neighbour transforms): a per-type input transform (a linear map of the type's
features, or a learned table for a type without features, e.g. ACM's subjects), then `num_layers`
layers where every destination type sums `lin_root[type](h_dst)` and, per relation,
`lin_rel[relation](A_relation @ h_src)` with A the row-normalised adjacency [N_dst, N_src]. The
last layer computes the target type only, straight to the classes.

Aggregation is `A @ h` on purpose: training passes sparse A over the whole typed graph (the graph
is held inside the model, non-persistent, so `fit` drives it like any model), the ONNX export
dense A over a typed k-hop block, where it is a plain MatMul. Inputs of the exported graph, in
`TypedSchema.input_names` order: `x_<type>` [n_type, F_type] raw features per featured type,
`id_<type>` [n_type] int64 table rows per featureless type, `adj_<src>__<rel>__<dst>` [n_dst, n_src]
per relation; output `logits` [n_target, C].

It has its own registry (`HETERO_STUDENTS`): the homogeneous registry in distill/models.py
builds `LayerStack`s with one `(x, adj)` pair and a neighbourhood-policy propagation kind, and a
typed student has neither.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import HeteroData

from distill.errors import ConfigError
from distill.export import OPSET
from distill.hetero import target_type
from distill.hetero_models import TypedOutputs
from distill.models import FeatureNorm, input_dropout

Relation = tuple[str, str, str]


def relation_name(rel: Relation) -> str:
    """("paper", "writes", "author") -> "paper__writes__author" (the ONNX input suffix)."""
    return "__".join(rel)


@dataclass(frozen=True)
class TypedSchema:
    """Node and edge types of a heterogeneous graph, and each type's feature width (0: no features,
    a learned table of `num_nodes` rows instead)."""

    target: str
    node_types: tuple[str, ...]
    edge_types: tuple[Relation, ...]
    widths: tuple[int, ...]  # per node type, in node_types order
    num_nodes: tuple[int, ...]  # per node type, in node_types order

    @classmethod
    def of(cls, graph: HeteroData, target: str | None = None) -> TypedSchema:
        """The schema of `graph`; `target` defaults to its labelled type (the one holding `y`)."""
        node_types, edge_types = graph.metadata()
        target = target or target_type(graph)
        if target not in node_types:
            raise ConfigError(f"target type {target!r} is not a node type of the graph; it has {node_types}")
        widths = tuple(int(graph[t].x.size(1)) if "x" in graph[t] else 0 for t in node_types)
        return cls(target, tuple(node_types), tuple(edge_types), widths, tuple(int(graph[t].num_nodes)
                                                                               for t in node_types))

    def width(self, node_type: str) -> int:
        return self.widths[self.node_types.index(node_type)]

    def input_name(self, node_type: str) -> str:
        return f"{'x' if self.width(node_type) else 'id'}_{node_type}"

    def input_names(self) -> list[str]:
        """The exported graph's inputs: one per node type, then one adjacency per relation."""
        return [self.input_name(t) for t in self.node_types] + [f"adj_{relation_name(r)}" for r in self.edge_types]


class TypedSAGE(nn.Module):
    """Type-aware student: per-type input transforms, per-relation mean aggregation, `num_layers`
    layers (hidden width between, classes at the end, target type only in the last)."""

    def __init__(self, in_channels: int, hidden_channels: int, num_layers: int, out_channels: int,
                 dropout: float = 0.5, graph: HeteroData | None = None, target: str | None = None) -> None:
        super().__init__()
        if graph is None:
            raise ConfigError("a type-aware student needs a heterogeneous dataset (synthetic-hetero, acm:PATH)")
        if num_layers < 1:
            raise ConfigError(f"num_layers={num_layers} must be >= 1")
        self.schema = TypedSchema.of(graph, target)
        target = self.schema.target
        if self.schema.width(target) != in_channels:
            raise ConfigError(f"in_channels={in_channels} but the graph's {target} features have "
                              f"{self.schema.width(target)} columns")
        self.dropout, self.input_drop, self.target = dropout, dropout, target
        self.feature_norm = FeatureNorm()
        self.lin_in = nn.ModuleDict({t: nn.Linear(w, hidden_channels) for t, w in
                                     zip(self.schema.node_types, self.schema.widths, strict=True) if w})
        self.embed = nn.ModuleDict({t: nn.Embedding(n, hidden_channels) for t, w, n in
                                    zip(self.schema.node_types, self.schema.widths, self.schema.num_nodes,
                                        strict=True) if not w})
        self.layers = nn.ModuleList(self._layer(hidden_channels, out_channels if i == num_layers - 1 else
                                                hidden_channels, last=i == num_layers - 1)
                                    for i in range(num_layers))
        self._bind(graph)

    def _layer(self, width: int, out: int, last: bool) -> nn.ModuleDict:
        """lin_root per destination type, lin_rel per relation (keys: relation_name)."""
        dst = {self.target} if last else set(self.schema.node_types)
        return nn.ModuleDict({
            "root": nn.ModuleDict({t: nn.Linear(width, out) for t in self.schema.node_types if t in dst}),
            "rel": nn.ModuleDict({relation_name(r): nn.Linear(width, out, bias=False)
                                  for r in self.schema.edge_types if r[2] in dst}),
        })

    def _bind(self, graph: HeteroData) -> None:
        """The full typed graph as non-persistent buffers (weights-only state dicts): other types'
        features and each relation's row-normalised sparse adjacency."""
        for t, w in zip(self.schema.node_types, self.schema.widths, strict=True):
            if t != self.target and w:
                self.register_buffer(f"x_{t}", graph[t].x, persistent=False)
        for r in self.schema.edge_types:
            adj = mean_adjacency(graph[r].edge_index, graph[r[0]].num_nodes, graph[r[2]].num_nodes)
            self.register_buffer(f"adj_{relation_name(r)}", adj, persistent=False)

    def typed(self, inputs: dict[str, Tensor], adj: dict[Relation, Tensor]) -> TypedOutputs:
        """inputs {type: x [n_type, F_type] raw features, or int64 rows [n_type] of a featureless
        type}, adj {relation: [n_dst, n_src] row-normalised, dense or sparse} -> logits
        [n_target, C]; `typed` holds every type's pre-activation state per hidden layer."""
        h = {}
        for t in self.schema.node_types:
            if t in self.embed:
                h[t] = self.embed[t](inputs[t])
            else:
                x = self.feature_norm(inputs[t]) if t == self.target else inputs[t]
                h[t] = self.lin_in[t](input_dropout(x, self.input_drop, self.training))
        typed = []
        for i, layer in enumerate(self.layers):
            h = {t: F.dropout(v, self.dropout, self.training) for t, v in h.items()}
            z = {t: root(h[t]) for t, root in layer["root"].items()}
            for r in self.schema.edge_types:
                if r[2] in z:
                    z[r[2]] = z[r[2]] + layer["rel"][relation_name(r)](adj[r] @ h[r[0]])
            if i < len(self.layers) - 1:
                # Pre-activation states are what KD matches (as in distill/models.py's students).
                typed.append(z)
                h = {t: F.relu(v) for t, v in z.items()}
        logits = z[self.target]
        return TypedOutputs(logits, [layer[self.target] for layer in typed] + [logits], [], typed)

    def run(self, x: Tensor, edge_index: Tensor | None = None, edge_weight: Tensor | None = None) -> TypedOutputs:
        """x [N, F] (target features) over the bound typed graph -> `typed` outputs; the homogeneous
        view's `edge_index` is not used (the `fit` / teacher interface)."""
        inputs = {t: x if t == self.target else getattr(self, f"x_{t}") if t not in self.embed
                  else torch.arange(n, device=x.device)
                  for t, n in zip(self.schema.node_types, self.schema.num_nodes, strict=True)}
        adj = {r: getattr(self, f"adj_{relation_name(r)}") for r in self.schema.edge_types}
        return self.typed(inputs, adj)

    def forward(self, x: Tensor, edge_index: Tensor | None = None, edge_weight: Tensor | None = None) -> Tensor:
        return self.run(x, edge_index, edge_weight).logits


def mean_adjacency(edge_index: Tensor, num_src: int, num_dst: int) -> Tensor:
    """Sparse row-normalised adjacency [num_dst, num_src] of a relation's edges src -> dst
    (edge_index [2, E]): row i averages i's in-neighbours (empty rows for nodes without any)."""
    src, dst = edge_index
    degree = torch.bincount(dst, minlength=num_dst).clamp(min=1).float()
    return torch.sparse_coo_tensor(torch.stack([dst, src]), 1.0 / degree[dst], (num_dst, num_src),
                                   check_invariants=False).coalesce()



@dataclass(frozen=True)
class TypedBlock:
    """A typed k-hop block around some target nodes: `nodes` {type: global ids [n_type]} (the
    targets are the target type's first rows) and `inputs` {ONNX input name: tensor}."""

    nodes: dict[str, Tensor]
    inputs: dict[str, Tensor]


def typed_block(graph: HeteroData, schema: TypedSchema, targets: Tensor, hops: int) -> TypedBlock:
    """Every node within `hops` typed in-links of `targets` (int64 [k]), and each relation's dense
    adjacency [n_dst, n_src] over them, weighted by 1 / the destination's in-degree in the whole
    graph: a `hops`-layer student gives the targets' full-graph logits on it (the outer ring's
    rows are partial sums no target reads)."""
    nodes = {t: targets if t == schema.target else targets.new_zeros(0) for t in schema.node_types}
    frontier = dict(nodes)
    for _ in range(hops):
        reached = {t: [] for t in schema.node_types}
        for r in schema.edge_types:
            src, dst = graph[r].edge_index
            reached[r[0]].append(src[torch.isin(dst, frontier[r[2]])])
        frontier = {t: torch.cat(v).unique() if v else targets.new_zeros(0) for t, v in reached.items()}
        nodes = {t: torch.cat([nodes[t], frontier[t][~torch.isin(frontier[t], nodes[t])]]) for t in nodes}
    inputs = {schema.input_name(t): graph[t].x[nodes[t]] if schema.width(t) else nodes[t] for t in schema.node_types}
    for r in schema.edge_types:
        src, dst = graph[r].edge_index
        degree = torch.bincount(dst, minlength=graph[r[2]].num_nodes).clamp(min=1).float()
        row, col = _positions(dst, nodes[r[2]]), _positions(src, nodes[r[0]])
        keep = (row >= 0) & (col >= 0)
        adj = torch.zeros(len(nodes[r[2]]), len(nodes[r[0]]))
        adj[row[keep], col[keep]] = 1.0 / degree[dst[keep]]
        inputs[f"adj_{relation_name(r)}"] = adj
    return TypedBlock(nodes, inputs)


def _positions(ids: Tensor, block: Tensor) -> Tensor:
    """Row of each id of `ids` [E] in `block` [n] (distinct ids), -1 where absent -> [E]."""
    size = int(torch.cat([ids, block]).max()) + 1 if len(ids) + len(block) else 1
    where = torch.full((size,), -1, dtype=torch.long)
    where[block] = torch.arange(len(block))
    return where[ids]


class _Export(nn.Module):
    """Positional inputs in `TypedSchema.input_names` order -> logits (what torch.onnx traces)."""

    def __init__(self, student: TypedSAGE) -> None:
        super().__init__()
        self.student = student

    def forward(self, *tensors: Tensor) -> Tensor:
        schema = self.student.schema
        inputs = dict(zip(schema.node_types, tensors, strict=False))
        adj = dict(zip(schema.edge_types, tensors[len(schema.node_types):], strict=True))
        return self.student.typed(inputs, adj).logits


def export_typed_onnx(student: TypedSAGE, example: dict[str, Tensor]) -> bytes:
    """The eval-mode student (CPU) as ONNX bytes; `example` {input name: tensor} (a `TypedBlock`'s
    `inputs`). Every node count is a dynamic axis named after its type."""
    student = student.cpu().eval()
    schema, names = student.schema, student.schema.input_names()
    axes: dict[str, dict[int, str]] = {schema.input_name(t): {0: t} for t in schema.node_types}
    axes.update({f"adj_{relation_name(r)}": {0: r[2], 1: r[0]} for r in schema.edge_types})
    axes["logits"] = {0: schema.target}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # eval() on the wrapper too: the exporter restores the mode of the module it is given, recursively.
        torch.onnx.export(_Export(student).eval(), tuple(example[n] for n in names), buf, input_names=names,
                          output_names=["logits"], dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    return buf.getvalue()


HETERO_STUDENTS: dict[str, Callable[..., TypedSAGE]] = {"typed-sage": TypedSAGE}


def build_hetero_student(name: str, **kwargs: object) -> TypedSAGE:
    """A type-aware student by name; unknown names raise ConfigError listing the choices."""
    if name not in HETERO_STUDENTS:
        raise ConfigError(f"unknown type-aware student {name!r}; choose one of {sorted(HETERO_STUDENTS)}")
    return HETERO_STUDENTS[name](**kwargs)
