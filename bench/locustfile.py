"""Locust load for the scoring service: a weighted mix of what clients send, ids from the bundle.

    BENCH_BUNDLE=/tmp/cora locust -f bench/locustfile.py --host http://127.0.0.1:8000

Mix (weights): single-node scores 60, batches of 2-8 nodes 15, new nodes 10, /livez 15 (the floor:
what the HTTP stack alone costs). Node ids are drawn uniformly from graph/node_ids.npy, the worst case
for the neighbourhood cache; they go out in the bundle's kind (JSON integers, or strings for a bundle
of string ids: its <U array loads without pickles and lists as str). Waits are exponential (a
Poisson arrival process per user, mean BENCH_WAIT_MS, default 100 ms), so users never fire in
synchronised bursts.

BENCH_SAMPLES=FILE makes the run write every response time (float ms, by request name) to FILE at
exit: locust's own percentiles are rounded to whole milliseconds, too coarse for a 10 ms budget.

BENCH_WRITE_TOKEN=TOKEN adds graph writes (POST /v1/edges, one undirected edge between two random
nodes, timed now) at weight 11: 9.9 % of requests (bench/writes.py); without it there are none.

A temporal bundle (policy `temporal_recent`) takes no new nodes: its mix drops them (weights 60 /
15 / 0 / 15, writes 11 of 101), and its writes are directed ratings, a random integer within the
manifest's rating range.

BENCH_TYPED_WEIGHT=W (a typed bundle only: `graph.typed` in its manifest; bench/load.py --typed-weight)
adds typed new nodes at weight W, "score:typed": a random node's jittered features with `links`, 1-3
random nodes of each via type (ACM: authors; synthetic-hetero: a user and a device) and one of each
type the student ignores (ACM: a subject), expanded by the service to meta-path neighbours.

BENCH_VERSIONS=FILE makes it write, at exit, the `model_version` of every successful score response
with its arrival time (unix seconds) and response time (ms), from the first request on (not reset
after the ramp-up): bench/load.py --reload-bundles uses it to prove that responses switched
models. A response whose results carry another version than the response itself is a failure.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from locust import FastHttpUser, events, task

BUNDLE = Path(os.environ.get("BENCH_BUNDLE", "out/demo"))
MEAN_WAIT_S = float(os.environ.get("BENCH_WAIT_MS", "100")) / 1000.0
SAMPLES = os.environ.get("BENCH_SAMPLES")
VERSIONS = os.environ.get("BENCH_VERSIONS")
WRITE_TOKEN = os.environ.get("BENCH_WRITE_TOKEN")
WRITE_WEIGHT = 11 if WRITE_TOKEN else 0  # 11 of 111: ~10 % of requests

_manifest = json.loads((BUNDLE / "manifest.json").read_text())
TEMPORAL = _manifest["policy"].get("name") == "temporal_recent"
NODE_IDS: list[int | str] = np.load(BUNDLE / _manifest["graph"]["node_ids"], allow_pickle=False).tolist()
_features = None if TEMPORAL else np.load(BUNDLE / _manifest["graph"]["features"], allow_pickle=False, mmap_mode="r")
NEW_WEIGHT = 0 if TEMPORAL else 10
TYPES: dict[str, Any] | None = _manifest["graph"].get("typed")
TYPED_WEIGHT = int(os.environ.get("BENCH_TYPED_WEIGHT", "0"))
if TYPED_WEIGHT and TYPES is None:
    raise SystemExit(f"BENCH_TYPED_WEIGHT={TYPED_WEIGHT}: {BUNDLE} is not a typed bundle (no graph.typed)")
# type -> (its external ids, how many a typed node links to at most): via types 3, ignored types 1.
_link_ids: dict[str, tuple[list[int | str], int]] = {} if TYPES is None else {
    t["name"]: (np.load(BUNDLE / t["node_ids"], allow_pickle=False).tolist() if t.get("node_ids")
                else list(range(t["num_nodes"])), 3 if t["used"] else 1)
    for t in TYPES["node_types"] if t["name"] != TYPES["target"]}
_samples: dict[str, list[float]] = defaultdict(list)
_version_index: dict[str, int] = {}  # version -> its index in the dump (one short int per event)
_version_events: list[tuple[float, int, float]] = []  # (unix time received, version index, ms)


@events.request.add_listener
def _record(name: str, response_time: float, exception: Any, **_: Any) -> None:
    if exception is None:
        _samples[name].append(response_time)


@events.spawning_complete.add_listener
def _reset(**_: Any) -> None:
    _samples.clear()  # same moment as locust's --reset-stats: drop the ramp-up


@events.quitting.add_listener
def _dump(**_: Any) -> None:
    if SAMPLES:
        Path(SAMPLES).write_text(json.dumps(_samples))
    if VERSIONS:
        Path(VERSIONS).write_text(json.dumps({"versions": list(_version_index), "events": _version_events}))


def _seen(version: str, response_ms: float) -> None:
    index = _version_index.setdefault(version, len(_version_index))
    _version_events.append((time.time(), index, response_ms))


def _new_node() -> dict[str, Any]:
    """A plausible unseen node: a random node's features, jittered, linked to 1-5 existing nodes."""
    assert _features is not None  # never called for a temporal bundle (NEW_WEIGHT 0)
    donor = np.asarray(_features[random.randrange(len(NODE_IDS))], dtype=np.float64)
    jitter = np.random.default_rng().normal(0.0, 0.05, donor.shape) * (np.abs(donor) + 1e-3)
    return {"features": (donor + jitter).tolist(), "neighbors": random.sample(NODE_IDS, random.randint(1, 5))}


