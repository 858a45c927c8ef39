"""Property-based fuzzing of every operation in the service's own OpenAPI document (schemathesis):
schema-valid and schema-violating requests alike must never get a 5xx, and every response must
match what the document promises for that operation (status, content type, headers, body schema)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.python import asgi

from serve.app import create_app
from serve.settings import Settings
from tests.serve.conftest import ROOT, TinyBundle
from tests.serve.helpers import wait_ready
from tests.serve.test_reload import AUTH, TOKEN

# No 5xx; status, content type, headers and body as documented; schema-violating input rejected (4xx).
CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance", "negative_data_rejection"]
# Per operation. The five without a body have few distinct inputs (Hypothesis stops once it has seen
# them all); the two POSTs use the whole budget: well over 200 requests per run in total.
MAX_EXAMPLES = 150
CALLS: Counter[str] = Counter()


@pytest.fixture(scope="module")
def app(gcn: TinyBundle) -> Iterator[FastAPI]:
    """The gcn bundle served in-process with the admin route, ready before the first case."""
    served = service(gcn.path)
    assert served.openapi() == DOC
    with asgi.get_client(served) as client:  # starts the lifespan, which schemathesis then reuses
        wait_ready(client)
        yield served
    asgi.shutdown_lifespans()




def service(bundle: Path) -> FastAPI:
    return create_app(Settings(bundle=bundle, warmup_runs=0, admin_token=TOKEN))  # type: ignore[arg-type]


# The document does not depend on the bundle, and the cases must exist at collection time, before the
# bundle fixture has built one; so it comes from an app that is never started. (schemathesis's
# `from_fixture` would wait for the fixture, but fails under pytest 9: it reads Function._nodeid.)
DOC = service(ROOT).openapi()
schema = schemathesis.openapi.from_dict(DOC)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
schema.config.checks.update(included_check_names=CHECKS)
NODES, FEATURES = 300, 8  # the tiny bundles' graph (conftest.TINY)


@schema.hook("map_case")
def reach_the_model(_: object, case: schemathesis.Case) -> schemathesis.Case:
    """Schema-valid /v1/score bodies, moved into the bundle's space: ids taken modulo the node count and
    feature lists cycled to the model's width. The document cannot say either (both depend on the
    bundle), so unmapped cases almost all end as 404 / 422 before the model runs. int(): JSON Schema
    counts 51.0 as an integer, the service's strict ids do not (like 1.5, it is 422 `invalid_request`).
    Schema-violating cases are left alone: mapping could make them valid."""
    body = case.body
    if case.operation.path != "/v1/score" or not isinstance(body, dict) or case.meta is None \
            or not case.meta.generation.mode.is_positive:
        return case
    body["node_ids"] = [in_graph(i) for i in body.get("node_ids", [])]
    for node in body.get("new_nodes", []):
        node["features"] = (node["features"] * FEATURES)[:FEATURES]
        node["neighbors"] = [in_graph(i) for i in node.get("neighbors", [])]
    return case


def in_graph(node_id: int | float | str) -> int | float | str:
    """A numeric id modulo the node count; a string id (the schema admits them for bundles of string
    ids) is left as it is: this int bundle answers it 422 `invalid_request`."""
    return node_id if isinstance(node_id, str) else int(abs(node_id)) % NODES


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(app: FastAPI, case: schemathesis.Case) -> None:
    # derandomize: CI runs the same cases every time, so a failure here is a regression, not luck.
    CALLS[case.operation.label] += 1
    case.call_and_validate(headers=AUTH, app=app)
