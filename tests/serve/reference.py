"""Independent references: the torch student on the full (optionally augmented) pruned graph."""

from __future__ import annotations

import numpy as np
import torch

from bundle import policy as kernels
from tests.serve.conftest import TinyBundle


def new_node_logits(tiny: TinyBundle, features: list[float], neighbours: list[int]) -> np.ndarray:
    """Logits [C] of a new node, per docs/bundle.md step 4, computed by adding the node and its row
    of P to the whole graph and running the torch student's sparse (PyG) forward."""
    n = tiny.features.size(0)
    pol = tiny.policy
    cand = torch.tensor(sorted(set(neighbours)), dtype=torch.long)
    rank = kernels.edge_rank(cand.numpy(), np.full(len(cand), n), pol["seed"])
    kept = cand[np.lexsort((cand.numpy(), rank))[: pol["fanout"]]]
    src, dst, w = [], [], []
    if pol["propagation"] == "gcn":
        degree = torch.bincount(tiny.prop_index[1], minlength=n)  # row lengths of P, self-loops included
        d_new = len(kept) + 1
        src, dst = kept.tolist() + [n], [n] * d_new
        w = [float(1 / np.sqrt(d_new * degree[j])) for j in kept.tolist()] + [1 / d_new]
    elif pol["propagation"] == "mean" and len(kept):
        src, dst, w = kept.tolist(), [n] * len(kept), [1 / len(kept)] * len(kept)
    elif pol["propagation"] == "attention":
        src, dst = kept.tolist() + [n], [n] * (len(kept) + 1)
        w = [1 / (len(kept) + 1)] * (len(kept) + 1)
    index = torch.cat([tiny.prop_index, torch.tensor([src, dst], dtype=torch.long).view(2, -1)], dim=1)
    weight = torch.cat([tiny.prop_weight, torch.tensor(w, dtype=torch.float32)])
    x = torch.cat([tiny.features, torch.tensor([features], dtype=torch.float32)])
    if tiny.neighbour_mean is not None:  # mean rows of the distinct neighbours (zeros: none)
        # Each neighbour passes r x + (1 - r) m (Policy.mean_restart; r = 1: its raw features).
        r, rows = pol.get("mean_restart", 1.0), sorted(set(neighbours))
        given = r * tiny.features[rows].double() + (1 - r) * torch.from_numpy(tiny.neighbour_mean[rows]).double()
        new_mean = given.mean(0) if len(given) else torch.zeros(x.size(1), dtype=torch.float64)
        mean = torch.cat([torch.from_numpy(tiny.neighbour_mean), new_mean.float().unsqueeze(0)])
        x = torch.cat([x, mean], dim=1)
    if tiny.in_degree is not None:  # the degree column: raw in-degree, a new node's = its distinct neighbours
        degree = torch.cat([torch.from_numpy(tiny.in_degree), torch.tensor([len(set(neighbours))])])
        x = torch.cat([x, torch.log1p(degree.double()).float().unsqueeze(1)], dim=1)
    with torch.no_grad():
        return tiny.student(x, index, weight)[n].numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
