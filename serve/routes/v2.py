"""The Open Inference Protocol v2 (KServe / Triton "predict protocol v2") REST API beside /v1, serving
the same model through the same Scorer, limits and domain errors; serve/errors.py answers every error
on a /v2 path with the protocol's body `{"error": "<code>: <message>"}` (schemas: serve/schemas_v2.py).

The model is called MODEL_NAME whatever bundle is served, so a client's configuration survives a hot
reload (even to another student family); its one version is the bundle's version.

Tensors (see `metadata`):
  inputs   node_ids      INT64 [n]     external ids of existing nodes
           new_features  FP32  [m, F]  raw features of nodes outside the graph (optional)
           new_neighbors INT64 [m, k]  their neighbours' external ids, rows padded with -1 (optional;
                                       the input parameter `pad_value` names another pad)
  A bundle of string ids (bundle.ids) takes node_ids and new_neighbors as BYTES, the protocol's string
  type (JSON strings in `data`), new_neighbors padded with "" (no id is empty).
  outputs  probabilities FP32  [n + m, C]  softmax, rows: node_ids in order, then new nodes
           labels        INT64 [n + m]     argmax class index (class names: GET /v1/model)
"""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request

from bundle import ids
from serve.body import JSON, JsonRequest, require_json
from serve.dependencies import MetricsDep, RuntimeDep, SettingsDep
from serve.errors import BatchTooLarge, EmptyBatch, InvalidFeatures, UnsupportedMediaType
from serve.metrics import Metrics
from serve.runtime import Runtime, Service
from serve.schemas_v2 import (
    ErrorResponseV2,
    InferenceRequest,
    InferenceResponse,
    MetadataModelResponse,
    MetadataServerResponse,
    MetadataTensor,
    RequestInput,
)
from serve.scoring import NewNode

MODEL_NAME = "graph-distill"
SERVER_NAME = "graph-distill"
PLATFORM = "onnxruntime"
PADS: dict[ids.IdType, int | str] = {"int64": -1, "string": ""}  # the default pad of new_neighbors rows
ID_DATATYPES: dict[ids.IdType, str] = {"int64": "INT64", "string": "BYTES"}
INPUTS = ("node_ids", "new_features", "new_neighbors")
OUTPUTS = ("probabilities", "labels")


def _server_version() -> str:
    try:
        return importlib.metadata.version("graph-distill")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"


SERVER = MetadataServerResponse(name=SERVER_NAME, version=_server_version(), extensions=[])


