"""Bodies of POST /v1/edges and GET /v1/graph. Limits that depend on the bundle or the settings
(feature width, items per request, weight range, time order) are checked by serve/writes.py."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from serve.schemas import Feature, NodeId

MAX_LIST = 100_000  # schema bound only; SERVE_MAX_WRITE_ITEMS (413) is the real limit
Seconds = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0.0)]


class NodeWrite(BaseModel):
    """A node added to the graph: a new external id and its raw features."""

    model_config = ConfigDict(extra="forbid")

    id: NodeId
    features: list[Feature] = Field(description="raw features, length = dataset.num_features (a temporal bundle's "
                                                "users have none: [])")


class EdgeWrite(BaseModel):
    """An edge src -> dst between nodes of the graph (or declared in the same request's `nodes`)."""

    model_config = ConfigDict(extra="forbid")

    src: NodeId
    dst: NodeId
    time: Seconds | None = Field(None, description="unix seconds; default: the server's clock at the write")
    weight: Feature | None = Field(None, description="weight / rating, within [SERVE_EDGE_WEIGHT_MIN, "
                                                     "SERVE_EDGE_WEIGHT_MAX] when set; a temporal bundle needs it, "
                                                     "within the manifest's policy.rating_min..rating_max")


class EdgesRequest(BaseModel):
    """New nodes (added first) and edges; together at most SERVE_MAX_WRITE_ITEMS."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"edges": [{"src": 0, "dst": 7, "time": 1_700_000_000.0, "weight": 3.0}]},
        {"nodes": [{"id": 5000, "features": [0.1, 0.2]}], "edges": [{"src": 5000, "dst": 7}], "undirected": False},
    ]})

    nodes: list[NodeWrite] = Field(default_factory=list, max_length=MAX_LIST)
    edges: list[EdgeWrite] = Field(default_factory=list, max_length=MAX_LIST)
    undirected: bool | None = Field(None, strict=True, description="log each edge in both directions; default "
                                                                   "SERVE_EDGES_UNDIRECTED (true)")


class EdgesResponse(BaseModel):
    sequence: int = Field(description="the write's sequence number in the edge log (1, 2, ...)")
    accepted_nodes: int
    accepted_edges: int = Field(description="directed edges logged (an undirected edge counts twice)")
    changed_rows: int = Field(description="rows of the propagation matrix the write changed")
    invalidated_blocks: int = Field(description="cached neighbourhood blocks dropped")
    log_bytes: int = Field(description="size of the edge log after this write")


class GraphInfo(BaseModel):
    """The served graph: the bundle's nodes plus what the edge log added."""

    writes_enabled: bool
    bundle_nodes: int
    added_nodes: int
    logged_edges: int = Field(description="directed edges logged (replayed and written since start)")
    sequence: int = Field(description="last acknowledged write's sequence number (0: none)")
    log_bytes: int
    fsyncs: int = Field(description="fsyncs since start (group commit: fewer than writes under load)")
    latest_edge_time: float | None = Field(description="the latest logged edge time (unix seconds); null: none. A "
                                                       "temporal bundle: the latest edge time of bundle and log, "
                                                       "the default `as_of` of its scores")
