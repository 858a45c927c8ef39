"""Structure distillation, all of it: the teacher's per-edge importance, the student graphs it
yields (keep the edges the teacher found important; for a GAT teacher, also propagate with its
attention), and the local-structure-preserving loss (LSP)."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.utils import softmax

from distill.artefacts import EdgeImportance, Prepared
from distill.config import RunConfig
from distill.models import mean_restart, propagation_of, takes_degree, takes_mean
from distill.policy import StudentGraph, make_policy, scores_on, student_graph, weigh
from distill.train import Edges

LSP_TAU = 0.1  # temperature of the cosine-similarity softmax over a node's neighbours


def neighbour_distribution(h: Tensor, edge_index: Tensor, num_nodes: int) -> Tensor:
    """For each edge j -> i: softmax over i's in-neighbours of cos(h_i, h_j) / tau. [N, H] -> [E]."""
    z = F.normalize(h, dim=-1)
    src, dst = edge_index
    return softmax((z[src] * z[dst]).sum(-1) / LSP_TAU, dst, num_nodes=num_nodes)


def lsp_loss(student: Tensor, teacher: Tensor, edge_index: Tensor) -> Tensor:
    """Local structure preservation (Yang et al., CVPR 2020): KL(teacher || student) between each
    node's similarity distributions over its neighbours, averaged over nodes with neighbours.
    student [N, Hs], teacher [N, Ht] (widths may differ), edge_index [2, E] without self-loops."""
    n = student.size(0)
    p_t = neighbour_distribution(teacher, edge_index, n)
    p_s = neighbour_distribution(student, edge_index, n)
    per_edge = p_t * (torch.log(p_t.clamp_min(1e-12)) - torch.log(p_s.clamp_min(1e-12)))
    per_node = torch.zeros(n, device=student.device).index_add_(0, edge_index[1], per_edge)
    has_neighbours = torch.bincount(edge_index[1], minlength=n) > 0
    return per_node[has_neighbours].mean()


def edge_importance(cfg: RunConfig, teacher: torch.nn.Module, x: Tensor, edge_index: Tensor,
                    teacher_edges: Edges, family: str) -> EdgeImportance:
    """Importance of every data edge (`edge_index` [2, E]) to the teacher of `family` (the one the
    run kept, not --teacher, which may be auto), which saw `teacher_edges`. GAT: attention averaged
    over heads and the teacher layers of the layer map (and of each node's self-loop); other
    teachers: |d(predicted-class log-prob) / d(edge weight)|."""
    teacher.eval()
    n = x.size(0)
    if not family.startswith("gat"):
        weight = torch.ones(teacher_edges.edge_index.size(1), device=x.device, requires_grad=True)
        log_probs = torch.log_softmax(teacher(x, teacher_edges.edge_index, weight), -1)
        log_probs.max(-1).values.sum().backward()
        assert weight.grad is not None
        return EdgeImportance(scores_on(edge_index, teacher_edges.edge_index.cpu(), weight.grad.abs().cpu(), n))
    with torch.no_grad():
        attention = teacher.run(x, teacher_edges.edge_index).attention
    scored = attention[0][0].cpu()
    pairs = cfg.layer_pairs_for(cfg.teacher_depth(family))
    score = torch.stack([attention[t - 1][1].mean(-1) for t, _ in pairs]).mean(0).cpu()
    if family == "gat-sep":  # no attention on the node itself: nothing to propagate its own state with
        return EdgeImportance(scores_on(edge_index, scored, score, n))
    loops = scored[0] == scored[1]  # GATConv adds one self-loop per node
    self_loops = torch.zeros(n).index_put_((scored[0][loops],), score[loops])
    return EdgeImportance(scores_on(edge_index, scored, score, n), self_loops)


def teacher_importance(cfg: RunConfig, prep: Prepared) -> EdgeImportance:
    """`edge_importance` of the run's kept teacher over the data edges."""
    data = prep.ds.data
    return edge_importance(cfg, prep.teacher, data.x.to(prep.device), data.edge_index, prep.teacher_edges,
                           cfg.teacher_family(prep.teacher_metrics))


def candidate_graphs(cfg: RunConfig, prep: Prepared, kinds: tuple[str, ...],
                     importance: EdgeImportance | None = None) -> list[StudentGraph]:
    """The graphs a student distilled with `kinds` is tried on. Without structure KD: the hash
    policy. With it: the policy keeps the neighbours the teacher found most important, and for a GAT
    teacher a second candidate also propagates with the teacher's attention over them (zero serving
    cost: the weights are in the stored P). `--structure-weights` picks one or both (auto: chosen
    on validation by the caller). `importance`: `teacher_importance`, when the caller already has it."""
    data = prep.ds.data
    prop = propagation_of(cfg.student)
    k_hops = 0 if prop == "none" else cfg.student_layers
    degree, mean = takes_degree(cfg.student), takes_mean(cfg.student, int(data.num_features))
    restart = mean_restart(cfg.student)
    if "structure" not in kinds or prop == "none":
        return [student_graph(data.edge_index, data.num_nodes,
                              make_policy(cfg.fanout, k_hops, prop, cfg.seed, degree_input=degree, mean_input=mean,
                                          mean_restart=restart), x=data.x)]
    importance = importance if importance is not None else teacher_importance(cfg, prep)
    family = cfg.teacher_family(prep.teacher_metrics)
    score = "teacher_attention" if family.startswith("gat") else "teacher_gradient"
    fixed = student_graph(data.edge_index, data.num_nodes,
                          make_policy(cfg.fanout, k_hops, prop, cfg.seed, score, degree, mean, restart),
                          importance.edges, x=data.x)
    if importance.self_loops is None or cfg.structure_weights == "fixed":
        return [fixed]
    policy = fixed.policy.model_copy(update={"propagation": "attention"})
    attention = replace(weigh(fixed.kept, data.edge_index, data.num_nodes, policy,
                              (importance.edges, importance.self_loops)),
                        in_degree=fixed.in_degree, neighbour_mean=fixed.neighbour_mean)
    return [attention] if cfg.structure_weights == "attention" else [fixed, attention]