class V2Route(APIRoute):
    """JsonRoute's rules (serve/body.py) for protocol clients, with one difference: tritonclient sends
    its JSON body without a Content-Type, so a missing one means JSON here. A declared non-JSON type
    and any Content-Encoding are still 415, and so is the binary tensor extension (a JSON header then
    raw bytes, `Inference-Header-Content-Length`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        declares_body = self.body_field is not None

        async def route(request: Request) -> Response:
            scope = request.scope
            if declares_body:
                require_body(request.headers)
                if "content-type" not in request.headers:  # FastAPI >= 0.13x leaves such a body unparsed
                    scope = {**scope, "headers": [*scope["headers"], (b"content-type", JSON.encode())]}
            return await handler(JsonRequest(scope, request.receive))

        return route


def require_body(headers: Mapping[str, str]) -> None:
    """415 unless the body is uncompressed JSON (Content-Type optional) without binary tensors."""
    if "inference-header-content-length" in headers:
        raise UnsupportedMediaType("the binary tensor data extension is not supported; send tensors as JSON "
                                   "(tritonclient: set_data_from_numpy(..., binary_data=False))",
                                   {"supported": [JSON]})
    require_json({"content-type": JSON, **headers})


# A bug is 500 `internal_error`, in the protocol's body on these paths.
BUG: dict[int | str, dict[str, Any]] = {500: {"model": ErrorResponseV2, "description": "internal_error: a bug"}}
router = APIRouter(route_class=V2Route, responses=BUG)
# The statuses /v1 answers for the same failures; the body is the protocol's (ErrorResponseV2).
ERROR_TEXT = {
    400: "(health endpoints only) false: not ready; empty body",
    404: "unknown model name or version, unknown node ids / neighbour ids",
    413: "batch_too_large (over SERVE_MAX_BATCH) or body_too_large (over SERVE_MAX_BODY_BYTES)",
    415: "unsupported_media_type (a non-JSON Content-Type, or binary tensor data) or unsupported_encoding",
    422: "invalid_request (schema, tensor names / datatypes / shapes / elements), malformed_json, empty_batch, "
         "invalid_features",
    503: "not_ready (the bundle is loading or was refused), model_output_invalid, or overloaded",
}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponseV2, "description": text} for code, text in ERROR_TEXT.items() if code != 400}
METADATA_ERRORS: dict[int | str, dict[str, Any]] = {code: ERRORS[code] for code in (404, 503)}
BOOLEAN: dict[int | str, dict[str, Any]] = {
    200: {"description": "true (empty body)", "content": {}},
    400: {"description": "false (empty body)", "content": {}},
}
TRUE, FALSE = Response(status_code=200), Response(status_code=400)


def _check_name(name: str) -> None:
    if name != MODEL_NAME:
        raise HTTPException(404, f"unknown model {name!r}; this server serves {MODEL_NAME!r}")


def _check_version(service: Service, version: str | None) -> None:
    if version is not None and version != service.bundle.version:
        raise HTTPException(404, f"unknown version {version!r} of {MODEL_NAME!r}; "
                                 f"the served version is {service.bundle.version!r}")


# ---- health and metadata -------------------------------------------------------------------------

@router.get("/v2/health/live", response_class=Response, responses={200: BOOLEAN[200]}, summary="v2 server live")
async def live() -> Response:
    return TRUE


@router.get("/v2/health/ready", response_class=Response, responses=BOOLEAN, summary="v2 server ready")
async def ready(runtime: RuntimeDep) -> Response:
    """Like /readyz: true once the bundle is loaded and warm, false while loading, after a refused
    bundle and while draining. The protocol says "4xx indicates false": 400."""
    return TRUE if runtime.service is not None and not runtime.draining else FALSE


def _model_ready(runtime: Runtime, name: str, version: str | None) -> Response:
    _check_name(name)
    service = runtime.service
    if service is None:
        return FALSE
    _check_version(service, version)
    return TRUE


@router.get("/v2/models/{name}/ready", response_class=Response, summary="v2 model ready",
            responses={**BOOLEAN, 404: ERRORS[404]})
async def model_ready(name: str, runtime: RuntimeDep) -> Response:
    return _model_ready(runtime, name, None)


@router.get("/v2/models/{name}/versions/{version}/ready", response_class=Response, summary="v2 model version ready",
            responses={**BOOLEAN, 404: ERRORS[404]})
async def model_version_ready(name: str, version: str, runtime: RuntimeDep) -> Response:
    return _model_ready(runtime, name, version)


@router.get("/v2", response_model=MetadataServerResponse, summary="v2 server metadata")
async def server_metadata() -> MetadataServerResponse:
    return SERVER


def metadata(service: Service) -> MetadataModelResponse:
    """The model's tensors: F = the bundle's raw feature width, C = its classes; -1 = any size."""
    f, c = service.scorer.store.num_features, len(service.bundle.class_names)
    datatypes = input_datatypes(service.scorer.store.id_type)
    return MetadataModelResponse(
        name=MODEL_NAME, versions=[service.bundle.version], platform=PLATFORM,
        inputs=[MetadataTensor(name=name, datatype=datatypes[name], shape=shape) for name, shape in
                (("node_ids", [-1]), ("new_features", [-1, f]), ("new_neighbors", [-1, -1]))],
        outputs=[MetadataTensor(name="probabilities", datatype="FP32", shape=[-1, c]),
                 MetadataTensor(name="labels", datatype="INT64", shape=[-1])])


@router.get("/v2/models/{name}", response_model=MetadataModelResponse, responses=METADATA_ERRORS,
            summary="v2 model metadata")
async def model_metadata(name: str, runtime: RuntimeDep) -> MetadataModelResponse:
    _check_name(name)
    return metadata(runtime.require())


@router.get("/v2/models/{name}/versions/{version}", response_model=MetadataModelResponse,
            responses=METADATA_ERRORS, summary="v2 model version metadata")
async def model_version_metadata(name: str, version: str, runtime: RuntimeDep) -> MetadataModelResponse:
    _check_name(name)
    service = runtime.require()
    _check_version(service, version)
    return metadata(service)


# ---- inference -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Infer:
    """The validated body and the service taken once for it (like serve/dependencies.Scoring)."""

    request: InferenceRequest
    service: Service


async def get_infer(name: str, request: InferenceRequest, runtime: RuntimeDep) -> Infer:
    """The body is this dependency's parameter, as in get_scoring: a body that fails the schema is 422
    even before the model is ready; then an unknown name is 404, then 503 until ready."""
    _check_name(name)
    return Infer(request, runtime.require())


InferDep = Annotated[Infer, Depends(get_infer)]


@router.post("/v2/models/{name}/infer", response_model=InferenceResponse, responses=ERRORS,
             response_model_exclude_none=True, summary="v2 inference")
async def infer(job: InferDep, settings: SettingsDep, metrics: MetricsDep) -> JSONResponse:
    return run(job, None, settings.max_batch, metrics)


@router.post("/v2/models/{name}/versions/{version}/infer", response_model=InferenceResponse, responses=ERRORS,
             response_model_exclude_none=True, summary="v2 inference on a version")
async def infer_version(version: str, job: InferDep, settings: SettingsDep, metrics: MetricsDep) -> JSONResponse:
    return run(job, version, settings.max_batch, metrics)


def run(job: Infer, version: str | None, max_batch: int, metrics: Metrics) -> JSONResponse:
    """Check, score through the same Scorer as /v1/score, answer $inference_response (data flat)."""
    started = time.perf_counter()
    service, request = job.service, job.request
    _check_version(service, version)
    wanted = requested_outputs(request)
    store = service.scorer.store
    node_ids, new = parse_inputs(request.inputs, store.num_features, max_batch, store.id_type)
    scores = service.scorer.score(node_ids, new)
    tensors = {
        "probabilities": ("FP32", list(scores.probabilities.shape), scores.probabilities.ravel().tolist()),
        "labels": ("INT64", [len(scores.labels)], scores.labels.tolist()),
    }
    body: dict[str, Any] = {"model_name": MODEL_NAME, "model_version": service.bundle.version}
    if request.id is not None:
        body["id"] = request.id
    body["outputs"] = [{"name": name, "datatype": tensors[name][0], "shape": tensors[name][1], "data": tensors[name][2]}
                       for name in wanted]
    metrics.scored["existing"].inc(len(node_ids))
    metrics.scored["new"].inc(len(new))
    metrics.observe_score(scores.cache_s, scores.inference_s, time.perf_counter() - started)
    metrics.observe_predictions(service.bundle.class_names, scores.labels, len(node_ids))
    return JSONResponse(body)


def invalid(loc: tuple[str | int, ...], message: str) -> RequestValidationError:
    """A tensor the model cannot take: 422 `invalid_request`, like a body that fails the schema."""
    return RequestValidationError([{"type": "value_error", "loc": ("body", *loc), "msg": message}])


def requested_outputs(request: InferenceRequest) -> list[str]:
    """The `outputs` asked for, in request order (all when absent)."""
    if request.outputs is None:
        return list(OUTPUTS)
    names = [o.name for o in request.outputs]
    for i, name in enumerate(names):
        if name not in OUTPUTS or name in names[:i]:
            raise invalid(("outputs", i, "name"), f"unknown or repeated output {name!r}; outputs: {list(OUTPUTS)}")
    return names


def input_datatypes(id_type: ids.IdType) -> dict[str, str]:
    """Each input's datatype for a bundle of `id_type` ids."""
    datatype = ID_DATATYPES[id_type]
    return {"node_ids": datatype, "new_features": "FP32", "new_neighbors": datatype}


