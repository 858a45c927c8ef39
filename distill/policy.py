"""The contract's neighbourhood policy (bundle.policy) applied to torch graphs: prune, weigh, and
hand the student the exact CSR that the bundle stores and the service serves."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from pydantic import ValidationError
from torch import Tensor

from bundle import policy as kernels
from bundle.manifest import Policy
from bundle.policy import CSR, Propagation
from distill.errors import ConfigError
from distill.train import Edges

# The propagated neighbour mean is iterated until what is left to change, (1 - r)^k of the start, is below this.
MEAN_TOLERANCE = 1e-4


def make_policy(fanout: int, k_hops: int, propagation: str, seed: int, score: str = "hash",
                degree_input: bool = False, mean_input: bool = False, mean_restart: float = 1.0) -> Policy:
    """The typed policy of the manifest; the contract's own validation decides, as a ConfigError."""
    try:
        return Policy(fanout=fanout, k_hops=k_hops, propagation=propagation, seed=seed,  # type: ignore[arg-type]
                      score=score, degree_input=degree_input, mean_input=mean_input, mean_restart=mean_restart)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"neighbourhood policy: {problems}") from None


def prune(edge_index: Tensor, num_nodes: int, fanout: int, seed: int, score: Tensor | None = None) -> Tensor:
    """Keep at most `fanout` in-edges per target (bundle.policy.prune).
    edge_index [2, E] (row 0 source, row 1 target); score [E] or None -> pruned edge_index [2, E']."""
    src, dst = edge_index.cpu().numpy()
    keep = kernels.prune(src, dst, num_nodes, fanout, seed, None if score is None else score.detach().cpu().numpy())
    return edge_index[:, torch.from_numpy(keep).to(edge_index.device)]


@dataclass(frozen=True)
class StudentGraph:
    """The student's view of the graph under the policy: the kept edges [2, E'] (no weights; what LSP
    distils), P as the contract's CSR (what the bundle stores) and as training edges (P's entries),
    with `policy.degree_input` the raw graph's in-degree [N] and with `policy.mean_input` the mean
    raw features of each node's in-neighbours [N, F] (both of the raw graph, both stored in the bundle)."""

    policy: Policy
    kept: Tensor
    csr: CSR
    edges: Edges
    in_degree: np.ndarray | None = None
    neighbour_mean: np.ndarray | None = None

    def inputs(self, x: Tensor) -> Tensor:
        """The student's input rows for features x [N, F] -> [N, F], [N, F + 1] or [N, 2F + 1]
        (bundle.policy.node_inputs, the function the service calls)."""
        if self.in_degree is None and self.neighbour_mean is None:
            return x
        rows = kernels.node_inputs(x.detach().cpu().numpy(), self.in_degree, self.neighbour_mean)
        return torch.from_numpy(rows).to(x.device)


def student_graph(edge_index: Tensor, num_nodes: int, policy: Policy, importance: Tensor | None = None,
                  attention: tuple[Tensor, Tensor] | None = None, x: Tensor | None = None) -> StudentGraph:
    """Prune under `policy` (by teacher `importance` [E] when given, else by the hash) and weigh P by
    `policy.propagation` (`attention` = (scores of the data edges [E], of the self-loops [N])).
    With `policy.mean_input`, `x` [N, F] are the raw features the neighbour mean is taken of."""
    kept = prune(edge_index, num_nodes, policy.fanout, policy.seed, importance)
    sg = weigh(kept, edge_index, num_nodes, policy, attention)
    src, dst = edge_index.cpu().numpy()
    if policy.degree_input:
        sg = replace(sg, in_degree=kernels.in_degree(src, dst, num_nodes))
    if policy.mean_input:
        if x is None:
            raise ValueError("a policy with mean_input needs the raw features x to take the neighbour mean of")
        features = x.detach().cpu().numpy().astype(np.float32)
        sg = replace(sg, neighbour_mean=neighbour_mean(src, dst, features, num_nodes, policy.mean_restart))
    return sg


def neighbour_mean(src: np.ndarray, dst: np.ndarray, features: np.ndarray, num_nodes: int,
                   restart: float = 1.0) -> np.ndarray:
    """The policy's stored mean [N, F] of raw features [N, F] over edges src, dst [E]: the contract's raw
    neighbour mean at restart 1; below, its fixed point m = mean over in-neighbours of
    `bundle.policy.propagated(x, m, restart)` (Policy.mean_restart), iterated from the raw mean in
    float64 over the same distinct in-neighbours until at most MEAN_TOLERANCE of it can change."""
    if restart >= 1.0:
        return kernels.neighbour_mean(src, dst, features, num_nodes)
    s, d = (torch.from_numpy(a) for a in kernels.distinct_in_edges(src, dst, num_nodes))
    count = torch.bincount(d, minlength=num_nodes).clamp(min=1).double()
    operator = torch.sparse_coo_tensor(torch.stack([d, s]), 1.0 / count[d], (num_nodes, num_nodes),
                                       check_invariants=True).coalesce()
    x = torch.from_numpy(features).double()
    m = torch.sparse.mm(operator, x)  # the raw mean, in float64
    for _ in range(int(np.ceil(np.log(MEAN_TOLERANCE) / np.log1p(-restart)))):
        m = torch.sparse.mm(operator, restart * x + (1.0 - restart) * m)
    return m.float().numpy()


def weigh(kept: Tensor, edge_index: Tensor, num_nodes: int, policy: Policy,
          attention: tuple[Tensor, Tensor] | None = None) -> StudentGraph:
    """P over already-kept edges [2, E'] (a subset of `edge_index` [2, E], whose edges `attention` scores)."""
    src, dst = kept.cpu().numpy()
    scores = None
    if attention is not None:
        on_kept = scores_on(kept, edge_index, attention[0], num_nodes)
        scores = (on_kept.numpy().astype(np.float32), attention[1].cpu().numpy().astype(np.float32))
    prop: Propagation = policy.propagation
    csr = CSR.from_entries(kernels.propagation(src, dst, num_nodes, prop, scores), num_nodes)
    entries = csr.entries()
    edges = Edges(torch.from_numpy(np.stack([entries.src, entries.dst])), torch.from_numpy(entries.weight))
    return StudentGraph(policy, kept.cpu(), csr, edges)


def scores_on(edge_index: Tensor, scored_index: Tensor, score: Tensor, num_nodes: int) -> Tensor:
    """A per-edge score given on `scored_index` [2, E'] looked up for every edge of `edge_index` [2, E];
    edges never scored get 0 (the policy's hash then decides among them). -> float32 [E]."""
    keys = (scored_index[0] * num_nodes + scored_index[1]).cpu().numpy()
    order = np.argsort(keys)
    wanted = (edge_index[0] * num_nodes + edge_index[1]).cpu().numpy()
    pos = np.clip(np.searchsorted(keys[order], wanted), 0, max(len(keys) - 1, 0))
    found = keys[order][pos] == wanted if len(keys) else np.zeros(len(wanted), dtype=bool)
    values = score.detach().cpu().numpy()[order][pos]
    return torch.from_numpy(np.where(found, values, 0.0).astype(np.float32))


def neighbourhood(sg: StudentGraph, node: int) -> tuple[np.ndarray, np.ndarray]:
    """The cached neighbourhood of `node` as the service builds it -> (nodes [n], node first; adj [n, n])."""
    nodes = sg.csr.k_hop(np.array([node], dtype=np.int64), sg.policy.k_hops)
    return nodes, sg.csr.dense_block(nodes)
