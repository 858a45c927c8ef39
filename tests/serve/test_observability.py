"""Request ids, structured logs, the access log and the Prometheus metrics (serve/observability.py,
serve/metrics.py): the id rules and formatters as units, then the app in process, then one real server."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from serve.app import create_app
from serve.metrics import Metrics
from serve.observability import (
    CURRENT,
    JsonFormatter,
    RequestIds,
    TextFormatter,
    current_request_id,
    logging_config,
    request_ids,
)
from serve.runtime import Service, build
from serve.settings import Settings
from tests.serve.conftest import TinyBundle
from tests.serve.servers import RunningServer, metric

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
HEX32 = re.compile(r"[0-9a-f]{32}")


# --- ids -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("given", ["abc-123", "req_1.2:3/4+5=", "x" * 128])
def test_a_safe_request_id_is_kept(given: str) -> None:
    ids, _ = request_ids([(b"x-request-id", given.encode())])
    assert ids.request_id == given
    assert HEX32.fullmatch(ids.trace_id) and ids.trace_id != given


@pytest.mark.parametrize("given", [b"", b"x" * 129, b"has space", b'quo"te', b"new\nline", "caf\u00e9".encode()])
def test_an_unsafe_request_id_is_replaced_by_the_trace_id(given: bytes) -> None:
    ids, _ = request_ids([(b"x-request-id", given)])
    assert HEX32.fullmatch(ids.request_id) and ids.request_id == ids.trace_id


def test_a_valid_traceparent_keeps_its_trace_id_and_flags() -> None:
    ids, flags = request_ids([(b"traceparent", f"00-{TRACE}-{PARENT}-01".encode())])
    assert (ids.trace_id, flags) == (TRACE, b"01")
    assert ids.request_id == TRACE  # no X-Request-ID: the trace id names the request
    assert re.fullmatch(r"[0-9a-f]{16}", ids.span_id) and ids.span_id != PARENT  # our span, not the caller's


@pytest.mark.parametrize("header", [f"ff-{TRACE}-{PARENT}-01", f"00-{'0' * 32}-{PARENT}-01",
                                    f"00-{TRACE}-{'0' * 16}-01", f"00-{TRACE.upper()}-{PARENT}-01",
                                    f"00-{TRACE}-{PARENT}", "garbage"])
def test_an_invalid_traceparent_starts_a_new_trace(header: str) -> None:
    ids, flags = request_ids([(b"traceparent", header.encode())])
    assert ids.trace_id != TRACE and HEX32.fullmatch(ids.trace_id) and flags == b"00"


def test_every_request_gets_fresh_ids() -> None:
    first, _ = request_ids([])
    second, _ = request_ids([])
    assert first.trace_id != second.trace_id and first.span_id != second.span_id


# --- formatters ----------------------------------------------------------------------------------------
def record(message: str, **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("serve", logging.WARNING, __file__, 1, message, None, None)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_carry_the_request_id_and_extra_fields() -> None:
    token = CURRENT.set(RequestIds("req-1", TRACE, PARENT))
    try:
        line = json.loads(JsonFormatter().format(record("loaded %s", bundle="/b", color_message="\x1b[1m")))
    finally:
        CURRENT.reset(token)
    assert line["level"] == "WARNING" and line["logger"] == "serve"
    assert line["request_id"] == "req-1" and line["trace_id"] == TRACE and line["bundle"] == "/b"
    assert "color_message" not in line  # uvicorn's ANSI duplicate of the message
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["ts"])


def test_json_lines_hold_the_traceback_and_no_id_outside_a_request() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.LogRecord("serve", logging.ERROR, __file__, 1, "failed", None, exc_info=sys.exc_info())
    line = json.loads(JsonFormatter().format(rec))
    assert "request_id" not in line and current_request_id() is None
    assert line["exc"].startswith("Traceback") and "ValueError: boom" in line["exc"]


def test_text_lines_append_the_fields() -> None:
    text = TextFormatter().format(record("POST /v1/score 200", status=200, latency_ms=0.5))
    assert text.endswith(" WARNING serve POST /v1/score 200 status=200 latency_ms=0.5")


def test_logging_config_routes_uvicorn_through_one_formatter() -> None:
    config = logging_config("warning", "json")
    assert config["root"] == {"level": "WARNING", "handlers": ["stderr"]}
    assert config["loggers"]["uvicorn.error"] == {"handlers": [], "propagate": True}
    assert config["loggers"]["serve.access"] == {"level": "INFO"}  # not silenced by SERVE_LOG_LEVEL=warning
    assert logging_config("info", "text")["formatters"]["serve"]["()"] is TextFormatter


# --- metrics (no app) ----------------------------------------------------------------------------------
def test_predictions_cache_counters_and_process_metrics() -> None:
    metrics = Metrics()
    metrics.watch_cache(lambda: {"hits": 7, "misses": 2, "hit_ratio": 7 / 9, "entries": 3})
    metrics.observe_predictions(["a", "b", "c"], np.array([2, 0, 2, 1], dtype=np.int64), existing=3)
    metrics.observe_predictions(["a", "b", "c"], np.array([2], dtype=np.int64), existing=1)
    text = metrics.exposition()[0].decode()
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert samples['serve_predictions_total{class="c",kind="existing"}'] == "3.0"
    assert samples['serve_predictions_total{class="a",kind="existing"}'] == "1.0"
    assert samples['serve_predictions_total{class="b",kind="new"}'] == "1.0"
    assert 'serve_predictions_total{class="b",kind="existing"}' not in samples  # none predicted: no child
    assert samples["serve_cache_hits_total"] == "7.0" and samples["serve_cache_misses_total"] == "2.0"
    # (the TYPE line names the family with or without _total, by prometheus_client version)
    assert re.search(r"# TYPE serve_cache_hits(_total)? counter", text) and "serve_cache_hits " not in text
    assert float(samples["process_resident_memory_bytes"]) > 0 and "python_info{" in text


# --- the app in process --------------------------------------------------------------------------------
@contextmanager
def captured(logger: str) -> Iterator[io.StringIO]:
    """What `logger` and its children log, as JSON lines (formatted in the logging task, as in production)."""
    out, handler, log = io.StringIO(), logging.StreamHandler(), logging.getLogger(logger)
    handler.setStream(out)
    handler.setFormatter(JsonFormatter())
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield out
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def buggy(settings: Settings) -> Service:
    """The real service, except that scoring node 13 is a bug."""
    service = build(settings)
    score = service.scorer.score

    def failing(ids: list[int], new: list[Any], as_of: float | None = None) -> Any:
        if 13 in ids:
            raise RuntimeError("bug")
        return score(ids, new, as_of)

    service.scorer.score = failing  # type: ignore[method-assign]
    return service


@pytest.fixture(scope="module")
def client(gcn: TinyBundle) -> Iterator[TestClient]:
    app = create_app(Settings(bundle=gcn.path, warmup_runs=0, max_body_bytes=1024), builder=buggy)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        deadline = time.monotonic() + 30
        while test_client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.02)
        yield test_client


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("post", "/v1/score", {"node_ids": [1]}, 200),
    ("get", "/nowhere", None, 404),
    ("post", "/v1/score", {"node_ids": [True]}, 422),
    ("post", "/v1/score", {"node_ids": list(range(400))}, 413),  # body_too_large, before routing
    ("post", "/v1/score", {"node_ids": [13]}, 500),  # a bug: answered by ServerErrorMiddleware
    ("get", "/livez", None, 200),
])
def test_every_answer_echoes_the_request_id(client: TestClient, method: str, path: str, body: Any,
                                            status: int) -> None:
    response = client.request(method, path, json=body, headers={"x-request-id": "abc-123",
                                                                 "traceparent": f"00-{TRACE}-{PARENT}-01"})
    assert response.status_code == status
    assert response.headers["x-request-id"] == "abc-123"
    version, trace, span, flags = response.headers["traceparent"].split("-")
    assert (version, trace, flags) == ("00", TRACE, "01") and span != PARENT


def test_a_generated_id_is_echoed_and_the_trace_id(client: TestClient) -> None:
    response = client.get("/livez")
    version, trace, _, flags = response.headers["traceparent"].split("-")
    assert response.headers["x-request-id"] == trace and HEX32.fullmatch(trace) and flags == "00"
    assert client.get("/livez").headers["x-request-id"] != trace


def test_one_access_line_per_request_with_id_status_latency_and_version(client: TestClient, gcn: TinyBundle) -> None:
    version = client.get("/v1/model").json()["version"]
    with captured("serve.access") as out:
        assert client.post("/v1/score", json={"node_ids": [1, 2]}, headers={"x-request-id": "r-1"}).status_code == 200
        assert client.get("/nowhere", headers={"x-request-id": "r-2"}).status_code == 404
        assert client.get("/livez").status_code == 200  # probes: only failures are logged
        assert client.get("/metrics").status_code == 200
    first, second = lines(out)
    assert {k: first[k] for k in ("request_id", "method", "path", "status", "model_version", "level")} == {
        "request_id": "r-1", "method": "POST", "path": "/v1/score", "status": 200, "model_version": version,
        "level": "INFO"}
    assert first["latency_ms"] > 0 and first["client"] == "testclient:50000" and first["trace_id"] != "r-1"
    assert (second["request_id"], second["path"], second["status"]) == ("r-2", "/nowhere", 404)


def test_a_bug_is_logged_with_its_request_id(client: TestClient) -> None:
    with captured("serve") as out:
        response = client.post("/v1/score", json={"node_ids": [13]}, headers={"x-request-id": "bug-1"})
    assert response.status_code == 500 and response.json()["error"]["code"] == "internal_error"
    logged = lines(out)
    error = next(line for line in logged if line["level"] == "ERROR")
    assert error["request_id"] == "bug-1" and "RuntimeError" in error["message"]
    access = next(line for line in logged if line["logger"] == "serve.access")
    assert (access["request_id"], access["status"]) == ("bug-1", 500)


def test_predictions_are_counted_per_class(client: TestClient, gcn: TinyBundle) -> None:
    names = client.get("/v1/model").json()["dataset"]["class_names"]

    def total() -> float:
        text = client.get("/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("serve_predictions_total{"))

    before = total()
    body = {"node_ids": [3, 4, 5], "new_nodes": [{"features": [0.0] * 8, "neighbors": [1]}]}
    labels = [r["label"] for r in client.post("/v1/score", json=body).json()["results"]]
    assert total() == before + 4 and set(labels) <= set(names)
    text = client.get("/metrics").text
    assert f'serve_predictions_total{{class="{labels[3]}",kind="new"}}' in text
    assert "serve_cache_hits_total" in text and "process_cpu_seconds_total" in text


def test_access_log_can_be_switched_off(gcn: TinyBundle) -> None:
    app = create_app(Settings(bundle=gcn.path, warmup_runs=0, access_log=False))
    with TestClient(app) as quiet, captured("serve.access") as out:
        response = quiet.get("/nowhere")
    assert response.status_code == 404 and response.headers["x-request-id"]  # ids still echoed
    assert out.getvalue() == ""


# --- a real server -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_real_server_logs_json_lines_only(gcn: TinyBundle, running_server: RunningServer) -> None:
    server = running_server(gcn.path, SERVE_WARMUP_RUNS="0")
    with server.client() as http:
        assert http.post("/v1/score", json={"node_ids": [1]}, headers={"x-request-id": "real-1"}).status_code == 200
        assert metric(http, "process_open_fds") > 0
    server.stop()
    logged = [json.loads(line) for line in server.log.read_text().splitlines() if line.strip()]  # each one JSON
    assert any(line["logger"] == "uvicorn.error" and "Started server process" in line["message"] for line in logged)
    access = [line for line in logged if line["logger"] == "serve.access"]
    scores = [line for line in access if line["path"] == "/v1/score"]
    assert [(a["request_id"], a["status"]) for a in scores] == [("real-1", 200)]
    assert scores[0]["client"].startswith("127.0.0.1:")
    # The harness polled /livez and /readyz: only /readyz's 503s (while loading) are logged, no 200 probe.
    assert {(a["path"], a["status"]) for a in access if a not in scores} <= {("/readyz", 503)}


@pytest.mark.slow
def test_text_format_on_request(gcn: TinyBundle, running_server: RunningServer) -> None:
    server = running_server(gcn.path, ready=False, SERVE_WARMUP_RUNS="0", SERVE_LOG_FORMAT="text")
    assert httpx.get(f"{server.url}/nowhere", headers={"x-request-id": "t-1"}).status_code == 404
    server.stop()
    text = server.log.read_text()
    assert re.search(r" INFO serve\.access GET /nowhere 404 method=GET .* request_id=t-1", text), text
    assert not text.lstrip().startswith("{")
