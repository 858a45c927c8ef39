"""Request and response bodies. Static limits live here; limits that depend on the bundle or the
settings (feature width, batch size) are checked by the scorer and the endpoint."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from bundle import ids

# A node id is the bundle's kind (bundle.ids): a JSON integer for int64 bundles, a string for string
# bundles; the endpoint refuses the other kind (it depends on the bundle, so the schema admits both).
# Strict: JSON true / 1.5 are never ids. Bounded: ids must fit numpy int64.
IntId = Annotated[int, Field(strict=True, ge=-(2**63), le=2**63 - 1)]


def _string_id(value: str) -> str:
    problem = ids.key_problem(value, "string")
    if problem is not None:
        raise ValueError(problem)
    return value


StringId = Annotated[str, Field(strict=True, min_length=1, max_length=ids.MAX_CHARS,
                                pattern=r"^[^\x00-\x1f\x7f-\x9f]+$"), AfterValidator(_string_id)]
NodeId = IntId | StringId
# Strict like the ids: JSON true and "0.5" are not features (lax mode made them 1.0 and 0.5); JSON
# integers still are. allow_inf_nan=False rejects the NaN / Infinity literals Python's json accepts.
Feature = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Probability = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0.0, le=1.0)]


class NewNodeIn(BaseModel):
    """A node that is not in the graph, scored inductively without changing the graph."""

    model_config = ConfigDict(extra="forbid")

    features: list[Feature] = Field(min_length=1, description="raw features, length = dataset.num_features")
    neighbors: list[NodeId] = Field(default_factory=list, max_length=10_000,
                                    description="external ids of existing nodes it links to")
    links: dict[Annotated[str, Field(max_length=64)], Annotated[list[NodeId], Field(max_length=10_000)]] | None = Field(
        None, max_length=16, description="typed bundles (GET /v1/model: types): the nodes of other types it links "
                                         "to, by type, e.g. {\"author\": [12, 40]}; expanded to meta-path neighbours "
                                         "and then scored like `neighbors`, which it replaces (not both)")


class ScoreRequest(BaseModel):
    """At least one of `node_ids` / `new_nodes`; together at most SERVE_MAX_BATCH entries."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"node_ids": [0, 7]}, {"new_nodes": [{"features": [0.1, 0.2], "neighbors": [0, 7]}]},
                     {"new_nodes": [{"features": [0.1, 0.2], "links": {"user": [17], "device": [402]}}]},
                     {"node_ids": ["acct-000017", "acct-000042"]},
                     {"node_ids": [0, 7], "threshold": 0.3, "top_k": 2}],
        # Documents the empty_batch rule (checked by the endpoint), so the schema allows no empty batch.
        "anyOf": [{"required": ["node_ids"], "properties": {"node_ids": {"minItems": 1}}},
                  {"required": ["new_nodes"], "properties": {"new_nodes": {"minItems": 1}}}],
    })

    node_ids: list[NodeId] = Field(default_factory=list, description="external ids of existing nodes: JSON "
                                   "integers, or strings for a bundle of string ids (GET /v1/model: id_type)")
    new_nodes: list[NewNodeIn] = Field(default_factory=list)
    threshold: Probability | None = Field(
        None, description="binary models only: flag the positive class when its probability is >= this, for "
                          "this request (default: the bundle's threshold, chosen on validation; 422 "
                          "invalid_request on a multi-class model)")
    as_of: float | None = Field(None, strict=True, allow_inf_nan=False, ge=0.0,
                                description="unix seconds: score the graph as it was then, the bundle's edges plus "
                                            "edges written (POST /v1/edges) with time <= as_of; default: all")
    top_k: int | None = Field(None, strict=True, ge=1, description="also return the k most probable classes "
                                                                   "per node, most probable first; k <= classes")


class ClassScore(BaseModel):
    label: str
    label_index: int
    probability: float


class NodeScore(BaseModel):
    kind: Literal["existing", "new"]
    node_id: int | str | None = Field(description="external id (existing nodes), of the bundle's kind, or null")
    new_node_index: int | None = Field(description="position in `new_nodes` (new nodes) or null")
    label: str = Field(description="the most probable class (argmax), whatever the threshold")
    label_index: int
    probabilities: dict[str, float] = Field(description="softmax of the logits, by class name")
    decision: str = Field(description="the class to act on: binary, the positive class when `score` >= the "
                                      "response's `threshold` (else the other class); multi-class, `label`")
    score: float | None = Field(description="binary models: the positive class's probability; else null")
    top_k: list[ClassScore] | None = Field(None, description="the `top_k` most probable classes (when asked)")
    ignored_links: list[str] | None = Field(None, description="new nodes: link types that were checked and ignored "
                                                              "(the served student does not read them)")
    model_version: str


class ScoreResponse(BaseModel):
    model_version: str
    positive_class: str | None = Field(None, description="binary models: the class `score` and `threshold` "
                                                         "are about; else null")
    threshold: float | None = Field(None, description="the threshold the decisions used (the request's, else the "
                                                      "bundle's); null when decisions are the argmax")
    results: list[NodeScore]


class ErrorBody(BaseModel):
    code: str
    message: str
    detail: Any = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# The 503 the HTTP layer (serve/http_limits.py) answers on any route but the probes, for the OpenAPI text.
OVERLOADED = "overloaded (over SERVE_MAX_IN_FLIGHT requests in progress; Retry-After: 1)"


class Status(BaseModel):
    status: Literal["ok", "ready", "loading", "failed", "draining"]
    reason: str | None = None


class ReloadRequest(BaseModel):
    """A bundle directory on the server's filesystem (absolute, or relative to its working directory)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"bundle": "/bundles/next"}]})

    bundle: str = Field(min_length=1, max_length=4096)
    force: bool = Field(False, strict=True, description="swap in a bundle even when it is incompatible with the "
                                                        "served model (other feature width, classes or inputs)")


class ReloadResponse(BaseModel):
    status: Literal["reloaded"]
    version: str = Field(description="model_version now served")
    previous_version: str | None = Field(description="model_version served before (null after a failed start)")
    bundle: str
    seconds: float = Field(description="verify + build + warm-up + swap")


class ModelInfo(BaseModel):
    """Summary of the served bundle's manifest."""

    version: str
    created_at: str | None
    dataset: dict[str, Any]
    id_type: ids.IdType = Field("int64", description="the kind of node ids requests carry: JSON integers "
                                                     "(int64) or strings (string)")
    student: dict[str, Any]
    policy: dict[str, Any]
    metrics: dict[str, Any]
    parity: dict[str, Any] | None
    decision: dict[str, Any] | None = Field(None, description="binary bundles: positive_class, the default "
                                                              "threshold, its rule and validation / test rates")
    cache: dict[str, Any]
    types: dict[str, Any] | None = Field(None, description="typed bundles: the target type, its feature width, the "
                                                           "types `links` may name (via types read by the student, "
                                                           "ignored ones) and every node type's count; else null")
    lineage: dict[str, Any] = Field(default_factory=dict,
                                    description="parent / refresh gate / selection (bundles of refresh / select)")
