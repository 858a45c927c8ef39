"""Prometheus metrics on a registry of the app's own (not the process-global one), so several
apps in one process (tests) never collide and /metrics shows only this service. The process, platform
and GC collectors the global registry would carry are registered on it too (process_*, python_*).

Names follow Prometheus conventions: counters end in _total (prometheus_client appends it), units in
the name (_seconds, _bytes), a ratio is a gauge."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Metric,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Sub-millisecond resolution where the service lives (0.1-10 ms), coarse above.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075,
                   0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """Request counts, per-stage latency histograms, cache gauges and counters, per-class predictions,
    reloads, the served version, and the process itself."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # What prometheus_client's global REGISTRY has by default; a registry of our own starts empty.
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        PlatformCollector(registry=self.registry)  # python_info
        GCCollector(registry=self.registry)  # python_gc_*
        self.requests = Counter("serve_requests", "HTTP requests by endpoint, method and status",
                                ["endpoint", "method", "status"], registry=self.registry)
        self.request_seconds = Histogram("serve_request_seconds", "server-side request latency by endpoint",
                                         ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stage_seconds = Histogram(
            "serve_score_stage_seconds",
            "scoring latency by stage: cache (id lookup + neighbourhood blocks), "
            "inference (input packing + onnxruntime + softmax), total (whole score handler)",
            ["stage"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.scored_nodes = Counter("serve_scored_nodes", "nodes scored", ["kind"], registry=self.registry)
        reloads = Counter("serve_reloads", "hot reloads that ran (409s and 401s are only in serve_requests_total)",
                          ["result"], registry=self.registry)
        self.reloads = {result: reloads.labels(result) for result in ("success", "failure")}
        writes = Counter("serve_graph_writes", "acknowledged POST /v1/edges: requests, nodes added, directed edges "
                         "logged", ["kind"], registry=self.registry)
        self.writes = {kind: writes.labels(kind) for kind in ("requests", "nodes", "edges")}
        self.fsync_seconds = Histogram("serve_edge_log_fsync_seconds", "one fsync of the edge log (shared by the "
                                       "writes it covers)", buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("serve_requests_in_flight", "HTTP requests being handled (a scrape counts itself)",
                               registry=self.registry)
        # Children resolved once: labels() costs a lock and a dict lookup per call.
        self._stages = [self.stage_seconds.labels(stage) for stage in ("cache", "inference", "total")]
        self.scored = {kind: self.scored_nodes.labels(kind) for kind in ("existing", "new")}
        # Drift signal: a class's share of predictions moving away from its usual share. `kind` apart:
        # existing nodes' labels are fixed (their share moves only with the traffic mix), new nodes' move with inputs.
        self.predictions = Counter("serve_predictions", "predicted labels by class name and node kind",
                                   ["class", "kind"], registry=self.registry)
        self._by_class: dict[tuple[str, str], Any] = {}
        self._by_request: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def watch_cache(self, stats: Callable[[], dict[str, Any]]) -> None:
        """Read from `stats()` at scrape time (0 until the cache exists): gauges for the cache's size and
        hit ratio, `serve_cache_{hits,misses}_total` counters (reset with the cache on a reload)."""
        for key, doc in (("entries", "cached neighbourhood blocks"), ("bytes", "bytes held by cached blocks"),
                         ("budget_bytes", "cache memory budget"), ("hit_ratio", "hits / (hits + misses)")):
            gauge = Gauge(f"serve_cache_{key}", doc, registry=self.registry)
            gauge.set_function(_reader(stats, key))
        self.registry.register(_CacheCounters(stats))

    def watch_model(self, version: Callable[[], str | None]) -> None:
        """`serve_model_info{version="..."} 1` for the bundle being served (no sample until one is)."""
        self.registry.register(_ModelInfo(version))

    def observe_score(self, cache_s: float, inference_s: float, total_s: float) -> None:
        for child, seconds in zip(self._stages, (cache_s, inference_s, total_s), strict=True):
            child.observe(seconds)

    def observe_predictions(self, class_names: list[str], labels: npt.NDArray[np.int64], existing: int) -> None:
        """Count `labels` [b] (indices into `class_names`; the first `existing` are existing nodes)."""
        for kind, part in (("existing", labels[:existing]), ("new", labels[existing:])):
            if part.size == 0:
                continue
            counts = np.bincount(part, minlength=len(class_names))
            for index in np.flatnonzero(counts).tolist():
                key = (class_names[index], kind)
                child = self._by_class.get(key)
                if child is None:  # bounded: the classes of the bundles served so far x 2 kinds
                    child = self._by_class[key] = self.predictions.labels(*key)
                child.inc(int(counts[index]))

    def observe_request(self, endpoint: str, method: str, status: str, seconds: float) -> None:
        key = (endpoint, method, status)
        children = self._by_request.get(key)
        if children is None:  # bounded: endpoints are route templates or "other"
            children = self._by_request[key] = (self.requests.labels(*key), self.request_seconds.labels(endpoint))
        children[0].inc()
        children[1].observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _ModelInfo(Collector):
    """Reads the version at scrape time, so a reload needs no bookkeeping and the old label
    disappears at once (a labelled Gauge would keep it until removed)."""

    def __init__(self, version: Callable[[], str | None]) -> None:
        self.version = version

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("serve_model_info", "the served bundle's model_version", labels=["version"])
        current = self.version()
        if current is not None:
            family.add_metric([current], 1.0)
        yield family


class _CacheCounters(Collector):
    """The cache counts hits and misses itself (serve/graph.py): exposed as counters read at scrape time."""

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats()
        for key, doc in (("hits", "cache hits since the cache was built (start-up or the last reload)"),
                         ("misses", "cache misses since the cache was built (start-up or the last reload)")):
            yield CounterMetricFamily(f"serve_cache_{key}", doc, value=float(stats.get(key, 0)))


def _reader(stats: Callable[[], dict[str, Any]], key: str) -> Callable[[], float]:
    return lambda: float(stats().get(key, 0.0))


class MetricsMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware, which adds a task hop per request): counts every request
    by route template (unknown paths share one label, so scanners cannot blow up cardinality)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, paths: frozenset[str]) -> None:
        self.app, self.metrics, self.paths = app, metrics, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app dies before sending a start message

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            # Requests rejected before routing (e.g. body too large) have no route: use the path
            # when it is one of ours.
            path = str(getattr(scope.get("route"), "path", scope["path"]))
            endpoint = path if path in self.paths else "other"
            self.metrics.observe_request(endpoint, scope["method"], str(status), time.perf_counter() - started)
