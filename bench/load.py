"""Load test: a real server subprocess from a bundle, locust headless against it, a verdict.

    python bench/load.py --bundle /tmp/cora --users 20 --duration 60 [--json out.json] [--p99-ms 10]

Starts `python -m serve` on a free port, waits for /readyz, runs locust (bench/locustfile.py) as a
subprocess, then prints p50/p95/p99, requests/s and failures per endpoint and overall, and the ratio
of the score median to the /livez median (what scoring adds over the bare HTTP stack). With
`taskset` available, server and locust are pinned to different cores so they do not steal each
other's CPU. Exits 1 when the score p99 exceeds --p99-ms or any request failed.

Percentiles come from locust's raw per-request times (BENCH_SAMPLES, float ms); locust's --csv
stats supply counts, failures and requests/s (and percentiles when no samples were written).

Typed bundles (a meta-path bundle of `distill run --dataset synthetic-hetero | acm:PATH`):

    python bench/load.py --bundle /tmp/hb --typed-weight 20 --users 20 --duration 60

adds new nodes sent with typed `links` (row "score:typed", weight 20 beside the default mix's 100).

Hot reloads under load:

    python bench/load.py --bundle /tmp/cora --reload-bundles /tmp/cora_s1 --reload-every 15 --duration 60

starts the server with a random SERVE_ADMIN_TOKEN and, from the first score request on, POSTs
/admin/reload every --reload-every seconds, cycling through the given bundles and then --bundle
again (at least 3 reloads: --duration must exceed 3 x --reload-every). Per reload it prints the
status, the time it took, the version /v1/model reports afterwards and how many score responses
carried the new version after the swap (from the locustfile's BENCH_VERSIONS record). Exits 1 on
any failed request or any reload that did not switch what clients see.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from reloads import Reloader, attribute, print_reloads, reload_latency, reload_plan  # bench/, next to this file

ROOT = Path(__file__).resolve().parents[1]
SCORE = "score (all)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    """Resident memory of process `pid` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def pinned(cmd: list[str], cores: str | None) -> list[str]:
    """Prefix `cmd` with taskset when asked for and possible."""
    if not cores or shutil.which("taskset") is None:
        return cmd
    wanted = {int(c) for c in cores.split(",")}
    if not wanted <= os.sched_getaffinity(0):
        print(f"note: cores {cores} not available, not pinning", file=sys.stderr)
        return cmd
    return ["taskset", "-c", cores, *cmd]


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise SystemExit(f"server exited with code {process.returncode} before becoming ready")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"server not ready after {timeout:.0f}s")


def read_csv(prefix: Path) -> dict[str, dict[str, float]]:
    """locust's <prefix>_stats.csv -> {name: {count, failures, rps, p50_ms, p95_ms, p99_ms}}."""
    out = {}
    with open(f"{prefix}_stats.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            out[row["Name"]] = {
                "count": int(row["Request Count"]), "failures": int(row["Failure Count"]),
                "rps": float(row["Requests/s"]), "p50_ms": float(row["50%"]), "p95_ms": float(row["95%"]),
                "p99_ms": float(row["99%"]),
            }
    return out


