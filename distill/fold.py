"""`distill refresh --edge-log`: fold the service's graph writes into the dataset the child trains on.

The log is read with the service's own tolerant read (bundle.edge_log.read: a torn last record is
left out, exactly as the replay drops it) and must be bound to the parent bundle. Then, like the
service's DynamicStore: new nodes take indices N, N+1, ... in log order with their logged
features and no label (in no train / validation / test mask; y holds a placeholder 0 no loss or
metric reads); logged edges are directed src -> dst pairs of external ids (an `undirected` write
was logged as both directions), self-loops change nothing, and an edge the graph already has is
not added twice. Edge times and weights are dropped: a homogeneous bundle has neither.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Data
from torch_geometric.utils import coalesce

from bundle import ids
from bundle.edge_log import Contents, Entry, Header, read
from bundle.errors import BundleInvalid
from bundle.manifest import Manifest
from distill.data import Dataset
from distill.errors import DistillError


@dataclass(frozen=True)
class FoldRecord:
    """What a child bundle holds of a log (its manifest's dataset.source["edge_log"])."""

    path: str
    bundle_version: str
    sha256: str  # of the log's bytes that were folded (the valid prefix: a torn last record is not in it)
    records: int
    last_seq: int
    nodes_added: int
    edges_logged: int
    edges_added: int
    self_loops_dropped: int
    torn_bytes: int


@dataclass(frozen=True)
class Log:
    """A log read once: its contents, the header binding it to the parent, the sha256 of its valid
    bytes (what is folded)."""

    contents: Contents
    header: Header
    sha256: str


@dataclass(frozen=True)
class Folded:
    ds: Dataset
    record: FoldRecord


def read_log(path: Path, parent: Manifest, parent_root: Path) -> Log:
    """The log at `path`, refused (DistillError) unless it is readable and bound to `parent`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DistillError(f"--edge-log {path}: cannot read it ({exc.strerror}); pass the service's "
                           "SERVE_EDGE_LOG file") from None
    try:
        contents = read(data, path)
    except BundleInvalid as exc:
        raise DistillError(f"--edge-log {exc.message}") from None
    header = contents.header
    if header is None:
        raise DistillError(f"--edge-log {path} holds no header (no write was ever acknowledged in it); "
                           "drop --edge-log")
    if header.bundle_digest != (parent.digest or parent.version):
        raise DistillError(f"--edge-log {path} belongs to bundle {header.bundle_version} but --bundle "
                           f"{parent_root} is {parent.version}; fold a log into the bundle it was written for "
                           f"(--bundle of version {header.bundle_version}) or drop --edge-log")
    return Log(contents, header, hashlib.sha256(data[:contents.end]).hexdigest())


def fold(ds: Dataset, path: Path, parent: Manifest, parent_root: Path) -> Folded:
    """`ds` grown by the log at `path` (bound to `parent`): x [N + k, F], edge_index [2, E'],
    masks [N + k] False on the k new nodes, node_ids [N + k]. Raises DistillError."""
    if ds.hetero is not None:
        raise DistillError(f"--edge-log: dataset {ds.name} is a typed graph (its bundle serves a projection of it); "
                           "a log folds only into a homogeneous dataset: drop --edge-log")
    log = read_log(path, parent, parent_root)
    contents, entries = log.contents, log.contents.entries
    old = ds.external_ids
    id_type = ids.id_type_of(old)
    new_ids, features = _new_nodes(entries, old, id_type, ds.data.num_features, path)
    every = np.concatenate([old, new_ids]) if len(new_ids) else old
    pairs = _edges(entries, ids.IdIndex(every), id_type, path)
    loops = pairs[0] == pairs[1]
    data = _grown(ds.data, features, torch.from_numpy(pairs[:, ~loops]))
    record = FoldRecord(
        path=str(path), bundle_version=log.header.bundle_version, sha256=log.sha256, records=len(entries),
        last_seq=entries[-1].seq if entries else 0, nodes_added=len(new_ids), edges_logged=pairs.shape[1],
        edges_added=data.num_edges - ds.data.num_edges, self_loops_dropped=int(loops.sum()),
        torn_bytes=contents.torn_bytes)
    source: dict[str, Any] = {**ds.source, "edge_log": asdict(record)}
    return Folded(replace(ds, data=data, source=source, node_ids=every), record)


def _new_nodes(entries: list[Entry], old: np.ndarray, id_type: ids.IdType, num_features: int,
               path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The logged nodes' ids [k] (the dataset's id kind) and raw features [k, F], in log order."""
    nodes = [n for e in entries for n in e.nodes]
    keys = _keys([n.id for n in nodes], id_type, path)
    if len(keys):
        known = ids.IdIndex(old).lookup(keys)[0] >= 0
        _, first, counts = np.unique(keys, return_index=True, return_counts=True)
        again = keys[known] if known.any() else keys[first[counts > 1]]
        if len(again):
            raise DistillError(f"--edge-log {path} adds node {again[0].item()!r}, which the graph already has; "
                               "was the log written against another dataset than --dataset?")
    bad = next((n for n in nodes if len(n.features) != num_features), None)
    if bad is not None:
        raise DistillError(f"--edge-log {path}: node {bad.id!r} has {len(bad.features)} features, the dataset "
                           f"{num_features}; was the log written against another dataset than --dataset?")
    features = np.asarray([n.features for n in nodes], dtype=np.float32).reshape(len(nodes), num_features)
    return keys, features


def _edges(entries: list[Entry], index: ids.IdIndex, id_type: ids.IdType, path: Path) -> np.ndarray:
    """The logged edges as internal index pairs [2, M] (row 0 src, row 1 dst), in log order."""
    keys = _keys([k for e in entries for edge in e.edges for k in (edge.src, edge.dst)], id_type, path)
    internal, unknown = index.lookup(keys)
    if len(unknown):
        raise DistillError(f"--edge-log {path} names node {unknown[0].item()!r}, which is neither in --dataset nor "
                           f"added by the log ({len(unknown)} such ids); was the log written against another "
                           "dataset?")
    return internal.reshape(-1, 2).T.copy()


def _keys(keys: list[Any], id_type: ids.IdType, path: Path) -> np.ndarray:
    try:
        return ids.to_array(keys, id_type)
    except ids.IdError as exc:
        raise DistillError(f"--edge-log {path}: the dataset's node ids are {id_type} but the log's are not "
                           f"({exc})") from None


def _grown(data: Data, features: np.ndarray, edges: torch.Tensor) -> Data:
    """`data` with k new unlabelled nodes (features [k, F]) and `edges` [2, M] added, deduplicated."""
    k, n = len(features), data.num_nodes
    no = torch.zeros(k, dtype=torch.bool)
    return Data(
        x=torch.cat([data.x, torch.from_numpy(features)]),
        y=torch.cat([data.y, torch.zeros(k, dtype=data.y.dtype)]),
        edge_index=coalesce(torch.cat([data.edge_index, edges], dim=1), num_nodes=n + k),
        train_mask=torch.cat([data.train_mask, no]),
        val_mask=torch.cat([data.val_mask, no]),
        test_mask=torch.cat([data.test_mask, no]),
    )
