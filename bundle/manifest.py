"""`manifest.json` as typed, frozen pydantic models. Unknown keys are rejected at every level that
has a fixed shape; `metrics`, `config`, `selection` and `dataset.source` are free-form records."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    Tag,
    ValidationError,
    model_serializer,
    model_validator,
)

from bundle.errors import BundleInvalid
from bundle.ids import IdType
from bundle.policy import Propagation, max_block_nodes
from bundle.temporal import FEATURES, RELATIONS, TemporalPolicy
from bundle.typed import TypedGraph

SCHEMA_VERSION = 2
GRAPH_FILES = ("features", "node_ids", "indptr", "indices", "weights")
# present exactly when policy.degree_input / policy.mean_input
OPTIONAL_GRAPH_FILES = ("in_degree", "neighbour_mean")
TEMPORAL_GRAPH_FILES = ("node_ids", "src", "dst", "time", "rating")  # a temporal bundle's edge store


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetInfo(_Strict):
    spec: str
    name: str
    source: dict[str, Any]
    num_nodes: int = Field(ge=1)
    num_features: int = Field(ge=1)
    num_classes: int = Field(ge=2)
    class_names: list[str]

    @model_validator(mode="after")
    def _names_fit(self) -> DatasetInfo:
        if len(self.class_names) != self.num_classes or len(set(self.class_names)) != self.num_classes:
            raise ValueError("class_names must hold num_classes distinct names")
        return self


class StudentModel(_Strict):
    file: str
    student: str
    num_layers: int = Field(ge=1)
    hidden_channels: int = Field(ge=1)
    inputs: list[Literal["x", "adj"]]
    outputs: list[Literal["logits"]]
    opset: int
    params: int = Field(ge=0)
    teacher_file: str | None = None


class Policy(_Strict):
    name: Literal["topk_in_neighbours"] = "topk_in_neighbours"
    fanout: int = Field(ge=1)
    k_hops: int = Field(ge=0)
    propagation: Propagation
    seed: int = Field(ge=0, lt=1 << 64)
    score: Literal["hash", "teacher_attention", "teacher_gradient"] = "hash"
    # The student's input row is [features | log1p(in-degree in the raw graph)]: hub information that
    # pruning to `fanout` neighbours would otherwise throw away (bundle.policy.node_inputs).
    degree_input: bool = False
    # ... and with mean_input [features | mean of the raw in-neighbours' features | log1p(degree)]: exact
    # over all neighbours, not the kept `fanout`. Needs degree_input: the count keeps the mean exact
    # when the graph grows. Left out when false, so earlier bundles keep their bytes and digest.
    mean_input: bool = False
    # ... and with mean_restart r < 1 the mean is of the neighbours' propagated rows p = r x + (1 - r) m
    # rather than of their raw x, where m is that same stored mean: the personalised-PageRank fixed
    # point m = mean over in-neighbours of p (APPNP's propagation, Gasteiger et al. 2019), so one row
    # carries what every hop of the graph says, and a new node's m is that equation over the stored
    # rows of its given neighbours. 1 (left out): the raw neighbour mean.
    mean_restart: float = Field(default=1.0, gt=0.0, le=1.0)

    @model_serializer(mode="wrap")
    def _defaults_left_out(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        if dumped.get("mean_input") is False:
            del dumped["mean_input"]
        if dumped.get("mean_restart") == 1.0:
            del dumped["mean_restart"]
        return dumped

    @property
    def graph_free(self) -> bool:
        return self.propagation == "none"

    @property
    def max_nodes(self) -> int:
        return max_block_nodes(self.fanout, self.k_hops)

    @model_validator(mode="after")
    def _depth_fits(self) -> Policy:
        if self.graph_free != (self.k_hops == 0):
            raise ValueError("k_hops must be 0 exactly when propagation is none")
        if self.mean_input and not self.degree_input:
            raise ValueError("mean_input needs degree_input (the neighbour count that keeps the mean exact)")
        if self.mean_restart < 1.0 and not self.mean_input:
            raise ValueError("mean_restart below 1 needs mean_input (it sets what the neighbour mean is of)")
        return self


class TemporalRecent(_Strict):
    """The temporal policy (bundle.temporal): a node's block as of t holds up to `fanout` most recent
    edges with time <= t per node and direction, `k_hops` deep. `features` and `relations` are the
    kernel's FEATURES / RELATIONS as the job wrote them: the model was trained on exactly those
    columns, so a reader whose kernel names others refuses the bundle. Ratings lie in
    [rating_min, rating_max] (the data's range; writes are checked against it)."""

    name: Literal["temporal_recent"]
    fanout: int = Field(ge=1)
    k_hops: int = Field(ge=1)
    both_directions: bool
    features: list[str]
    relations: list[str]
    rating_min: float = Field(allow_inf_nan=False)
    rating_max: float = Field(allow_inf_nan=False)

    @property
    def graph_free(self) -> bool:
        return False

    @property
    def degree_input(self) -> bool:
        return False

    @property
    def mean_input(self) -> bool:
        return False

    @property
    def kernel(self) -> TemporalPolicy:
        return TemporalPolicy(self.fanout, self.k_hops, self.both_directions)

    @property
    def max_nodes(self) -> int:
        return self.kernel.max_nodes()

    @model_validator(mode="after")
    def _names_are_the_kernels(self) -> TemporalRecent:
        if tuple(self.features) != FEATURES or tuple(self.relations) != RELATIONS:
            raise ValueError(f"features / relations differ from this release's kernel (bundle.temporal: "
                             f"FEATURES {list(FEATURES)}, RELATIONS {list(RELATIONS)}); the model was trained on "
                             "other columns: rebuild the bundle with this release's `distill run`")
        if not self.rating_min <= self.rating_max:
            raise ValueError("rating_min must be <= rating_max")
        return self


def _policy_name(value: Any) -> str:
    """The discriminator: bundles of earlier releases may leave `name` out (topk_in_neighbours)."""
    name = value.get("name", "topk_in_neighbours") if isinstance(value, dict) else getattr(value, "name", None)
    return str(name)


AnyPolicy = Annotated[Annotated[Policy, Tag("topk_in_neighbours")] | Annotated[TemporalRecent, Tag("temporal_recent")],
                      Discriminator(_policy_name)]


class GraphFiles(_Strict):
    """Relative paths of the graph arrays, and the kind of node ids (bundle.ids): `int64`, the default,
    is left out when dumped, so int bundles keep the manifest bytes and the digest of earlier releases.
    `typed` (bundle.typed): only in meta-path bundles of a heterogeneous graph, left out otherwise."""

    features: str
    node_ids: str
    indptr: str
    indices: str
    weights: str
    in_degree: str | None = None
    neighbour_mean: str | None = None
    id_type: IdType = "int64"
    typed: TypedGraph | None = None

    @model_serializer(mode="wrap")
    def _default_id_type_left_out(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        if dumped.get("id_type") == "int64":
            del dumped["id_type"]
        for optional in ("typed", "neighbour_mean"):
            if dumped.get(optional, 0) is None:
                del dumped[optional]
        return dumped

    def paths(self) -> list[str]:
        """The relative paths of the arrays present, in contract order (GRAPH_FILES, then optional ones)."""
        return [rel for rel in (getattr(self, name) for name in GRAPH_FILES + OPTIONAL_GRAPH_FILES) if rel is not None]


class TemporalGraphFiles(_Strict):
    """A temporal bundle's edge store: node_ids [N] (int64 or strings, bundle.ids) and the edges
    src, dst int64 [E] (internal indices), time float64 [E] (unix seconds, non-decreasing),
    rating float32 [E]. No features and no P: both are computed as of t (bundle.temporal)."""

    node_ids: str
    src: str
    dst: str
    time: str
    rating: str
    id_type: IdType = "int64"

    def paths(self) -> list[str]:
        return [getattr(self, name) for name in TEMPORAL_GRAPH_FILES]


def _graph_kind(value: Any) -> str:
    keys = value.keys() if isinstance(value, dict) else type(value).model_fields
    return "temporal" if "src" in keys else "propagation"


AnyGraphFiles = Annotated[Annotated[GraphFiles, Tag("propagation")] | Annotated[TemporalGraphFiles, Tag("temporal")],
                          Discriminator(_graph_kind)]


class Parity(_Strict):
    """ONNX through the service's own scoring path vs the torch student, on `nodes_checked` nodes.
    `tolerance` is null for an int8 copy (`distill select --int8`): it is not the torch student, and
    is checked by prediction agreement with its float original on validation instead."""

    max_abs_diff: float
    nodes_checked: int
    tolerance: float | None = None


class Parent(_Strict):
    version: str
    path: str
    manifest_sha256: str


class RefreshGate(_Strict):
    """How `distill refresh` compared parent and child: both served, on the same validation nodes."""

    metric: str
    parent_val: float
    child_val: float
    nodes: int
    max_drop: float
    allow_worse: bool


class Reproducibility(_Strict):
    threads: int
    versions: dict[str, str]


class Decision(_Strict):
    """How the service turns a binary model's probabilities into a decision: `positive_class` when its
    probability is >= `threshold`, else the other class. The job chose the threshold on validation
    (maximising the positive class's F1 over the served probabilities, distill/served.py) and records
    what it gives there and on test. Absent for multi-class bundles (the decision is the argmax) and
    in bundles of earlier releases (argmax too; a request may still pass its own threshold)."""

    rule: Literal["max_f1_on_validation"] = "max_f1_on_validation"
    positive_class: str
    threshold: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    val_precision: float | None = None
    val_recall: float | None = None
    val_f1: float | None = None
    test_precision: float | None = None  # None: no node predicted positive (precision undefined)
    test_recall: float | None = None  # None: no positive node in the test set
    test_f1: float | None = None


class Manifest(_Strict):
    schema_version: Literal[2]
    version: str
    digest: str = ""  # the full served digest (bundle.files.served_digest) the version's 12 hex digits abbreviate
    created_at: str
    dataset: DatasetInfo
    model: StudentModel
    policy: AnyPolicy
    graph: AnyGraphFiles
    metrics: dict[str, Any]
    parity: Parity | None = None  # None only inside the job's staging directory, before the check
    config: dict[str, Any]
    seed: int
    reproducibility: Reproducibility
    parent: Parent | None = None
    refresh: RefreshGate | None = None
    selection: dict[str, Any] | None = None
    decision: Decision | None = None  # binary bundles of this release; read by the service (in the digest)
    files: dict[str, str]

    @model_validator(mode="after")
    def _inputs_fit_policy(self) -> Manifest:
        if isinstance(self.policy, TemporalRecent) != isinstance(self.graph, TemporalGraphFiles):
            raise ValueError("a temporal_recent policy needs the temporal graph files (src, dst, time, rating) "
                             "and they need it")
        if isinstance(self.graph, TemporalGraphFiles) and self.dataset.num_features != len(FEATURES):
            raise ValueError(f"a temporal bundle's num_features is {len(FEATURES)} (bundle.temporal.FEATURES)")
        if self.policy.graph_free != (self.model.inputs == ["x"]):
            raise ValueError("model.inputs, policy.propagation and policy.k_hops disagree")
        if isinstance(self.graph, GraphFiles) and self.policy.degree_input != (self.graph.in_degree is not None):
            raise ValueError("graph.in_degree must be present exactly when policy.degree_input is true")
        if isinstance(self.graph, GraphFiles) and self.policy.mean_input != (self.graph.neighbour_mean is not None):
            raise ValueError("graph.neighbour_mean must be present exactly when policy.mean_input is true")
        if self.decision is not None and (self.dataset.num_classes != 2
                                          or self.decision.positive_class not in self.dataset.class_names):
            raise ValueError("decision needs a binary dataset and one of its class_names as positive_class")
        typed = self.typed
        if typed is not None and (typed.node_type(typed.target).num_nodes != self.dataset.num_nodes
                                  or typed.num_features != self.dataset.num_features):
            raise ValueError("graph.typed's target count and feature width must be the dataset's")
        return self

    @property
    def temporal(self) -> bool:
        return isinstance(self.policy, TemporalRecent)

    @property
    def typed(self) -> TypedGraph | None:
        """The node types of a meta-path bundle (bundle.typed); None for every other bundle."""
        return self.graph.typed if isinstance(self.graph, GraphFiles) else None

    @property
    def served_files(self) -> list[str]:
        """Every file the service reads: the model and the graph arrays."""
        typed = self.typed
        return [self.model.file, *self.graph.paths(), *(typed.paths() if typed is not None else [])]

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_none=True) + "\n"

    @classmethod
    def parse(cls, text: str | bytes) -> Manifest:
        """Parse and validate manifest JSON; raises BundleInvalid naming the first problems."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'manifest'}: {e['msg']}"
                                 for e in exc.errors()[:5])
            raise BundleInvalid(f"manifest.json does not fit schema {SCHEMA_VERSION}: {problems}",
                                {"file": "manifest.json"}) from None
