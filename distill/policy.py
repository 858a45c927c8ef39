"""The one neighbourhood policy shared by training, export, selection and serving.

Every node keeps at most `fanout` in-neighbours, chosen deterministically: highest importance
score first (when a score is given), then lowest `edge_rank` (a seeded hash, so the choice is
uniform-like, reproducible, and recomputable by the service without torch). A k-layer student
trained full-batch on this pruned graph, with propagation weights computed once on the whole
pruned graph, gives for node v exactly what the same student computes on v's k-hop
in-neighbourhood: that subgraph is what the service caches, so what is evaluated is what is served.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import k_hop_subgraph

from distill.errors import ConfigError

PROPAGATIONS = ("gcn", "mean", "attention", "none")
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class NeighbourhoodPolicy:
    """`fanout` in-neighbours kept per node at every hop; `k_hops` = student message-passing depth."""

    fanout: int
    k_hops: int
    propagation: str
    seed: int = 0

    def __post_init__(self) -> None:
        if self.fanout < 1:
            raise ConfigError(f"fanout={self.fanout} must be >= 1")
        if self.propagation not in PROPAGATIONS:
            raise ConfigError(f"propagation={self.propagation!r}; choose one of {PROPAGATIONS}")

    @property
    def max_nodes(self) -> int:
        """Upper bound on the size of one node's cached neighbourhood."""
        return sum(self.fanout**h for h in range(self.k_hops + 1))


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 arrays (wrapping arithmetic), as in docs/bundle.md."""
    with np.errstate(over="ignore"):
        z = (x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def edge_rank(src: np.ndarray, dst: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic tie-break rank of edges src->dst: splitmix64(splitmix64(seed ^ dst) ^ src)."""
    inner = splitmix64(np.uint64(seed) ^ dst.astype(np.uint64))
    return splitmix64(inner ^ src.astype(np.uint64))


def prune(edge_index: torch.Tensor, num_nodes: int, fanout: int, seed: int,
          score: torch.Tensor | None = None) -> torch.Tensor:
    """Keep at most `fanout` in-edges per target node.

    edge_index [2, E] (row 0 source, row 1 target); score [E] or None -> pruned edge_index [2, E'].
    """
    src, dst = edge_index.cpu().numpy()
    rank = edge_rank(src, dst, seed)
    neg_score = -score.detach().cpu().numpy() if score is not None else np.zeros(len(src))
    order = np.lexsort((rank, neg_score, dst))  # last key is primary: group by dst
    dst_sorted = dst[order]
    starts = np.searchsorted(dst_sorted, np.arange(num_nodes))
    position = np.arange(len(order)) - starts[dst_sorted]
    keep = np.sort(order[position < fanout])
    return edge_index[:, torch.from_numpy(keep)]


def propagation(edge_index: torch.Tensor, num_nodes: int, kind: str,
                attention: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Propagation matrix P of the student as (edge_index [2, E''], weight [E'']), P[dst, src] = weight.

    `gcn`: symmetric normalisation with self-loops (PyG `gcn_norm`); `mean`: 1 / in-degree, no
    self-loops (GraphSAGE-mean as a weighted sum); `attention`: the teacher's attention, given as
    `attention = (score of each kept edge [E], score of each node's self-loop [N])`, renormalised
    over each row (kept in-neighbours plus the self-loop), so the student aggregates its
    neighbours the way the teacher weighed them; `none`: no edges (graph-free students).
    """
    if kind == "gcn":
        ei, w = gcn_norm(edge_index, None, num_nodes, add_self_loops=True)
        return ei, w.float()
    if kind == "mean":
        deg = torch.zeros(num_nodes).index_add_(0, edge_index[1], torch.ones(edge_index.size(1)))
        return edge_index, 1.0 / deg[edge_index[1]]
    if kind == "attention":
        if attention is None:
            raise ConfigError("attention propagation needs the teacher's edge and self-loop scores")
        loops = torch.arange(num_nodes).repeat(2, 1)
        ei = torch.cat([edge_index.cpu(), loops], 1)
        # A floor keeps every kept edge in P: a zero would silently drop a neighbour the policy kept.
        w = torch.cat([attention[0].cpu(), attention[1].cpu()]).float().clamp_min(1e-6)
        row_sum = torch.zeros(num_nodes).index_add_(0, ei[1], w)
        return ei, w / row_sum[ei[1]]
    return edge_index[:, :0], torch.zeros(0)


def to_csr(edge_index: torch.Tensor, weight: torch.Tensor, num_nodes: int) -> dict[str, np.ndarray]:
    """CSR by target row: `indptr` int64 [N+1], `indices` int64 [nnz] (sources), `weights` float32 [nnz]."""
    src, dst = edge_index.cpu().numpy()
    order = np.lexsort((src, dst))
    indptr = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(dst, minlength=num_nodes), out=indptr[1:])
    return {
        "indptr": indptr,
        "indices": src[order].astype(np.int64),
        "weights": weight.cpu().numpy()[order].astype(np.float32),
    }


def neighbourhood(node: int, k_hops: int, edge_index: torch.Tensor, weight: torch.Tensor,
                  num_nodes: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The cached subgraph of `node`: (global node ids [n], dense adj [n, n] with adj[i, j] = P[i, j],
    local index of `node`). Uses PyG `k_hop_subgraph` over in-edges."""
    subset, local_ei, mapping, mask = k_hop_subgraph(
        node, k_hops, edge_index, relabel_nodes=True, num_nodes=num_nodes
    )
    adj = torch.zeros(len(subset), len(subset))
    adj[local_ei[1], local_ei[0]] = weight[mask]
    return subset, adj, int(mapping[0])
