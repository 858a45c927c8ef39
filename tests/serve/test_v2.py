"""The Open Inference Protocol v2 endpoints (serve/routes/v2.py).

Against a real `python -m serve` with the protocol's own client library (tritonclient[http], the
`server` fixture: the tiny gcn bundle, SERVE_MAX_BATCH=16, SERVE_MAX_BODY_BYTES=4096): health,
metadata, inference equal to the torch student, errors with their statuses. In process (TestClient):
the tensor checks, Content-Type rules, the error body on /v2 paths versus /v1, and not-ready answers.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.http as http  # the dev extra installs it
from fastapi.testclient import TestClient
from tritonclient.utils import InferenceServerException

from serve.app import create_app
from serve.routes.v2 import MODEL_NAME
from serve.runtime import Service, build
from serve.settings import Settings
from tests.serve.conftest import TinyBundle
from tests.serve.reference import new_node_logits, softmax
from tests.serve.servers import Server

TOL = 1e-4
F, C = 8, 3  # the tiny bundles' feature width and classes (conftest.TINY)
INFER = f"/v2/models/{MODEL_NAME}/infer"


def version_of(tiny: TinyBundle) -> str:
    return str(json.loads((tiny.path / "manifest.json").read_text())["version"])


def tensor(name: str, array: np.ndarray, datatype: str, binary: bool = False) -> Any:
    t = http.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array, binary_data=binary)
    return t


def ids(*values: int) -> Any:
    return tensor("node_ids", np.array(values, dtype=np.int64), "INT64")


@pytest.fixture(scope="module")
def triton(server: Server) -> Iterator[Any]:
    client = http.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


def failure(call: Any) -> tuple[str, str]:
    """(status, message) of the InferenceServerException `call()` raises."""
    with pytest.raises(InferenceServerException) as caught:
        call()
    return str(caught.value.status()), caught.value.message()


# ---- real server, real protocol client ------------------------------------------------------------

@pytest.mark.slow
def test_health_and_metadata_with_tritonclient(triton: Any, gcn: TinyBundle) -> None:
    version = version_of(gcn)
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready(MODEL_NAME) and triton.is_model_ready(MODEL_NAME, version)
    assert not triton.is_model_ready("other") and not triton.is_model_ready(MODEL_NAME, "other-version")
    assert triton.get_server_metadata() == {"name": "graph-distill", "version": "0.1.0", "extensions": []}
    expected = {
        "name": MODEL_NAME, "versions": [version], "platform": "onnxruntime",
        "inputs": [{"name": "node_ids", "datatype": "INT64", "shape": [-1]},
                   {"name": "new_features", "datatype": "FP32", "shape": [-1, F]},
                   {"name": "new_neighbors", "datatype": "INT64", "shape": [-1, -1]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, C]},
                    {"name": "labels", "datatype": "INT64", "shape": [-1]}],
    }
    assert triton.get_model_metadata(MODEL_NAME) == expected
    assert triton.get_model_metadata(MODEL_NAME, version) == expected
    status, message = failure(lambda: triton.get_model_metadata("other"))
    assert status == "404" and "unknown model 'other'" in message
    assert failure(lambda: triton.get_model_metadata(MODEL_NAME, "other-version"))[0] == "404"


@pytest.mark.slow
def test_infer_equals_the_torch_student(triton: Any, gcn: TinyBundle) -> None:
    nodes = [0, 1, 150, 299, 42, 42, 7]
    result = triton.infer(MODEL_NAME, [ids(*nodes)], request_id="req-1")
    body = result.get_response()
    assert (body["model_name"], body["model_version"], body["id"]) == (MODEL_NAME, version_of(gcn), "req-1")
    probabilities, labels = result.as_numpy("probabilities"), result.as_numpy("labels")
    assert probabilities.dtype == np.float32 and probabilities.shape == (len(nodes), C)
    np.testing.assert_allclose(probabilities, softmax(gcn.logits[nodes]), atol=TOL, rtol=0)
    np.testing.assert_array_equal(labels, gcn.logits[nodes].argmax(axis=1))
    versioned = triton.infer(MODEL_NAME, [ids(*nodes)], model_version=version_of(gcn))
    np.testing.assert_array_equal(versioned.as_numpy("probabilities"), probabilities)


@pytest.mark.slow
def test_infer_new_nodes_padded_neighbours(triton: Any, gcn: TinyBundle) -> None:
    features = np.array([[0.5, -1.0, 2.0, 0.0, 0.1, 0.2, 0.3, 0.4], [1.0] * F], dtype=np.float32)
    neighbours = np.array([[3, 9, 27], [-1, -1, -1]], dtype=np.int64)  # the second has none
    result = triton.infer(MODEL_NAME, [ids(8), tensor("new_features", features, "FP32"),
                                       tensor("new_neighbors", neighbours, "INT64")])
    expected = [softmax(gcn.logits[8])] + [softmax(new_node_logits(gcn, row.tolist(), [n for n in nbrs if n >= 0]))
                                           for row, nbrs in zip(features, neighbours, strict=True)]
    np.testing.assert_allclose(result.as_numpy("probabilities"), np.array(expected), atol=TOL, rtol=0)


@pytest.mark.slow
def test_outputs_select_what_comes_back(triton: Any) -> None:
    result = triton.infer(MODEL_NAME, [ids(1, 2)], outputs=[http.InferRequestedOutput("labels")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["labels"]
    assert result.as_numpy("probabilities") is None


@pytest.mark.slow
def test_errors_reach_the_client_with_status_and_code(triton: Any) -> None:
    def infer(inputs: list[Any], **kwargs: Any) -> tuple[str, str]:
        return failure(lambda: triton.infer(kwargs.pop("model", MODEL_NAME), inputs, **kwargs))

    cases = {
        "unknown node": (infer([ids(5, 300_000)]), "404", "unknown_nodes: "),
        "unknown neighbour": (infer([tensor("new_features", np.zeros((1, F), np.float32), "FP32"),
                                     tensor("new_neighbors", np.array([[4, 900_000]]), "INT64")]),
                              "404", "unknown_neighbors: "),
        "over SERVE_MAX_BATCH": (infer([ids(*range(17))]), "413", "batch_too_large: "),
        "wrong datatype": (infer([tensor("node_ids", np.array([1.0], np.float32), "FP32")]), "422",
                           "invalid_request: "),
        "wrong feature width": (infer([tensor("new_features", np.zeros((1, F + 1), np.float32), "FP32")]),
                                "422", "invalid_features: "),
        "empty batch": (infer([ids()]), "422", "empty_batch: "),
        "unknown model": (infer([ids(1)], model="other"), "404", "http_404: unknown model"),
        "unknown version": (infer([ids(1)], model_version="other-version"), "404", "http_404: unknown version"),
        "binary tensors": (infer([tensor("node_ids", np.array([1], np.int64), "INT64", binary=True)]), "415",
                           "unsupported_media_type: the binary tensor data extension"),
    }
    got = {name: (status, message[:len(prefix)]) for name, ((status, message), _, prefix) in cases.items()}
    assert got == {name: (status, prefix) for name, (_, status, prefix) in cases.items()}


@pytest.mark.slow
def test_body_limit_answers_the_protocol_body(server: Server) -> None:
    with server.client() as client:
        response = client.post(INFER, json={"inputs": [{"name": "node_ids", "shape": [1], "datatype": "INT64",
                                                         "data": [1] * 3000}]})
    assert response.status_code == 413
    assert response.json() == {"error": 'body_too_large: request body exceeds 4096 bytes; detail: {"max_bytes":4096}'}


# ---- in process ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(gcn: TinyBundle) -> Iterator[TestClient]:
    app = create_app(Settings(bundle=gcn.path, warmup_runs=0, max_batch=16))  # type: ignore[arg-type]
    with TestClient(app) as c:
        deadline = time.monotonic() + 30
        while c.get("/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, c.get("/readyz").text
            time.sleep(0.02)
        yield c


def body(*inputs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"inputs": list(inputs), **extra}


def node_ids(data: Any, shape: list[int] | None = None, datatype: str = "INT64") -> dict[str, Any]:
    return {"name": "node_ids", "shape": [len(data)] if shape is None else shape, "datatype": datatype, "data": data}


BAD_TENSORS = {
    "bool id": body(node_ids([True])),
    "float id": body(node_ids([1.0])),
    "string id": body(node_ids(["7"])),
    "id beyond int64": body(node_ids([2**63])),
    "count differs from shape": body(node_ids([1, 2], shape=[3])),
    "rank 2 ids": body(node_ids([1, 2], shape=[1, 2])),
    "wrong datatype": body(node_ids([1], datatype="INT32")),
    "unknown input": body({"name": "x", "shape": [1], "datatype": "INT64", "data": [1]}),
    "repeated input": body(node_ids([1]), node_ids([2])),
    "unknown output": body(node_ids([1]), outputs=[{"name": "logits"}]),
    "neighbours without features": body(node_ids([1]), {"name": "new_neighbors", "shape": [1, 1],
                                                        "datatype": "INT64", "data": [2]}),
    "NaN feature": body({"name": "new_features", "shape": [1, F], "datatype": "FP32",
                         "data": [float("nan")] + [0.0] * (F - 1)}),
    "bool feature": body({"name": "new_features", "shape": [1, F], "datatype": "FP32", "data": [True] * F}),
    "no inputs": body(),
    "extra key": body(node_ids([1]), colour="red"),
}


@pytest.mark.parametrize("case", list(BAD_TENSORS))
def test_bad_tensors_are_invalid_request(client: TestClient, case: str) -> None:
    # json.dumps, not json=: httpx refuses to send the NaN literal (Python's json, and so the service, reads it).
    response = client.post(INFER, content=json.dumps(BAD_TENSORS[case]), headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert list(response.json()) == ["error"] and response.json()["error"].startswith("invalid_request: ")


def test_nested_data_equals_flat_and_pad_value(client: TestClient) -> None:
    flat = [float(v) for v in range(2 * F)]
    new = {"name": "new_features", "shape": [2, F], "datatype": "FP32"}
    nbrs = {"name": "new_neighbors", "shape": [2, 2], "datatype": "INT64"}
    a = client.post(INFER, json=body({**new, "data": flat}, {**nbrs, "data": [3, -1, 9, 9]}))
    b = client.post(INFER, json=body({**new, "data": [flat[:F], flat[F:]]},
                                     {**nbrs, "data": [[3, 7], [9, 7]], "parameters": {"pad_value": 7}}))
    assert a.status_code == b.status_code == 200
    assert a.json() == b.json()


def test_content_type_rules(client: TestClient) -> None:
    raw = json.dumps(body(node_ids([1]))).encode()
    assert client.post(INFER, content=raw).status_code == 200  # no Content-Type: JSON (tritonclient sends none)
    plain = client.post(INFER, content=raw, headers={"content-type": "text/plain"})
    assert plain.status_code == 415 and plain.json()["error"].startswith("unsupported_media_type: ")
    gzip = client.post(INFER, content=raw, headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert gzip.status_code == 415 and gzip.json()["error"].startswith("unsupported_encoding: ")
    broken = client.post(INFER, content=b'{"inputs": [', headers={"content-type": "application/json"})
    assert broken.status_code == 422 and broken.json()["error"].startswith("malformed_json: ")


def test_error_body_is_the_protocols_on_v2_only(client: TestClient) -> None:
    unknown = client.get("/v2/nothing")
    assert unknown.status_code == 404 and unknown.json() == {"error": "http_404: Not Found"}
    v1 = client.post("/v1/score", json={"node_ids": [300_000]})
    assert v1.status_code == 404 and v1.json()["error"]["code"] == "unknown_nodes"  # /v1 keeps its body
    v2 = client.post(INFER, json=body(node_ids([300_000])))
    assert v2.status_code == 404
    assert v2.json() == {"error": "unknown_nodes: 1 node id(s) are not in the graph; "
                                  'detail: {"unknown_node_ids":[300000]}'}
    # The same Scorer answers both: identical probabilities for the same node.
    v1_p = client.post("/v1/score", json={"node_ids": [4]}).json()["results"][0]["probabilities"]
    v2_p = client.post(INFER, json=body(node_ids([4]), outputs=[{"name": "probabilities"}])).json()
    assert v2_p["outputs"][0]["data"] == list(v1_p.values())


def test_not_ready_answers(gcn: TinyBundle) -> None:
    gate = threading.Event()

    def gated(settings: Settings) -> Service:
        gate.wait(timeout=30)
        return build(settings)

    with TestClient(create_app(Settings(bundle=gcn.path, warmup_runs=0), builder=gated)) as c:  # type: ignore[arg-type]
        assert c.get("/v2/health/live").status_code == 200
        for path in ("/v2/health/ready", f"/v2/models/{MODEL_NAME}/ready", f"/v2/models/{MODEL_NAME}/versions/v/ready"):
            response = c.get(path)  # the protocol: "a 4xx status code indicates false", empty body
            assert (response.status_code, response.content) == (400, b""), path
        assert c.get("/v2/models/other/ready").status_code == 404
        assert c.get("/v2").status_code == 200  # server metadata needs no bundle
        metadata = c.get(f"/v2/models/{MODEL_NAME}")
        assert metadata.status_code == 503 and metadata.json()["error"].startswith("not_ready: ")
        assert c.post(INFER, json=body(node_ids([1]))).status_code == 503
        # The schema is checked first (422 even now); tensor checks need the model, so they come after.
        assert c.post(INFER, json={"inputs": [{"name": "node_ids", "shape": [1], "data": [1]}]}).status_code == 422
        gate.set()


V2_STATUSES = {  # what each /v2 operation can answer besides 200 and 500 (test_errors.py covers the rest)
    ("get", "/v2"): set(),
    ("get", "/v2/health/live"): set(),
    ("get", "/v2/health/ready"): {400},
    ("get", "/v2/models/{name}/ready"): {400, 404},
    ("get", "/v2/models/{name}/versions/{version}/ready"): {400, 404},
    ("get", "/v2/models/{name}"): {404, 503},
    ("get", "/v2/models/{name}/versions/{version}"): {404, 503},
    ("post", "/v2/models/{name}/infer"): {404, 413, 415, 422, 503},
    ("post", "/v2/models/{name}/versions/{version}/infer"): {404, 413, 415, 422, 503},
}


def test_openapi_documents_the_protocol_error_body(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {(m, p) for p, ops in paths.items() if p.startswith("/v2") for m in ops} == set(V2_STATUSES)
    for (method, path), statuses in V2_STATUSES.items():
        responses = paths[path][method]["responses"]
        # FastAPI adds its own 422 to operations with path parameters; a str parameter cannot fail it.
        assert set(responses) - {"422"} == {"200", "500", *map(str, statuses - {422})}, (method, path)
        for status in statuses - {400} | {500}:
            schema = responses[str(status)]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorResponseV2"}, (method, path, status)
