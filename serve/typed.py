"""Typed new-node requests: `new_nodes[i].links = {"<type>": [ids...]}` on a meta-path bundle.

A new target node (ACM: a paper; synthetic-hetero: a transaction) names the nodes of other types it
links to (its authors; its user and device). The links expand to meta-path neighbours with
bundle.typed.metapath_neighbours, the rule the job's served check also runs, and the node is then
scored exactly like a `neighbors` request with those neighbours (same policy, same fan-out cap, same
uncached new-node block).

Rules (README.md, "Typed new nodes"): `links` and `neighbors` are alternatives, never both in one
new node (one list of neighbours, not two to reconcile); links to a type the bundle records but the served student
does not read (ACM's subjects) are checked (unknown ids are a 404 like any other) and ignored, and
the result names them in `ignored_links`; `links` to a homogeneous bundle is a 422 naming
`neighbors`. Every refusal is an exact 4xx through serve/errors.py's handlers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from fastapi.exceptions import RequestValidationError

from bundle import ids
from bundle.manifest import Manifest
from bundle.typed import TypedArrays, TypedGraph, metapath_neighbours
from serve.errors import MAX_DETAIL, UnknownNodes
from serve.schemas import ScoreRequest

I64 = npt.NDArray[np.int64]
Links = Mapping[str, Sequence[ids.NodeKey]]


class TypedLinks:
    """The served node types: each link type's id index and each via type's incidence."""

    def __init__(self, section: TypedGraph, arrays: TypedArrays) -> None:
        self.section = section
        self.incidence = arrays.incidence
        self.indexes = {name: arrays.index(section, name) for name in section.link_types}
        self.ignored = frozenset(t.name for t in section.node_types if not t.used)

    @classmethod
    def of(cls, manifest: Manifest, arrays: TypedArrays | None) -> TypedLinks | None:
        """The typed view of a bundle, or None for a homogeneous one."""
        return None if manifest.typed is None or arrays is None else cls(manifest.typed, arrays)

    @property
    def target(self) -> str:
        return self.section.target

    def info(self) -> dict[str, Any]:
        """What GET /v1/model advertises: the target type, its feature width, every node type."""
        s = self.section
        return {"target": s.target, "num_features": s.num_features, "link_types": s.link_types,
                "via_types": [v.type for v in s.via], "ignored_types": sorted(self.ignored),
                "node_types": [{"name": t.name, "num_nodes": t.num_nodes, "used": t.used, "id_type": t.id_type}
                               for t in s.node_types]}

    def neighbours(self, index: int, links: Links) -> I64:
        """The meta-path neighbours (target internal indices [k], sorted) of new node `index` with
        `links` (types and id kinds checked by `check_request`); UnknownNodes (404) naming the type."""
        resolved: dict[str, I64] = {}
        for name, keys in links.items():
            table = self.indexes.get(name)
            if table is None:
                raise _invalid([(("new_nodes", index, "links", name), "unknown_node_type", self.unknown_type(name))])
            internal, unknown = table.lookup(ids.to_array(keys, table.id_type))
            if len(unknown):
                raise UnknownNodes(f"new_nodes[{index}].links names {len(unknown)} {name} id(s) not in the graph",
                                   {"index": index, "type": name, "unknown_node_ids": unknown[:100].tolist()})
            resolved[name] = internal
        return metapath_neighbours(self.incidence, resolved)

    def ignored_in(self, links: Links | None) -> list[str] | None:
        """The link types of `links` the served student does not read, sorted; None when there are none."""
        found = sorted(self.ignored.intersection(links or {}))
        return found or None

    def unknown_type(self, name: str) -> str:
        return (f"unknown node type {name!r}; a new {self.target} links to: {', '.join(self.section.link_types)}"
                + (f" (not {self.target} itself: send existing {self.target} ids as `neighbors`)"
                   if name == self.target else ""))


def _invalid(errors: list[tuple[tuple[str | int, ...], str, str]]) -> RequestValidationError:
    """A 422 `invalid_request` (serve/errors.py), shaped like the schema's own errors."""
    return RequestValidationError([{"type": kind, "loc": ("body", *loc), "msg": msg}
                                   for loc, kind, msg in errors[:MAX_DETAIL]])


def no_links(index: int) -> RequestValidationError:
    """`links` sent to a homogeneous bundle."""
    return _invalid([(("new_nodes", index, "links"), "links_unsupported",
                      "this bundle has no node types (homogeneous): send the new node's existing neighbours "
                      "as `neighbors`")])


def check_request(request: ScoreRequest, typed: TypedLinks | None) -> None:
    """Before any scoring, a 422 `invalid_request` for: `links` to a homogeneous bundle, `links`
    with `neighbors` in one new node, an unknown link type (naming the known ones), ids of the other
    kind than the type's."""
    problems: list[tuple[tuple[str | int, ...], str, str]] = []
    for i, node in enumerate(request.new_nodes):
        if node.links is None:
            continue
        if typed is None:
            raise no_links(i)
        if "neighbors" in node.model_fields_set:
            problems.append((("new_nodes", i), "links_and_neighbors",
                             "send either `links` (typed links, expanded to meta-path neighbours) or `neighbors` "
                             "(existing target ids), not both"))
        for name, keys in node.links.items():
            table = typed.indexes.get(name)
            if table is None:
                problems.append((("new_nodes", i, "links", name), "unknown_node_type", typed.unknown_type(name)))
                continue
            problems += [(("new_nodes", i, "links", name, j), "node_id_type", f"{name} ids: {problem}")
                         for j, key in enumerate(keys) if (problem := ids.key_problem(key, table.id_type))]
    if problems:
        raise _invalid(problems)