def parse_inputs(inputs: list[RequestInput], num_features: int, max_batch: int,
                 id_type: ids.IdType = "int64") -> tuple[list[ids.NodeKey], list[NewNode]]:
    """The input tensors -> (node ids [n], new nodes [m]), every check before any data is converted:
    names, datatypes (ids: INT64, or BYTES for a bundle of string ids), ranks, batch size (413 / 422 as
    /v1), feature width, then the elements."""
    datatypes = input_datatypes(id_type)
    by_name: dict[str, tuple[int, RequestInput]] = {}
    for i, tensor in enumerate(inputs):
        if tensor.name not in INPUTS or tensor.name in by_name:
            raise invalid(("inputs", i, "name"), f"unknown or repeated input {tensor.name!r}; inputs: {list(INPUTS)}")
        if tensor.datatype != datatypes[tensor.name]:
            raise invalid(("inputs", i, "datatype"), f"{tensor.name} is {datatypes[tensor.name]} for this bundle's "
                                                     f"{id_type} node ids, not {tensor.datatype}"
                          if tensor.name != "new_features" else f"new_features is FP32, not {tensor.datatype}")
        rank = 1 if tensor.name == "node_ids" else 2
        if len(tensor.shape) != rank:
            raise invalid(("inputs", i, "shape"), f"{tensor.name} has rank {rank}, not {len(tensor.shape)}")
        by_name[tensor.name] = (i, tensor)
    if "new_neighbors" in by_name and ("new_features" not in by_name or
                                       by_name["new_neighbors"][1].shape[0] != by_name["new_features"][1].shape[0]):
        raise invalid(("inputs", by_name["new_neighbors"][0], "shape"),
                      "new_neighbors needs new_features with as many rows")
    n = by_name["node_ids"][1].shape[0] if "node_ids" in by_name else 0
    m = by_name["new_features"][1].shape[0] if "new_features" in by_name else 0
    if n + m == 0:
        raise EmptyBatch("give at least one node: node_ids [n] and/or new_features [m, F], n + m > 0")
    if n + m > max_batch:
        raise BatchTooLarge(f"{n + m} nodes in one request; the limit is {max_batch}", {"max_batch": max_batch})
    if m and by_name["new_features"][1].shape[1] != num_features:
        raise InvalidFeatures(f"new_features has shape {by_name['new_features'][1].shape}; the model takes "
                              f"[m, {num_features}]", {"num_features": num_features})
    keys = elements(*by_name["node_ids"]) if n else []
    if not m:
        return keys, []
    features = elements(*by_name["new_features"])
    rows = [features[j * num_features:(j + 1) * num_features] for j in range(m)]
    return keys, [NewNode(row, nbrs) for row, nbrs in zip(rows, neighbour_rows(by_name, m, id_type), strict=True)]


