"""Hot reloads during a load run (bench/load.py --reload-bundles): the reloader thread, and the
check that clients really saw each new model (from the locustfile's BENCH_VERSIONS record).

A reload *switched* when POST /admin/reload answered 200, /v1/model reported the bundle's version
right after, and at least one score response carried that version after the swap. Responses
with another version more than STALE_S after the swap are counted as stale (requests in flight at
the swap legitimately finish on the old model, but they take milliseconds, not a second).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

STALE_S = 1.0


def version_of(bundle: Path) -> str:
    return str(json.loads((bundle / "manifest.json").read_text())["version"])


def http_json(url: str, token: str | None = None, body: dict[str, Any] | None = None,
              timeout: float = 120.0) -> tuple[int, dict[str, Any]]:
    """GET (or POST `body`) -> (status, JSON body); HTTP errors are returned, not raised."""
    headers = {"content-type": "application/json"} | ({"authorization": f"Bearer {token}"} if token else {})
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@dataclass
class Reload:
    """One POST /admin/reload and what clients saw after it."""

    bundle: str
    expected: str  # the bundle's manifest version
    previous: str  # the version that should have been served before
    status: int = 0
    seconds: float = float("nan")  # client-side: POST sent -> response received
    server_seconds: float | None = None  # the service's own verify + build + warm-up + swap
    model_after: str | None = None  # /v1/model's version right after the response
    done_at: float = float("nan")  # unix time the response arrived
    error: str | None = None
    seen_after: int = 0  # score responses with `expected` after done_at (until the next reload is sent)
    stale_after: int = 0  # score responses with another version > STALE_S after done_at

    @property
    def switched(self) -> bool:
        return self.status == 200 and self.model_after == self.expected and self.seen_after > 0


class Reloader(threading.Thread):
    """Reloads on a schedule that starts with the first score request the server counts.
    `plan`: (bundle, expected version, previous version) per reload."""

    def __init__(self, url: str, token: str, plan: list[tuple[Path, str, str]], every: float) -> None:
        super().__init__(name="reloader", daemon=True)
        self.url, self.token, self.plan, self.every = url, token, plan, every
        self.stop = threading.Event()
        self.done: list[Reload] = []

    def run(self) -> None:
        if not self._wait_for_traffic(timeout=120.0):
            return
        start = time.monotonic()
        for k, (bundle, expected, previous) in enumerate(self.plan, 1):
            if self.stop.wait(max(0.0, start + k * self.every - time.monotonic())):
                return
            self.done.append(self._reload(bundle, expected, previous))

    def _wait_for_traffic(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.stop.is_set() and time.monotonic() < deadline:
            with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as r:
                if b'serve_requests_total{endpoint="/v1/score"' in r.read():
                    return True
            time.sleep(0.2)
        return False

    def _reload(self, bundle: Path, expected: str, previous: str) -> Reload:
        record = Reload(str(bundle), expected, previous)
        started = time.perf_counter()
        record.status, body = http_json(f"{self.url}/admin/reload", self.token, {"bundle": str(bundle)})
        record.seconds, record.done_at = time.perf_counter() - started, time.time()
        record.server_seconds = body.get("seconds")
        record.error = None if record.status == 200 else json.dumps(body.get("error"))[:300]
        record.model_after = http_json(f"{self.url}/v1/model")[1].get("version")
        return record


def reload_plan(original: Path, bundles: list[Path], count: int) -> list[tuple[Path, str, str]]:
    """`count` reloads: the given bundles, then the original, again and again ->
    (bundle, its version, the version served before) each."""
    cycle = [*bundles, original]
    versions = {b: version_of(b) for b in cycle}
    previous = versions[original]
    plan: list[tuple[Path, str, str]] = []
    for k in range(count):
        bundle = cycle[k % len(cycle)]
        plan.append((bundle, versions[bundle], previous))
        previous = versions[bundle]
    return plan


def attribute(reloads: list[Reload], versions: dict[str, Any]) -> None:
    """Fill seen_after / stale_after of each reload from the locust version record."""
    names = versions.get("versions", [])
    events = [(t, names[i]) for t, i, _ in versions.get("events", [])]
    for k, r in enumerate(reloads):
        # Until the next reload was *sent*: its swap lands before its response does, and responses
        # with its version in between are not stale ones of this reload.
        end = reloads[k + 1].done_at - reloads[k + 1].seconds if k + 1 < len(reloads) else float("inf")
        after = [v for t, v in events if r.done_at <= t < end]
        r.seen_after = sum(v == r.expected for v in after)
        r.stale_after = sum(v != r.expected for t, v in events if r.done_at + STALE_S <= t < end)


def reload_latency(reloads: list[Reload], versions: dict[str, Any]) -> dict[str, float]:
    """Client-side score p99 (ms) of responses that arrived while a reload ran (+ STALE_S) vs the rest."""
    windows = [(r.done_at - r.seconds, r.done_at + STALE_S) for r in reloads if r.status == 200]
    inside: list[float] = []
    outside: list[float] = []
    for t, _, ms in versions.get("events", []):
        (inside if any(a <= t <= b for a, b in windows) else outside).append(ms)
    return {name: round(float(np.percentile(ms, 99)), 3) if ms else float("nan")
            for name, ms in (("p99_ms_during_reloads", inside), ("p99_ms_otherwise", outside))} | {
        "responses_during_reloads": len(inside)}


def print_reloads(reloads: list[Reload], versions: dict[str, Any], latency: dict[str, float]) -> None:
    print(f"\n{'#':>2} {'bundle':<18} {'status':>6} {'client s':>8} {'server s':>8}  {'/v1/model after':<24} "
          f"{'new seen':>8} {'stale':>5}  switched")
    for k, r in enumerate(reloads, 1):
        server_s = f"{r.server_seconds:.3f}" if r.server_seconds is not None else "-"
        print(f"{k:>2} {Path(r.bundle).name:<18} {r.status:>6} {r.seconds:>8.3f} {server_s:>8}  "
              f"{r.model_after or '-':<24} {r.seen_after:>8} {r.stale_after:>5}  "
              f"{'yes' if r.switched else 'NO'} ({r.previous} -> {r.expected}){' ' + r.error if r.error else ''}")
    counts: dict[str, int] = {}
    for _, i, _ in versions.get("events", []):
        counts[versions["versions"][i]] = counts.get(versions["versions"][i], 0) + 1
    print("score responses by model_version: " + ", ".join(f"{v} {n}" for v, n in counts.items()))
    print(f"client score p99 while a reload ran (+{STALE_S:.0f} s): {latency['p99_ms_during_reloads']:.3f} ms over "
          f"{latency['responses_during_reloads']} responses; otherwise {latency['p99_ms_otherwise']:.3f} ms")
