"""Blocks for examples, and their collation into one disjoint-union batch for torch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from bundle.temporal import RELATIONS, TemporalBlock, TemporalPolicy, TemporalStore, block
from distill.temporal.protocol import Examples


def build_blocks(store: TemporalStore, examples: Examples, policy: TemporalPolicy, desc: str = "blocks",
                 progress: bool = True) -> list[TemporalBlock]:
    """One block per example, each as of the example's own time."""
    rows = zip(examples.node.tolist(), examples.t.tolist(), strict=True)
    return [block(store, v, t, policy) for v, t in tqdm(rows, total=len(examples), desc=desc, disable=not progress,
                                                        leave=False, mininterval=1.0)]


@dataclass(frozen=True)
class Batch:
    """Blocks stacked block-diagonally. x float32 [N, F]; target int64 [B] (row of each block's
    target); edge_index int64 [2, M] (message from row 0 -> row 1); edge_relation int64 [M];
    edge_rating float32 [M]; edge_age_days float32 [M]; adj: one sparse [N, N] matrix per relation,
    the same row-normalised weights as TemporalBlock.adjacency()."""

    x: Tensor
    target: Tensor
    edge_index: Tensor
    edge_relation: Tensor
    edge_rating: Tensor
    edge_age_days: Tensor
    adj: tuple[Tensor, ...]


def collate(blocks: Sequence[TemporalBlock]) -> Batch:
    """Stack blocks into one Batch (see there)."""
    sizes = np.array([len(b.nodes) for b in blocks], dtype=np.int64)
    offset = np.r_[0, np.cumsum(sizes)[:-1]]
    n = int(sizes.sum())
    shift = np.concatenate([np.full(len(b.edge_from), o) for b, o in zip(blocks, offset, strict=True)])
    frm = np.concatenate([b.edge_from for b in blocks]) + shift
    to = np.concatenate([b.edge_to for b in blocks]) + shift
    rel = np.concatenate([b.edge_relation for b in blocks])
    rating = np.concatenate([b.edge_rating for b in blocks])
    age = np.concatenate([b.edge_age_days for b in blocks])
    return Batch(
        x=torch.from_numpy(np.concatenate([b.x for b in blocks])), target=torch.from_numpy(offset.astype(np.int64)),
        edge_index=torch.from_numpy(np.stack([frm, to]).astype(np.int64)), edge_relation=torch.from_numpy(rel),
        edge_rating=torch.from_numpy(rating), edge_age_days=torch.from_numpy(age),
        adj=_relation_adjacency(frm, to, rel, rating, n),
    )


def _relation_adjacency(frm: np.ndarray, to: np.ndarray, rel: np.ndarray, rating: np.ndarray,
                        n: int) -> tuple[Tensor, ...]:
    weight = np.maximum(np.abs(rating), 1.0)
    out = []
    for r in range(len(RELATIONS)):
        m = rel == r
        row_sum = np.bincount(to[m], weights=weight[m], minlength=n)
        w = weight[m] / row_sum[to[m]]
        idx = torch.from_numpy(np.stack([to[m], frm[m]]).astype(np.int64))
        out.append(torch.sparse_coo_tensor(idx, torch.from_numpy(w.astype(np.float32)), (n, n)).coalesce())
    return tuple(out)
