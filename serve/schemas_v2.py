"""Bodies of the Open Inference Protocol v2 (KServe / Triton "predict protocol v2") REST API, as the
protocol's own schema names them: https://github.com/kserve/open-inference-protocol,
specification/protocol/inference_rest.md and open_inference_rest.yaml (`metadata_server_response`,
`metadata_model_response`, `metadata_tensor`, `inference_request`, `request_input`, `request_output`,
`inference_response`, `response_output`, `*_error_response`).

The schema is deliberately loose where the protocol is (tensor `data` is any nesting of numbers); what
this model accepts (names, datatypes, shapes, element types) is checked by serve/routes/v2.py, which
answers a violation 422 `invalid_request` like any schema violation."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

# A protocol $parameter value: "$string | $number | $boolean" (inference_rest.md, "Parameters").
ParameterValue = Annotated[str | bool | int | float, Field(union_mode="left_to_right")]
Parameters = dict[str, ParameterValue]
# Each dimension "must be an integer representable as an unsigned 64-bit integer value".
Dim = Annotated[int, Field(strict=True, ge=0, le=2**64 - 1)]


class MetadataServerResponse(BaseModel):
    """$metadata_server_response."""

    name: str = Field(description="the server's name")
    version: str = Field(description="the server's version")
    extensions: list[str] = Field(description="protocol extensions supported (none: tensors travel as JSON only)")


class MetadataTensor(BaseModel):
    """$metadata_tensor: variable-size dimensions are -1."""

    name: str
    datatype: str = Field(description="protocol datatype: INT64, FP32, BYTES (string ids), ...")
    shape: list[int]


class MetadataModelResponse(BaseModel):
    """$metadata_model_response."""

    name: str
    versions: list[str] = Field(description="the served bundle's version (one at a time)")
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class RequestInput(BaseModel):
    """$request_input. `data` holds shape's product of elements, flat or nested, in row-major order."""

    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[Dim]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] = Field(description="$tensor_data: numbers (BYTES: strings), flat or nested row-major")


class RequestOutput(BaseModel):
    """$request_output; its parameters (tritonclient sends `binary_data`) are accepted and ignored."""

    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: Parameters | None = None


class InferenceRequest(BaseModel):
    """$inference_request. Request-level parameters (tritonclient sends `binary_data_output`) are
    accepted and ignored: outputs always come back as JSON."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"id": "42", "inputs": [{"name": "node_ids", "shape": [2], "datatype": "INT64", "data": [0, 7]}],
         "outputs": [{"name": "probabilities"}]},
    ]})

    id: str | None = Field(None, description="echoed in the response")
    parameters: Parameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = Field(None, description="which outputs to return (default: all)")


class ResponseOutput(BaseModel):
    """$response_output: `data` is flat, row-major."""

    name: str
    shape: list[int]
    datatype: str
    data: list[float] | list[int]


class InferenceResponse(BaseModel):
    """$inference_response."""

    model_name: str
    model_version: str
    id: str | None = Field(None, description="the request's id; absent when it gave none")
    outputs: list[ResponseOutput]


class ErrorResponseV2(BaseModel):
    """$inference_error_response (and the metadata error responses): the protocol's error body. The
    message starts with this service's error code (the `error.code` of /v1), e.g. `unknown_nodes: ...`."""

    error: str
