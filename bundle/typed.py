"""Typed bundles: the node types of a heterogeneous source graph, and the meta-path rule that turns a
new target node's typed links into neighbours of the homogeneous student.

A meta-path bundle (`distill run --dataset acm:PATH | synthetic-hetero`) serves a homogeneous student
on the target type's meta-path graph: two targets are linked when they share a node of a *via* type
(ACM: paper-author-paper; synthetic-hetero: transaction-user-transaction and
transaction-device-transaction). `manifest.graph.typed` (`TypedGraph`) records the target type and
its feature width, every node type with its count and whether the served student reads it, and per
via type the via -> target incidence as CSR arrays in the bundle. `metapath_neighbours` is the one
rule from links to neighbours: the job's served check and the service both call it; its result then
goes through the bundle's neighbourhood policy like any `neighbors` list (bundle.policy).

There is no per-relation cap: a new node's neighbours are every target sharing one of its via nodes,
exactly the meta-path graph the student was trained on (before the policy's fan-out cap). The cap is
the policy's, applied after the union: at most `fanout` kept by edge_rank, while a degree input counts
the whole union, as `in_degree` counts an existing node's meta-path neighbours. A busy via node (an
ACM subject links ~1/60 of all papers) costs only its row of the incidence, a numpy gather.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bundle import ids
from bundle.errors import BundleInvalid

I64 = npt.NDArray[np.int64]
TYPE_NAME = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"  # node type names become file names: letters, digits, _


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeType(_Strict):
    """One node type of the source graph. `used`: the served student reads it (the target, or a via
    type of its meta-paths); links to an unused type are accepted and ignored by the service.
    `node_ids`: path of the type's external ids (int64 or <U{w}, bundle.ids) when they are not
    0..num_nodes-1; never for the target, whose ids are graph.node_ids."""

    name: str = Field(pattern=TYPE_NAME)
    num_nodes: int = Field(ge=1)
    used: bool
    node_ids: str | None = None
    id_type: ids.IdType = "int64"


class ViaType(_Strict):
    """A via type of the served meta-paths: `relation` (target -> via in the source graph, e.g. ACM's
    paper-writes-author) and the via -> target incidence as CSR: `indptr` int64 [M + 1] over the M via
    nodes, `indices` int64 [nnz] target internal indices, ascending and distinct within each row."""

    type: str = Field(pattern=TYPE_NAME)
    relation: str = Field(min_length=1, max_length=64)
    indptr: str
    indices: str


class TypedGraph(_Strict):
    """`manifest.graph.typed`: absent in homogeneous bundles (their manifests and digests are those of
    earlier releases). Inside `graph`, so the version digest covers it."""

    target: str = Field(pattern=TYPE_NAME)
    num_features: int = Field(ge=1)
    node_types: list[NodeType] = Field(min_length=2)
    via: list[ViaType] = Field(min_length=1)

    @model_validator(mode="after")
    def _types_fit(self) -> TypedGraph:
        names = [t.name for t in self.node_types]
        if len(set(names)) != len(names) or self.target not in names:
            raise ValueError(f"node_types must be distinct and hold the target {self.target!r}; got {names}")
        used = {t.name for t in self.node_types if t.used and t.name != self.target}
        via = [v.type for v in self.via]
        if len(set(via)) != len(via) or set(via) != used or not self.node_type(self.target).used:
            raise ValueError(f"via types {via} must be distinct and exactly the used non-target types {sorted(used)}")
        for t in self.node_types:
            if (t.node_ids is not None and t.name == self.target) or (t.node_ids is None and t.id_type != "int64"):
                raise ValueError(f"node type {t.name!r}: node_ids only for non-target types, and string ids need them")
        return self

    def node_type(self, name: str) -> NodeType:
        """The node type called `name`; KeyError naming the known ones."""
        for t in self.node_types:
            if t.name == name:
                return t
        raise KeyError(f"unknown node type {name!r}; known: {[t.name for t in self.node_types]}")

    @property
    def link_types(self) -> list[str]:
        """The types a new target node may link to: every type but the target, in manifest order."""
        return [t.name for t in self.node_types if t.name != self.target]

    def paths(self) -> list[str]:
        """Relative paths of the typed arrays (all served: the version digest covers them)."""
        found = [p for v in self.via for p in (v.indptr, v.indices)]
        return found + [t.node_ids for t in self.node_types if t.node_ids is not None]


@dataclass(frozen=True)
class Incidence:
    """Via -> target CSR: indptr int64 [M + 1], indices int64 [nnz] (target internal indices)."""

    indptr: I64
    indices: I64

    @classmethod
    def from_pairs(cls, target: I64, via: I64, num_via: int) -> Incidence:
        """Target-via links (target [E], via [E] internal indices; repeats allowed) -> the CSR."""
        pairs = np.unique(np.stack([via.astype(np.int64), target.astype(np.int64)]), axis=1)
        indptr = np.zeros(num_via + 1, dtype=np.int64)
        np.cumsum(np.bincount(pairs[0], minlength=num_via), out=indptr[1:])
        return cls(indptr, np.ascontiguousarray(pairs[1]))

    @property
    def num_via(self) -> int:
        return len(self.indptr) - 1

    def check(self, name: str, num_via: int, num_targets: int) -> None:
        """BundleInvalid unless a well-formed CSR of `num_via` rows over targets 0..num_targets-1."""
        p, i = self.indptr, self.indices
        bad = (len(p) != num_via + 1 or p[0] != 0 or p[-1] != len(i) or bool((np.diff(p) < 0).any())
               or (len(i) > 0 and (i.min() < 0 or i.max() >= num_targets)))
        if bad or self._unsorted_rows():
            raise BundleInvalid(f"typed incidence of {name!r} is not a CSR of {num_via} rows over "
                                f"{num_targets} targets with ascending distinct entries per row")

    def _unsorted_rows(self) -> bool:
        step = np.diff(self.indices)
        row_start = np.zeros(len(self.indices), dtype=bool)
        row_start[self.indptr[:-1][self.indptr[:-1] < len(self.indices)]] = True
        return bool((step <= 0)[~row_start[1:]].any())

    def targets(self, rows: I64) -> I64:
        """Every target of via `rows` [r] (concatenated, repeats kept) -> int64 [e]."""
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        lens = ends - starts
        shift = np.repeat(starts - (np.cumsum(lens) - lens), lens)
        found: I64 = self.indices[np.arange(int(lens.sum()), dtype=np.int64) + shift]
        return found


def metapath_neighbours(incidence: Mapping[str, Incidence], links: Mapping[str, I64]) -> I64:
    """The meta-path neighbours of a new target node: every target sharing one of its via nodes.
    `links`: via type -> via internal indices [m] (types without an incidence, the unused ones, are
    ignored) -> sorted distinct target internal indices [k]. The one rule the job's check and the
    service share; the result then goes through the policy (bundle.policy.kept_neighbours)."""
    parts = [incidence[name].targets(np.asarray(rows, dtype=np.int64)) for name, rows in links.items()
             if name in incidence and len(rows)]
    found: I64 = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
    return found


@dataclass(frozen=True)
class TypedArrays:
    """What a typed bundle serves beyond the graph store: the incidence of each via type and the
    external ids of the types that have their own (others are 0..num_nodes-1)."""

    incidence: dict[str, Incidence]
    node_ids: dict[str, npt.NDArray[Any]]

    def index(self, section: TypedGraph, name: str) -> ids.IdIndex:
        """External id -> internal index of type `name` (not the target)."""
        own = self.node_ids.get(name)
        return ids.IdIndex(np.arange(section.node_type(name).num_nodes, dtype=np.int64) if own is None else own)


def save(root: Path, target: str, num_features: int, types: list[tuple[str, int, bool]],
         via: dict[str, tuple[str, Incidence]], node_ids: Mapping[str, npt.NDArray[Any]] | None = None) -> TypedGraph:
    """Write the typed arrays under root/typed (plain .npy, no pickles) -> the manifest section.
    `types`: (name, num_nodes, used) for every node type; `via`: via type -> (relation, incidence)."""
    (root / "typed").mkdir()
    own = dict(node_ids or {})
    entries, vias = [], []
    for name, count, used in types:
        rel = None
        if name in own:
            rel = f"typed/{name}_node_ids.npy"
            np.save(root / rel, own[name], allow_pickle=False)
        entries.append(NodeType(name=name, num_nodes=count, used=used, node_ids=rel,
                                id_type="int64" if name not in own else ids.id_type_of(own[name])))
    for name, (relation, inc) in via.items():
        paths = {part: f"typed/{name}_{part}.npy" for part in ("indptr", "indices")}
        np.save(root / paths["indptr"], inc.indptr.astype(np.int64), allow_pickle=False)
        np.save(root / paths["indices"], inc.indices.astype(np.int64), allow_pickle=False)
        vias.append(ViaType(type=name, relation=relation, **paths))
    return TypedGraph(target=target, num_features=num_features, node_types=entries, via=vias)


# Reads one verified, listed .npy file: (relative path, array kind in bundle.files.ARRAYS, id kind).
ReadArray = Callable[[str, str, ids.IdType], npt.NDArray[Any]]


def load(section: TypedGraph, read: ReadArray, num_targets: int) -> TypedArrays:
    """The typed arrays of a bundle, each read through `read` (bundle.files.open_bundle passes its
    own parser over the bytes it verified, so they are read, hashed and parsed once, never
    unpickled), then checked: each incidence a CSR over the targets, each id array of its type's
    count and kind. Raises BundleInvalid on any mismatch."""
    incidence = {}
    for v in section.via:
        inc = Incidence(read(v.indptr, "indptr", "int64"), read(v.indices, "indices", "int64"))
        inc.check(v.type, section.node_type(v.type).num_nodes, num_targets)
        incidence[v.type] = inc
    own = {}
    for t in section.node_types:
        if t.node_ids is not None:
            values = read(t.node_ids, "node_ids", t.id_type)
            if values.shape != (t.num_nodes,) or ids.id_type_of(values) != t.id_type:
                raise BundleInvalid(f"{t.node_ids} must hold {t.num_nodes} {t.id_type} ids", {"file": t.node_ids})
            try:
                ids.check(values)
            except ids.IdError as exc:
                raise BundleInvalid(f"{t.node_ids}: {exc}", {"file": t.node_ids}) from None
            own[t.name] = values
    return TypedArrays(incidence, own)