def _typed_node() -> dict[str, Any]:
    """A new target node with its typed links instead of `neighbors` (BENCH_TYPED_WEIGHT)."""
    node = _new_node()
    del node["neighbors"]
    node["links"] = {name: random.sample(keys, random.randint(1, min(most, len(keys))))
                     for name, (keys, most) in _link_ids.items()}
    return node


class ScoringClient(FastHttpUser):
    def wait_time(self) -> float:
        return random.expovariate(1.0 / MEAN_WAIT_S)

    def _score(self, body: dict[str, Any], name: str, expected: int) -> None:
        started = time.perf_counter()
        with self.client.post("/v1/score", json=body, name=name, catch_response=True) as response:
            elapsed_ms = (time.perf_counter() - started) * 1e3
            if response.status_code != 200:
                response.failure(f"status {response.status_code}: {response.text[:200]}")
                return
            payload = response.json()
            results = payload.get("results", [])
            if len(results) != expected:
                response.failure("wrong number of results")
            elif {r.get("model_version") for r in results} != {payload.get("model_version")}:
                response.failure("results of one response carry different model versions")
            else:
                _seen(str(payload["model_version"]), elapsed_ms)

    @task(60)
    def score_single(self) -> None:
        self._score({"node_ids": [random.choice(NODE_IDS)]}, "score:single", 1)

    @task(15)
    def score_batch(self) -> None:
        size = random.randint(2, 8)
        self._score({"node_ids": random.choices(NODE_IDS, k=size)}, "score:batch", size)

    @task(NEW_WEIGHT)
    def score_new(self) -> None:
        self._score({"new_nodes": [_new_node()]}, "score:new", 1)

    @task(TYPED_WEIGHT)
    def score_typed(self) -> None:
        self._score({"new_nodes": [_typed_node()]}, "score:typed", 1)

    @task(WRITE_WEIGHT)
    def write_edge(self) -> None:
        src, dst = random.sample(NODE_IDS, 2)
        body: dict[str, Any] = {"edges": [{"src": src, "dst": dst, "time": time.time()}]}
        if TEMPORAL:
            policy = _manifest["policy"]
            body["edges"][0]["weight"] = float(random.randint(int(policy["rating_min"]), int(policy["rating_max"])))
        with self.client.post("/v1/edges", json=body, name="write", catch_response=True,
                              headers={"Authorization": f"Bearer {WRITE_TOKEN}"}) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}: {response.text[:200]}")

    @task(15)
    def livez(self) -> None:
        self.client.get("/livez", name="livez")
