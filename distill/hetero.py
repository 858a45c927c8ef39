"""Heterogeneous graphs: ACM (HeCo's layout) as a PyG `HeteroData`, and its homogeneous view.

`acm:PATH` reads `../shared/datasets/hetero-acm`-style folders: papers (the labelled type, bag-of-words
features), authors (features), subjects (no features), paper-author and paper-subject links, and
HeCo's fixed splits with 20 / 40 / 60 labelled papers per class (`--split 0 | 1 | 2`), 1,000
validation and 1,000 test papers each.

The homogeneous view, what a homogeneous teacher or student trains on, is the paper-author-paper
meta-path graph (two papers are linked when they share an author): the "meta-path" route the
design names for distilling a heterogeneous graph into a homogeneous student. The typed graph is
kept beside it (`Dataset.hetero`) for type-aware models. `metapath_edges` and `target_type` take
any HeteroData (distill/hetero_synthetic.py's fraud graph goes through them too).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import HeteroData

from distill.errors import DatasetError

ACM_LABELS = (20, 40, 60)  # labelled papers per class in HeCo's splits, chosen by --split 0 / 1 / 2
ACM_FILES = ("p_feat.npz", "a_feat.npz", "pa.txt", "ps.txt", "labels.npy")


def acm_files(spec: str, path: Path, split: int) -> list[Path]:
    """The files `load_acm` reads for `split` (checked to exist) -> their paths."""
    if not 0 <= split < len(ACM_LABELS):
        raise DatasetError(f"dataset spec {spec!r}: --split {split} out of range; ACM has splits 0, 1, 2 "
                           f"({', '.join(map(str, ACM_LABELS))} labelled papers per class)")
    k = ACM_LABELS[split]
    names = [*ACM_FILES, f"train_{k}.npy", f"val_{k}.npy", f"test_{k}.npy"]
    missing = [n for n in names if not (path / n).is_file()]
    if missing:
        raise DatasetError(f"dataset spec {spec!r}: {path} lacks {missing}; expected HeCo's data/acm layout")
    return [path / n for n in names]


def load_acm(spec: str, path: Path, split: int) -> HeteroData:
    """ACM as HeteroData: paper x [4019, 1902], y [4019], train/val/test_mask [4019]; author x
    [7167, 1902]; subject num_nodes 60 (no features); edges paper-writes/written_by-author and
    paper-has/of-subject in both directions. Raises DatasetError on a malformed folder."""
    import scipy.sparse as sp

    files = acm_files(spec, path, split)
    try:
        paper_x = sp.load_npz(files[0]).toarray().astype(np.float32)
        author_x = sp.load_npz(files[1]).toarray().astype(np.float32)
        pa = np.loadtxt(files[2], dtype=np.int64, ndmin=2)
        ps = np.loadtxt(files[3], dtype=np.int64, ndmin=2)
        y = np.load(files[4], allow_pickle=False).astype(np.int64)
        index = [np.load(f, allow_pickle=False).astype(np.int64) for f in files[5:]]
    except (OSError, ValueError) as exc:
        raise DatasetError(f"dataset spec {spec!r}: cannot read {path} ({type(exc).__name__}: {exc})") from None
    n = len(y)
    _check_links(spec, pa, n, len(author_x), "pa.txt")
    _check_links(spec, ps, n, None, "ps.txt")
    if paper_x.shape[0] != n or any(i.min() < 0 or i.max() >= n for i in index):
        raise DatasetError(f"dataset spec {spec!r}: paper features, labels and split indices disagree on {n} papers")
    data = HeteroData()
    data["paper"].x, data["paper"].y = torch.from_numpy(paper_x), torch.from_numpy(y)
    for name, idx in zip(("train", "val", "test"), index, strict=True):
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.from_numpy(idx)] = True
        data["paper"][f"{name}_mask"] = mask
    data["author"].x = torch.from_numpy(author_x)
    data["subject"].num_nodes = int(ps[:, 1].max()) + 1
    for (rel, rev, other), links in ((("writes", "written_by", "author"), pa), (("has", "of", "subject"), ps)):
        edges = torch.from_numpy(np.unique(links, axis=0).T.copy())
        data["paper", rel, other].edge_index = edges
        data[other, rev, "paper"].edge_index = edges.flip(0)
    return data


def _check_links(spec: str, links: np.ndarray, papers: int, others: int | None, name: str) -> None:
    if links.ndim != 2 or links.shape[1] != 2 or links.min() < 0 or links[:, 0].max() >= papers \
            or (others is not None and links[:, 1].max() >= others):
        raise DatasetError(f"dataset spec {spec!r}: {name} must hold (paper, other) index pairs within the "
                           "node counts")


def metapath_edges(data: HeteroData, via: str = "author", target: str = "paper") -> torch.Tensor:
    """The `target`-`via`-`target` meta-path graph (ACM: paper-author-paper): an edge between every
    two distinct `target` nodes sharing a `via` node -> edge_index int64 [2, E] over `target` nodes,
    both directions, coalesced. Raises DatasetError when no relation links `target` to `via`."""
    import scipy.sparse as sp

    rel = next((r for (src, r, dst) in data.edge_types if src == target and dst == via), None)
    if rel is None:
        raise DatasetError(f"no relation from {target!r} to {via!r}; the graph has {data.edge_types}")
    src, dst = data[target, rel, via].edge_index.numpy()
    incidence = sp.csr_matrix((np.ones(len(src), dtype=np.float32), (src, dst)),
                              shape=(data[target].num_nodes, data[via].num_nodes))
    both = (incidence @ incidence.T).tocoo()
    keep = both.row != both.col
    return torch.from_numpy(np.stack([both.row[keep], both.col[keep]]).astype(np.int64))


def target_type(data: HeteroData) -> str:
    """The labelled node type (the one holding `y`); raises DatasetError unless exactly one has labels."""
    labelled = [t for t in data.node_types if "y" in data[t]]
    if len(labelled) != 1:
        raise DatasetError(f"a heterogeneous graph needs exactly one labelled node type; {labelled or 'none'} "
                           f"of {data.node_types} hold labels")
    return labelled[0]