def summarise(stats: dict[str, dict[str, float]], samples: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """Per endpoint + the score endpoints together + overall, percentiles from raw samples when present."""
    rows: dict[str, dict[str, Any]] = {}
    groups = {name: [name] for name in stats if name != "Aggregated"}
    groups[SCORE] = [n for n in groups if n.startswith("score:")]
    groups["overall"] = [n for n in stats if n != "Aggregated"]
    for label, names in groups.items():
        times = np.concatenate([np.asarray(samples.get(n, []), dtype=np.float64) for n in names] or [np.empty(0)])
        row: dict[str, Any] = {
            "count": int(sum(stats[n]["count"] for n in names)),
            "failures": int(sum(stats[n]["failures"] for n in names)),
            "rps": round(sum(stats[n]["rps"] for n in names), 2),
        }
        if len(times):
            p50, p95, p99 = np.percentile(times, [50, 95, 99])
            row.update(p50_ms=round(float(p50), 3), p95_ms=round(float(p95), 3), p99_ms=round(float(p99), 3),
                       source="samples")
        else:  # no raw samples: locust's whole-ms percentiles; a group takes its worst member's
            members = ["Aggregated"] if label == "overall" else names
            row.update({k: max((stats[n][k] for n in members), default=float("nan"))
                        for k in ("p50_ms", "p95_ms", "p99_ms")}, source="csv")
        rows[label] = row
    return rows


def print_table(rows: dict[str, dict[str, Any]]) -> None:
    print(f"{'endpoint':<16} {'requests':>9} {'fail':>5} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for name, r in rows.items():
        print(f"{name:<16} {r['count']:>9} {r['failures']:>5} {r['rps']:>8.1f} {r['p50_ms']:>8.3f} "
              f"{r['p95_ms']:>8.3f} {r['p99_ms']:>8.3f}")


def scrape(url: str) -> dict[str, float]:
    """Every sample of the server's /metrics, keyed by its name with labels."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def _labels(key: str) -> tuple[str, dict[str, str]]:
    """'name{a="x",b="y"}' -> ('name', {'a': 'x', 'b': 'y'}) (our label values hold no commas)."""
    name, _, rest = key.partition("{")
    pairs = (p.split("=", 1) for p in rest.rstrip("}").split(",") if "=" in p)
    return name, {k: v.strip('"') for k, v in pairs}


def histogram_quantile(q: float, metrics: dict[str, float], series: str, labels: dict[str, str]) -> float:
    """Prometheus-style quantile (linear within a bucket) of one histogram series, in ms."""
    buckets = []
    for key, count in metrics.items():
        name, found = _labels(key)
        if name == f"{series}_bucket" and {k: v for k, v in found.items() if k != "le"} == labels:
            buckets.append((float(found["le"]), count))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    rank, lower, below = q * buckets[-1][1], 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower * 1e3
            return (lower + (upper - lower) * (rank - below) / max(count - below, 1e-12)) * 1e3
        lower, below = upper, count
    return float("nan")


def server_side(metrics: dict[str, float]) -> dict[str, float]:
    """Server-measured p50/p99 (ms) of the whole request and of the scoring stages."""
    out = {}
    for name, series, labels in (("request /v1/score", "serve_request_seconds", {"endpoint": "/v1/score"}),
                                 ("request /livez", "serve_request_seconds", {"endpoint": "/livez"}),
                                 ("stage cache", "serve_score_stage_seconds", {"stage": "cache"}),
                                 ("stage inference", "serve_score_stage_seconds", {"stage": "inference"}),
                                 ("stage total", "serve_score_stage_seconds", {"stage": "total"})):
        for q in (0.5, 0.99):
            out[f"{name} p{int(q * 100)}_ms"] = round(histogram_quantile(q, metrics, series, labels), 3)
    return out


def run_locust(args: argparse.Namespace, url: str, work: Path) -> tuple[Path, Path]:
    prefix, samples = work / "locust", work / "samples.json"
    env = {**os.environ, "BENCH_BUNDLE": str(args.bundle), "BENCH_SAMPLES": str(samples),
           "BENCH_VERSIONS": str(work / "versions.json"), "BENCH_WAIT_MS": str(args.wait_ms),
           "BENCH_TYPED_WEIGHT": str(args.typed_weight)}
    cmd = pinned([sys.executable, "-m", "locust", "-f", str(ROOT / "bench" / "locustfile.py"), "--headless",
                  "--users", str(args.users), "--spawn-rate", str(args.spawn_rate or args.users),
                  "--run-time", f"{args.duration}s", "--host", url, "--csv", str(prefix), "--reset-stats",
                  "--only-summary", "--loglevel", "WARNING", "--exit-code-on-error", "0"], args.locust_cores)
    log = work / "locust.log"
    with log.open("wb") as fh:
        code = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=args.duration + 120).returncode
    if code != 0 or not Path(f"{prefix}_stats.csv").exists():
        raise SystemExit(f"locust failed (exit {code}):\n{log.read_text()[-3000:]}")
    return prefix, samples


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--spawn-rate", type=float, default=0, help="users started per second (default: all at once)")
    p.add_argument("--duration", type=int, default=60, help="seconds of measured load")
    p.add_argument("--wait-ms", type=float, default=100.0, help="mean exponential wait between a user's requests")
    p.add_argument("--p99-ms", type=float, default=10.0, help="fail when the score p99 exceeds this")
    p.add_argument("--json", type=Path, help="write the summary here")
    p.add_argument("--server-cores", default="0", help="taskset cores for the server ('' = no pinning)")
    p.add_argument("--locust-cores", default="1", help="taskset cores for locust ('' = no pinning)")
    p.add_argument("--ready-timeout", type=float, default=600.0)
    p.add_argument("--reload-bundles", type=lambda v: [Path(b) for b in v.split(",") if b], default=[],
                   metavar="DIR[,DIR...]", help="hot-reload these bundles (then --bundle again) during the run")
    p.add_argument("--reload-every", type=float, default=15.0, metavar="SECONDS")
    p.add_argument("--typed-weight", type=int, default=0, metavar="W",
                   help="typed bundles: weight of new nodes sent with `links` (the default mix weighs 100)")
    args = p.parse_args(argv)
    if args.reload_bundles and math.ceil(args.duration / args.reload_every) - 1 < 3:
        p.error("--reload-bundles needs at least 3 reloads: make --duration larger than 3 x --reload-every")
    for bundle in [args.bundle, *args.reload_bundles]:
        if not (bundle / "manifest.json").is_file():
            p.error(f"{bundle} is not a bundle (no manifest.json)")
    if args.typed_weight < 0 or (args.typed_weight and "typed" not in json.loads(
            (args.bundle / "manifest.json").read_text())["graph"]):
        p.error(f"--typed-weight {args.typed_weight}: needs a weight >= 0 and a typed bundle (graph.typed in its "
                "manifest: distill run --dataset synthetic-hetero or acm:PATH); drop it for other bundles")
    return args


def start_server(args: argparse.Namespace, port: int, log: Path, token: str | None) -> subprocess.Popen[bytes]:
    # SERVE_* in the environment (e.g. SERVE_CACHE_BUDGET_MB) reach the server; CLI flags win.
    env = {**os.environ, **({"SERVE_ADMIN_TOKEN": token} if token else {})}
    with log.open("wb") as fh:
        return subprocess.Popen(pinned([sys.executable, "-m", "serve", "--bundle", str(args.bundle), "--port",
                                        str(port)], args.server_cores), cwd=ROOT, stdout=fh,
                                stderr=subprocess.STDOUT, env=env)


def stop_server(server: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM and wait: the service drains and exits 0 (None: it had to be killed)."""
    server.terminate()
    try:
        return server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
        return None


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Server + locust (+ reloader) -> raw results: rows, metrics, versions, reloads, server exit code."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    token = secrets.token_urlsafe(32) if args.reload_bundles else None
    server = start_server(args, port, work / "server.log", token)
    plan = reload_plan(args.bundle, args.reload_bundles, math.ceil(args.duration / args.reload_every) - 1)
    reloader = Reloader(url, token, plan, args.reload_every) if token else None
    try:
        ready_s = wait_ready(url, server, args.ready_timeout)
        print(f"server ready in {ready_s:.1f}s at {url}; locust: {args.users} users, {args.duration}s, "
              f"mean wait {args.wait_ms:.0f} ms" + (f"; {len(reloader.plan)} reloads, one every "
                                                     f"{args.reload_every:g}s" if reloader else ""))
        if reloader:
            reloader.start()
        prefix, samples_file = run_locust(args, url, work)
        if reloader:
            reloader.stop.set()
            reloader.join()
        metrics = scrape(url)
    finally:
        exit_code = stop_server(server)
    samples = json.loads(samples_file.read_text()) if samples_file.exists() else {}
    versions_file = work / "versions.json"
    versions = json.loads(versions_file.read_text()) if versions_file.exists() else {}
    return {"rows": summarise(read_csv(prefix), samples), "metrics": metrics, "versions": versions,
            "reloads": reloader.done if reloader else [], "planned": len(reloader.plan) if reloader else 0,
            "exit_code": exit_code}


def report(args: argparse.Namespace, rows: dict[str, dict[str, Any]], metrics: dict[str, float]) -> dict[str, Any]:
    """Print the latency table and the server-side view -> the JSON summary."""
    print_table(rows)
    livez, score = rows.get("livez"), rows[SCORE]
    ratio = score["p50_ms"] / livez["p50_ms"] if livez and livez["p50_ms"] else float("nan")
    cache = {k: v for k, v in metrics.items() if k.startswith("serve_cache_")}
    server = server_side(metrics)
    print(f"\nscore p50 / livez p50 = {ratio:.2f}; cache hit ratio {cache.get('serve_cache_hit_ratio', 0):.3f}, "
          f"{int(cache.get('serve_cache_entries', 0))} blocks cached")
    print("server-side (from /metrics histograms, interpolated within buckets): "
          + ", ".join(f"{k} {v:.3f}" for k, v in server.items()))
    return {**{k: rows["overall"][k] for k in ("p50_ms", "p95_ms", "p99_ms", "rps", "failures")},
            "endpoints": rows, "score_livez_p50_ratio": round(ratio, 3), "cache": cache,
            "server_side_ms": server,
            "config": {"bundle": str(args.bundle), "users": args.users, "duration_s": args.duration,
                       "wait_ms": args.wait_ms, "p99_budget_ms": args.p99_ms,
                       "reload_bundles": [str(b) for b in args.reload_bundles],
                       "reload_every_s": args.reload_every if args.reload_bundles else None,
                       "typed_weight": args.typed_weight}}


def verdict(args: argparse.Namespace, result: dict[str, Any], summary: dict[str, Any]) -> int:
    rows, reloads = result["rows"], result["reloads"]
    problems = []
    if rows["overall"]["failures"] > 0:
        problems.append(f"{rows['overall']['failures']} failed requests")
    if rows[SCORE]["p99_ms"] > args.p99_ms:
        problems.append(f"score p99 {rows[SCORE]['p99_ms']:.3f} ms over the {args.p99_ms} ms budget")
    if len(reloads) < result["planned"]:
        problems.append(f"only {len(reloads)} of {result['planned']} reloads ran")
    if any(not r.switched for r in reloads):
        problems.append(f"{sum(not r.switched for r in reloads)} reload(s) did not switch")
    if result["exit_code"] != 0:
        problems.append(f"server exit code {result['exit_code']} after SIGTERM (expected 0)")
    summary["server_exit_code"] = result["exit_code"]
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    if problems:
        print("FAIL: " + "; ".join(problems))
        return 1
    print(f"PASS: score p99 {rows[SCORE]['p99_ms']:.3f} ms <= {args.p99_ms} ms, no failures"
          + (f", {len(reloads)} reloads switched" if reloads else "") + ", server exited 0 on SIGTERM")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="load-") as tmp:
        result = measure(args, Path(tmp))
    summary = report(args, result["rows"], result["metrics"])
    if result["planned"]:
        attribute(result["reloads"], result["versions"])
        latency = reload_latency(result["reloads"], result["versions"])
        print_reloads(result["reloads"], result["versions"], latency)
        summary["reloads"] = [vars(r) | {"switched": r.switched} for r in result["reloads"]]
        summary["reload_latency"] = latency
    return verdict(args, result, summary)


if __name__ == "__main__":
    sys.exit(main())