def neighbour_rows(by_name: dict[str, tuple[int, RequestInput]], m: int,
                   id_type: ids.IdType = "int64") -> list[list[ids.NodeKey]]:
    """new_neighbors [m, k] -> m lists of ids, the pad value (-1 for INT64, "" for BYTES, or the input's
    `pad_value`) dropped."""
    if "new_neighbors" not in by_name:
        return [[] for _ in range(m)]
    i, tensor = by_name["new_neighbors"]
    pad = (tensor.parameters or {}).get("pad_value", PADS[id_type])
    if type(pad) is not type(PADS[id_type]):
        kind = "an integer" if id_type == "int64" else "a string"
        raise invalid(("inputs", i, "parameters", "pad_value"), f"pad_value must be {kind}")
    flat, k = elements(i, tensor, pad if type(pad) is str else None), tensor.shape[1]
    return [[v for v in flat[j * k:(j + 1) * k] if v != pad] for j in range(m)]


def elements(i: int, tensor: RequestInput, pad: str | None = None) -> list[Any]:
    """`data`, flat in row-major order, checked: shape's product of elements, INT64 JSON integers that
    fit int64, BYTES string ids (bundle.ids; `pad` allowed too), FP32 finite JSON numbers (true / "7" /
    1.5-as-id are refused, as in /v1)."""
    flat = flatten(tensor.data)
    count = int(np.prod(tensor.shape, dtype=object))
    if len(flat) != count:
        raise invalid(("inputs", i, "data"), f"{tensor.name} has {len(flat)} elements; shape {tensor.shape} "
                                             f"takes {count}")
    if tensor.datatype == "BYTES":
        if not all(v == pad or ids.key_problem(v, "string") is None for v in flat):
            raise invalid(("inputs", i, "data"), f"{tensor.name} (BYTES) takes JSON strings of 1 to {ids.MAX_CHARS} "
                                                 "characters, no control characters")
        return flat
    integer = tensor.datatype == "INT64"
    ok = all(type(v) is int for v in flat) if integer else all(type(v) is int or type(v) is float for v in flat)
    try:  # ints beyond int64 (or float64) overflow
        ok = ok and bool(np.isfinite(np.asarray(flat, dtype=np.int64 if integer else np.float64)).all())
    except OverflowError:
        ok = False
    if not ok:
        kind = "JSON integers within int64" if integer else "finite JSON numbers"
        raise invalid(("inputs", i, "data"), f"{tensor.name} ({tensor.datatype}) takes {kind} only")
    return flat


def flatten(data: list[Any]) -> list[Any]:
    """Nested lists -> their leaves in row-major order. Iterative: the parser admits ~1000 levels."""
    if not any(type(v) is list for v in data):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for v in stack[-1]:
            if type(v) is list:
                stack.append(iter(v))
                break
            flat.append(v)
        else:
            stack.pop()
    return flat
