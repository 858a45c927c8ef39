"""A bundle keyed by strings, served (bundle/ids.py through serve/): the tiny graph of conftest.TINY
with `ids=str` (node i is `acct-%06d`), built by the real job. /v1 and /v2 take its ids as JSON strings
(/v2: datatype BYTES, through tritonclient against a real server), answer what the torch student
computes, and refuse ids of the other kind with 422; an int bundle refuses strings likewise."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.http as http
from fastapi.testclient import TestClient
from tritonclient.utils import InferenceServerException

from serve.routes.v2 import MODEL_NAME
from tests.serve import conftest
from tests.serve.conftest import TinyBundle, build_tiny
from tests.serve.helpers import ready_client
from tests.serve.reference import new_node_logits, softmax
from tests.serve.servers import serving

TOL = 1e-4
F = 8
INFER = f"/v2/models/{MODEL_NAME}/infer"


def name(i: int) -> str:
    return f"acct-{i:06d}"


@pytest.fixture(scope="module")
def strings(tmp_path_factory: pytest.TempPathFactory) -> TinyBundle:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(conftest, "TINY", conftest.TINY + ",ids=str")
        return build_tiny(tmp_path_factory.mktemp("string-ids") / "gcn", "gcn")


@pytest.fixture(scope="module")
def client(strings: TinyBundle) -> Iterator[TestClient]:
    yield from ready_client(strings.path)


def test_the_bundle_stores_the_names_and_says_so(client: TestClient, strings: TinyBundle) -> None:
    assert np.load(strings.path / "graph/node_ids.npy", allow_pickle=False).tolist() == [name(i) for i in range(300)]
    assert client.get("/v1/model").json()["id_type"] == "string"


def test_v1_scores_string_ids_as_the_torch_student(client: TestClient, strings: TinyBundle) -> None:
    nodes = [0, 299, 42, 42, 7]
    response = client.post("/v1/score", json={"node_ids": [name(i) for i in nodes]})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["node_id"] for r in results] == [name(i) for i in nodes]
    probabilities = np.array([[r["probabilities"][c] for c in ("legit", "suspicious", "fraud")] for r in results])
    np.testing.assert_allclose(probabilities, softmax(strings.logits[nodes]), atol=TOL, rtol=0)


def test_v1_new_node_with_string_neighbours(client: TestClient, strings: TinyBundle) -> None:
    features = [0.5, -1.0, 2.0, 0.0, 0.1, 0.2, 0.3, 0.4]
    body = {"new_nodes": [{"features": features, "neighbors": [name(3), name(9), name(27), name(3)]}]}
    result = client.post("/v1/score", json=body).json()["results"][0]
    assert (result["kind"], result["node_id"], result["new_node_index"]) == ("new", None, 0)
    expected = softmax(new_node_logits(strings, features, [3, 9, 27, 3]))
    np.testing.assert_allclose(list(result["probabilities"].values()), expected, atol=TOL, rtol=0)


def test_v1_unknown_string_ids_are_404(client: TestClient) -> None:
    response = client.post("/v1/score", json={"node_ids": [name(1), "acct-1", "nope"]})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_nodes"
    assert response.json()["error"]["detail"] == {"unknown_node_ids": ["acct-1", "nope"]}
    new = {"new_nodes": [{"features": [0.0] * F, "neighbors": [name(2), "zz"]}]}
    response = client.post("/v1/score", json=new)
    assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_neighbors"
    assert response.json()["error"]["detail"] == {"index": 0, "unknown_neighbor_ids": ["zz"]}


@pytest.mark.parametrize("body, loc", [
    ({"node_ids": [name(1), 1]}, ["body", "node_ids", 1]),
    ({"new_nodes": [{"features": [0.0] * F, "neighbors": [name(1), 4]}]}, ["body", "new_nodes", 0, "neighbors", 1]),
])
def test_v1_integer_ids_for_a_string_bundle_are_422(client: TestClient, body: dict[str, Any], loc: list[Any]) -> None:
    response = client.post("/v1/score", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["detail"] == [{"loc": loc, "msg": "this bundle's node ids are strings: send JSON strings",
                                "type": "node_id_type"}]


@pytest.mark.parametrize("bad", ["", "a" * 257, "acct\u0000", "line\nbreak"])
def test_v1_malformed_string_ids_are_422(client: TestClient, bad: str) -> None:
    response = client.post("/v1/score", json={"node_ids": [bad]})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"


def test_an_int_bundle_refuses_string_ids_with_422(gcn: TinyBundle) -> None:
    for client in ready_client(gcn.path):
        response = client.post("/v1/score", json={"node_ids": [1, "7"]})
        assert response.status_code == 422
        assert response.json()["error"]["detail"] == [{
            "loc": ["body", "node_ids", 1], "type": "node_id_type",
            "msg": "this bundle's node ids are integers (int64): send JSON integers"}]
        assert client.get("/v1/model").json()["id_type"] == "int64"
        v2 = client.post(INFER, json={"inputs": [{"name": "node_ids", "shape": [1], "datatype": "BYTES",
                                                  "data": ["7"]}]})
        assert v2.status_code == 422 and "node_ids is INT64" in v2.json()["error"]


def test_v2_string_tensors_are_checked(client: TestClient) -> None:
    def infer(*inputs: dict[str, Any]) -> Any:
        return client.post(INFER, json={"inputs": list(inputs)})

    ints = infer({"name": "node_ids", "shape": [1], "datatype": "INT64", "data": [1]})
    assert ints.status_code == 422 and "node_ids is BYTES for this bundle's string node ids, not INT64" in ints.text
    control = infer({"name": "node_ids", "shape": [1], "datatype": "BYTES", "data": ["a\u0001"]})
    assert control.status_code == 422 and control.json()["error"].startswith("invalid_request: ")
    number = infer({"name": "node_ids", "shape": [1], "datatype": "BYTES", "data": [7]})
    assert number.status_code == 422
    unknown = infer({"name": "node_ids", "shape": [2], "datatype": "BYTES", "data": [name(1), "acct-9"]})
    assert unknown.status_code == 404 and unknown.json()["error"].startswith("unknown_nodes: ")
    pad = infer({"name": "new_features", "shape": [1, F], "datatype": "FP32", "data": [0.0] * F},
                {"name": "new_neighbors", "shape": [1, 2], "datatype": "BYTES", "data": [name(1), -1],
                 "parameters": {"pad_value": -1}})
    assert pad.status_code == 422 and "pad_value must be a string" in pad.text


# ---- a real server and the protocol's client ---------------------------------------------------

@pytest.fixture(scope="module")
def triton(strings: TinyBundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with serving(strings.path, tmp_path_factory.mktemp("string-server"), SERVE_WARMUP_RUNS="2") as server:
        client = http.InferenceServerClient(server.url.removeprefix("http://"))
        yield client
        client.close()


def tensor(tensor_name: str, array: np.ndarray, datatype: str) -> Any:
    t = http.InferInput(tensor_name, list(array.shape), datatype)
    t.set_data_from_numpy(array, binary_data=False)
    return t


def strings_of(*values: str) -> np.ndarray:
    return np.array([v.encode() for v in values], dtype=np.object_)


@pytest.mark.slow
def test_v2_bytes_ids_with_tritonclient(triton: Any, strings: TinyBundle) -> None:
    inputs = triton.get_model_metadata(MODEL_NAME)["inputs"]
    assert [(t["name"], t["datatype"]) for t in inputs] == [("node_ids", "BYTES"), ("new_features", "FP32"),
                                                           ("new_neighbors", "BYTES")]
    features = np.array([[0.5, -1.0, 2.0, 0.0, 0.1, 0.2, 0.3, 0.4], [1.0] * F], dtype=np.float32)
    neighbours = np.array([[name(3), name(9), name(27)], ["", "", ""]], dtype=np.object_)  # "" pads
    result = triton.infer(MODEL_NAME, [tensor("node_ids", strings_of(name(8), name(150)), "BYTES"),
                                       tensor("new_features", features, "FP32"),
                                       tensor("new_neighbors", neighbours, "BYTES")])
    expected = [softmax(strings.logits[8]), softmax(strings.logits[150]),
                softmax(new_node_logits(strings, features[0].tolist(), [3, 9, 27])),
                softmax(new_node_logits(strings, features[1].tolist(), []))]
    np.testing.assert_allclose(result.as_numpy("probabilities"), np.array(expected), atol=TOL, rtol=0)

    with pytest.raises(InferenceServerException) as caught:
        triton.infer(MODEL_NAME, [tensor("node_ids", strings_of("acct-x"), "BYTES")])
    assert caught.value.status() == "404" and caught.value.message().startswith("unknown_nodes: ")
    with pytest.raises(InferenceServerException) as caught:
        triton.infer(MODEL_NAME, [tensor("node_ids", np.array([8], dtype=np.int64), "INT64")])
    assert caught.value.status() == "422" and "node_ids is BYTES" in caught.value.message()
