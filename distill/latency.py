"""Latency of the service's scoring path, for `distill select`: in-process through serve's own
scorer (one node per call, and batches), and optionally over HTTP against a real `python -m serve`."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distill.errors import DistillError
from serve.runtime import Service, warm_up

BATCH = 16
WARMUP_CALLS = 50


@dataclass(frozen=True)
class Percentiles:
    p50_ms: float
    p99_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> Percentiles:
        return cls(round(float(np.percentile(seconds, 50)) * 1e3, 4), round(float(np.percentile(seconds, 99)) * 1e3, 4))


@dataclass(frozen=True)
class Timing:
    """Served path per call: one node, a batch of BATCH nodes, and (optionally) one node over HTTP."""

    single: Percentiles
    batch: Percentiles
    http: Percentiles | None = None

    @property
    def budgeted(self) -> Percentiles:
        """What the budget applies to: HTTP when measured, else the in-process single-node call."""
        return self.http if self.http is not None else self.single

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_service(service: Service, calls: int, seed: int) -> Timing:
    """Time `calls` single-node and calls // 4 batched scoring calls on random existing nodes, after
    the service's own warm-up. Each call is the whole in-process path: lookup, cached block,
    feature gather, onnxruntime, softmax."""
    scorer = service.scorer
    warm_up(scorer, WARMUP_CALLS)
    ids = scorer.store.node_ids
    rng = np.random.default_rng(seed)
    single = [_timed(scorer.score, [i.item()]) for i in rng.choice(ids, size=calls)]
    batch = [_timed(scorer.score, rng.choice(ids, size=BATCH).tolist()) for _ in range(max(calls // 4, 1))]
    return Timing(Percentiles.of(single), Percentiles.of(batch))


def _timed(score: Any, ids: list[int] | list[str]) -> float:
    start = time.perf_counter()
    score(ids)
    return time.perf_counter() - start


def time_http(root: Path, ids: np.ndarray, calls: int, seed: int, timeout_s: float = 120.0) -> Percentiles:
    """Serve the bundle at `root` with `python -m serve` on a free loopback port and time `calls`
    single-node POST /v1/score requests (random ids of `ids`, its node ids) over one keep-alive connection."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVE_")}
    proc = subprocess.Popen([sys.executable, "-m", "serve", "--bundle", str(root), "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        _wait_ready(conn, proc, timeout_s)
        rng = np.random.default_rng(seed)
        bodies = [json.dumps({"node_ids": [i.item()]}) for i in rng.choice(ids, size=calls + WARMUP_CALLS)]
        times = [_post(conn, body) for body in bodies][WARMUP_CALLS:]
        return Percentiles.of(times)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _post(conn: http.client.HTTPConnection, body: str) -> float:
    start = time.perf_counter()
    conn.request("POST", "/v1/score", body, {"content-type": "application/json"})
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        raise DistillError(f"the HTTP latency run got status {response.status} from the service")
    return time.perf_counter() - start


def _wait_ready(conn: http.client.HTTPConnection, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DistillError(f"python -m serve exited with {proc.returncode} during the HTTP latency run")
        try:
            conn.request("GET", "/readyz")
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                return
        except OSError:
            conn.close()
        time.sleep(0.1)
    raise DistillError(f"python -m serve was not ready within {timeout_s}s for the HTTP latency run")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
