"""One error shape for every failure: bodies that cannot be read, strict feature types, non-finite
model output, and an OpenAPI document that lists every status an operation can answer."""

from __future__ import annotations

import gzip
import json
import time
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serve.app import create_app
from serve.settings import Settings
from tests.serve.conftest import TinyBundle
from tests.serve.test_reload import AUTH, TOKEN

JSON = {"content-type": "application/json"}
GOOD = json.dumps({"node_ids": [1]}).encode()
F = 8  # the tiny bundles' feature width


@pytest.fixture(scope="module")
def client(gcn: TinyBundle) -> Iterator[TestClient]:
    """The gcn bundle served in-process, ready, with the admin route."""
    app = create_app(Settings(bundle=gcn.path, warmup_runs=0, admin_token=TOKEN))  # type: ignore[arg-type]
    with TestClient(app, raise_server_exceptions=False) as test_client:
        deadline = time.monotonic() + 30
        while test_client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, test_client.get("/readyz").text
            time.sleep(0.02)
        yield test_client


def error_of(response: Any, status: int, code: str) -> dict[str, Any]:
    """The error object of `response`, after checking its status, code and shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "detail"}, body
    assert body["error"]["code"] == code, body
    return dict(body["error"])


def features(*values: str) -> bytes:
    """A one-new-node body whose first features are `values` (raw JSON) and the rest 0."""
    return ('{"new_nodes": [{"features": [' + ", ".join([*values, *["0"] * (F - len(values))]) + "]}]}").encode()


# The bodies the attack pass found answered with an undocumented `400 http_400`.
MALFORMED = {
    "invalid-utf8": b'{"node_ids": [1], "x": "\xff\xfe"}',
    "utf16": GOOD.decode().encode("utf-16"),  # JSON between systems is UTF-8 (RFC 8259 8.1)
    "deep-array": b"[" * 100_000 + b"]" * 100_000,
    "deep-in-field": b'{"node_ids": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "5000-digit-id": b'{"node_ids": [' + b"9" * 5000 + b"]}",
    "5000-digit-feature": features("9" * 5000),
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_unreadable_body_is_422_malformed_json(client: TestClient, body: bytes) -> None:
    error = error_of(client.post("/v1/score", content=body, headers=JSON), 422, "malformed_json")
    assert error["message"].startswith("request body is not valid JSON: ")


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_compressed_body_is_415_and_says_to_send_it_uncompressed(client: TestClient, encoding: str) -> None:
    body = {"gzip": gzip.compress, "deflate": zlib.compress}.get(encoding, bytes)(GOOD)
    response = client.post("/v1/score", content=body, headers={**JSON, "content-encoding": encoding})
    error = error_of(response, 415, "unsupported_encoding")
    assert "uncompressed" in error["message"] and error["detail"]["content_encoding"] == encoding
    assert response.headers["accept-encoding"] == "identity"


def test_missing_content_type_is_415_and_names_the_fix(client: TestClient) -> None:
    response = client.post("/v1/score", content=GOOD)  # httpx sends no content-type for raw bytes
    error = error_of(response, 415, "unsupported_media_type")
    assert "no Content-Type" in error["message"] and "Content-Type: application/json" in error["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
def test_wrong_content_type_is_415_and_names_the_fix(client: TestClient, content_type: str) -> None:
    response = client.post("/v1/score", content=GOOD, headers={"content-type": content_type})
    error = error_of(response, 415, "unsupported_media_type")
    assert content_type in error["message"] and "Content-Type: application/json" in error["message"]


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/merge-patch+json"])
def test_json_content_types_are_accepted(client: TestClient, content_type: str) -> None:
    response = client.post("/v1/score", content=GOOD, headers={"content-type": content_type})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("value", ['"0.5"', "true", "false", "null", "[0.5]", '{"v": 0.5}'])
def test_feature_must_be_a_json_number(client: TestClient, value: str) -> None:
    error = error_of(client.post("/v1/score", content=features(value), headers=JSON), 422, "invalid_request")
    assert error["detail"][0]["loc"] == ["body", "new_nodes", 0, "features", 0]


def test_integer_features_are_numbers(client: TestClient) -> None:
    response = client.post("/v1/score", content=features("1", "-2"), headers=JSON)
    assert response.status_code == 200, response.text
    as_floats = client.post("/v1/score", content=features("1.0", "-2.0"), headers=JSON)
    assert response.json()["results"] == as_floats.json()["results"]


def test_reload_body_gets_the_same_answers_after_the_token(client: TestClient) -> None:
    bad = {"content-type": "text/plain"}
    assert client.post("/admin/reload", content=b"\xff", headers=bad).status_code == 401  # token first
    error_of(client.post("/admin/reload", content=GOOD, headers={**AUTH, **bad}), 415, "unsupported_media_type")
    error_of(client.post("/admin/reload", content=MALFORMED["invalid-utf8"], headers={**AUTH, **JSON}), 422,
             "malformed_json")
    error_of(client.post("/admin/reload", content=MALFORMED["deep-array"], headers={**AUTH, **JSON}), 422,
             "malformed_json")


def test_non_finite_model_output_is_503_never_a_200_with_nulls(client: TestClient,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    model = client.app.state.runtime.service.scorer.model  # type: ignore[attr-defined]
    real = model.logits

    def poisoned(x: np.ndarray, adj: np.ndarray | None) -> np.ndarray:
        out = real(x, adj)
        out[:] = np.nan  # what NaN weights that pass every hash give
        return out

    monkeypatch.setattr(model, "logits", poisoned)
    error = error_of(client.post("/v1/score", json={"node_ids": [1, 2]}), 503, "model_output_invalid")
    assert error["detail"] == {"rows": [0, 1]}


HUGE = ["3.4e38", "-3.4e38"] * (F // 2)  # finite float32 each, but they overflow inside the model


@pytest.mark.parametrize("body", [
    {"new_nodes": [{"features": HUGE}]},
    {"node_ids": [1, 2], "new_nodes": [{"features": [0.5] * F}, {"features": HUGE, "neighbors": [3]}]},
], ids=["alone", "packed-with-others"])
def test_features_that_overflow_the_model_are_the_clients_422(client: TestClient, body: dict[str, Any]) -> None:
    content = json.dumps(body).replace('"3.4e38"', "3.4e38").replace('"-3.4e38"', "-3.4e38").encode()
    error = error_of(client.post("/v1/score", content=content, headers=JSON), 422, "invalid_features")
    assert error["detail"] == {"index": len(body["new_nodes"]) - 1} and "overflow" in error["message"]


STATUSES = {  # what each operation can answer besides 200 and 500
    ("get", "/livez"): set(),
    ("get", "/readyz"): {503},
    ("get", "/metrics"): {503},  # overloaded (serve/http_limits.py)
    ("get", "/v1/model"): {503},
    ("post", "/v1/score"): {404, 413, 415, 422, 503},
    ("post", "/admin/reload"): {401, 403, 409, 413, 415, 422, 503},
    ("post", "/v1/edges"): {401, 404, 409, 413, 415, 422, 503},
    ("get", "/v1/graph"): {503},
}


def test_openapi_documents_every_status_with_the_error_body(client: TestClient) -> None:
    # /v2 (Open Inference Protocol) has its own error body; tests/serve/test_v2.py checks those operations.
    paths = {p: ops for p, ops in client.get("/openapi.json").json()["paths"].items() if not p.startswith("/v2")}
    assert {(method, path) for path, ops in paths.items() for method in ops} == set(STATUSES)
    for (method, path), statuses in STATUSES.items():
        responses = paths[path][method]["responses"]
        assert set(responses) == {"200", "500", *map(str, statuses)}, (method, path)
        for status in statuses - ({503} if path == "/readyz" else set()) | {500}:
            schema = responses[str(status)]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path, status)
