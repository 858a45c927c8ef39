"""Graph writes under load, and a crash: does the service keep every acknowledged write?

    python bench/writes.py --bundle /tmp/edges-bundle --users 20 --duration 60 [--json out.json]

1. Load: `python -m serve` with SERVE_EDGE_LOG, locust (bench/locustfile.py with BENCH_WRITE_TOKEN:
   9.9 % of requests are POST /v1/edges, the rest the usual score / new-node / livez mix) for
   --duration seconds. Prints p50/p95/p99 per endpoint, failures, writes/s and fsyncs/s (group
   commit: fewer fsyncs than writes when writes overlap).
2. Crash: a fresh log; --writers threads write edges (and every tenth write a new node) while
   --scorers threads score, and after --crash-after seconds the server gets SIGKILL mid-run. It is
   restarted on the same log; every acknowledged write must be in the replayed log (counted, and its
   content compared). A reference server that never crashed is then given the same writes, in log
   order, and every node's scores of the two must be equal.

Exits 1 when the score p99 exceeds --p99-ms, any load request failed, an acknowledged write is
missing, or the scores differ.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from load import (
    ROOT,
    SCORE,
    free_port,
    histogram_quantile,
    pinned,
    print_table,
    read_csv,
    run_locust,
    scrape,
    server_side,
    summarise,
    wait_ready,
)

sys.path.insert(0, str(ROOT))
from bundle.edge_log import Entry, decode, scan  # noqa: E402  (the repository root, after bench/)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--spawn-rate", type=float, default=0)
    p.add_argument("--duration", type=int, default=60, help="seconds of measured load")
    p.add_argument("--wait-ms", type=float, default=100.0)
    p.add_argument("--p99-ms", type=float, default=10.0)
    p.add_argument("--writers", type=int, default=8, help="crash phase: writing threads")
    p.add_argument("--scorers", type=int, default=4, help="crash phase: scoring threads")
    p.add_argument("--crash-after", type=float, default=5.0, help="crash phase: seconds of writes before SIGKILL")
    p.add_argument("--server-cores", default="0")
    p.add_argument("--locust-cores", default="1")
    p.add_argument("--ready-timeout", type=float, default=600.0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if not (args.bundle / "manifest.json").is_file():
        p.error(f"--bundle {args.bundle} is not a bundle (no manifest.json); build one with `distill run`")
    return args


class Server:
    """A `python -m serve` subprocess with graph writes on."""

    def __init__(self, args: argparse.Namespace, log: Path, token: str, out: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "SERVE_EDGE_LOG": str(log), "SERVE_WRITE_TOKEN": token, "SERVE_ACCESS_LOG": "false"}
        with out.open("ab") as fh:
            self.process = subprocess.Popen(pinned([sys.executable, "-m", "serve", "--bundle", str(args.bundle),
                                                    "--port", str(self.port)], args.server_cores),
                                            cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env)
        wait_ready(self.url, self.process, args.ready_timeout)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def load_phase(args: argparse.Namespace, work: Path, token: str) -> dict[str, Any]:
    server = Server(args, work / "load.log", token, work / "server-load.out")
    os.environ["BENCH_WRITE_TOKEN"] = token  # read by the locustfile (run_locust passes the environment on)
    try:
        started = time.monotonic()
        prefix, samples = run_locust(args, server.url, work)
        elapsed = time.monotonic() - started
        graph = httpx.get(f"{server.url}/v1/graph").json()
        metrics = scrape(server.url)
    finally:
        os.environ.pop("BENCH_WRITE_TOKEN", None)
        server.stop()
    rows = summarise(read_csv(prefix), json.loads(samples.read_text()) if samples.exists() else {})
    print_table(rows)
    writes = rows.get("write", {})
    summary = {"score_p50_ms": rows[SCORE]["p50_ms"], "score_p99_ms": rows[SCORE]["p99_ms"],
               "failures": rows["overall"]["failures"], "writes_per_s": writes.get("rps", 0.0),
               "write_p99_ms": writes.get("p99_ms"), "acknowledged_writes": graph["sequence"],
               "fsyncs": graph["fsyncs"], "fsyncs_per_s": round(graph["fsyncs"] / elapsed, 1),
               "write_share": round(writes.get("count", 0) / max(rows["overall"]["count"], 1), 3),
               "server_side_ms": {**server_side(metrics), **write_side(metrics)}}
    print(f"\nwrites: {summary['writes_per_s']:.1f}/s acknowledged ({graph['sequence']} in the log), "
          f"{summary['fsyncs_per_s']:.1f} fsyncs/s ({graph['fsyncs']} over {elapsed:.0f}s, locust start to end), "
          f"{summary['write_share']:.1%} of requests")
    print("server-side (from /metrics histograms, interpolated within buckets): "
          + ", ".join(f"{k} {v:.3f}" for k, v in summary["server_side_ms"].items()))
    return summary


def write_side(metrics: dict[str, float]) -> dict[str, float]:
    """Server-measured p50/p99 (ms) of POST /v1/edges and of one fsync."""
    series = (("request /v1/edges", "serve_request_seconds", {"endpoint": "/v1/edges"}),
              ("fsync", "serve_edge_log_fsync_seconds", {}))
    return {f"{name} p{int(q * 100)}_ms": round(histogram_quantile(q, metrics, name_, labels), 3)
            for name, name_, labels in series for q in (0.5, 0.99)}


def writer(url: str, token: str, ids: list[Any], features: np.ndarray | None, stop: threading.Event, me: int,
           acked: dict[int, dict[str, Any]]) -> None:
    """Write until the server dies; record each acknowledged write by its sequence number. `features`
    None: a temporal bundle (new users without features, every edge with its rating)."""
    rng = random.Random(me)
    with httpx.Client(base_url=url, timeout=10.0, headers={"Authorization": f"Bearer {token}"}) as client:
        for k in range(10**9):
            if stop.is_set():
                return
            body: dict[str, Any] = {"edges": [{"src": rng.choice(ids), "dst": rng.choice(ids), "time": time.time(),
                                               "weight": rng.uniform(-1, 1)}]}
            if k % 10 == 0:  # a new node linked to an existing one
                new_id = (10**12 + me * 10**6 + k) if isinstance(ids[0], int) else f"bench-{me}-{k}"
                row = [] if features is None else features[rng.randrange(len(features))].tolist()
                body["nodes"] = [{"id": new_id, "features": row}]
                body["edges"].append({"src": new_id, "dst": rng.choice(ids), "time": time.time(),
                                      **({"weight": rng.uniform(-1, 1)} if features is None else {})})
            try:
                response = client.post("/v1/edges", json=body)
            except httpx.TransportError:
                return
            if response.status_code == 200:
                acked[response.json()["sequence"]] = body


def scorer(url: str, ids: list[Any], stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=10.0) as client:
        while not stop.is_set():
            try:
                client.post("/v1/score", json={"node_ids": random.sample(ids, 4)})
            except httpx.TransportError:
                return


def all_scores(url: str, ids: list[Any]) -> np.ndarray:
    """Probabilities of `ids` from one server -> float [n, C] (batches of 64, the default limit)."""
    rows = []
    with httpx.Client(base_url=url, timeout=30.0) as client:
        for start in range(0, len(ids), 64):
            response = client.post("/v1/score", json={"node_ids": ids[start:start + 64]})
            response.raise_for_status()
            rows += [list(r["probabilities"].values()) for r in response.json()["results"]]
    return np.array(rows)


def replay_into(url: str, token: str, entries: list[Entry]) -> None:
    """Give a server the logged writes in log order, as logged (directed, times as written)."""
    with httpx.Client(base_url=url, timeout=30.0, headers={"Authorization": f"Bearer {token}"}) as client:
        for entry in entries:
            body = {"nodes": [{"id": n.id, "features": list(n.features)} for n in entry.nodes],
                    "edges": [{"src": e.src, "dst": e.dst, "time": e.time, "weight": e.weight} for e in entry.edges],
                    "undirected": False}
            response = client.post("/v1/edges", json=body)
            if response.status_code != 200:
                raise SystemExit(f"reference replay of write {entry.seq} failed: {response.text}")


def found(entry: Entry, body: dict[str, Any], directed: bool = False) -> bool:
    """An acknowledged request is the logged entry: its nodes, and its edges in both directions
    (the service's default; a self-loop once), or as sent when `directed` (a temporal bundle)."""
    sent: Counter[tuple[Any, Any, float]] = Counter()
    for e in body["edges"]:
        sent[(e["src"], e["dst"], e["time"])] += 1
        if e["src"] != e["dst"] and not directed:
            sent[(e["dst"], e["src"], e["time"])] += 1
    logged = Counter((e.src, e.dst, e.time) for e in entry.edges)
    return logged == sent and [n.id for n in entry.nodes] == [n["id"] for n in body.get("nodes", [])]


def crash_phase(args: argparse.Namespace, work: Path, token: str) -> dict[str, Any]:
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    ids = np.load(args.bundle / manifest["graph"]["node_ids"]).tolist()
    temporal = manifest["policy"].get("name") == "temporal_recent"
    features = None if temporal else np.load(args.bundle / manifest["graph"]["features"])
    log = work / "crash.log"
    server = Server(args, log, token, work / "server-crash.out")
    stop, acked = threading.Event(), {}  # type: ignore[var-annotated]
    threads = [threading.Thread(target=writer, args=(server.url, token, ids, features, stop, i, acked))
               for i in range(args.writers)]
    threads += [threading.Thread(target=scorer, args=(server.url, ids, stop)) for _ in range(args.scorers)]
    for t in threads:
        t.start()
    time.sleep(args.crash_after)
    os.kill(server.process.pid, signal.SIGKILL)  # mid-run: writes and scores in flight
    server.process.wait()
    stop.set()
    for t in threads:
        t.join()
    acknowledged = dict(acked)
    restarted = Server(args, log, token, work / "server-crash.out")
    try:
        entries = {e.seq: e for e in map(decode, scan(log.read_bytes(), log).payloads)}
        kept = sum(seq in entries and found(entries[seq], body, temporal) for seq, body in acknowledged.items())
        reference = Server(args, work / "reference.log", token, work / "server-reference.out")
        try:
            replay_into(reference.url, token, [entries[s] for s in sorted(entries)])
            everyone = ids + [n.id for s in sorted(entries) for n in entries[s].nodes]
            got, want = all_scores(restarted.url, everyone), all_scores(reference.url, everyone)
        finally:
            reference.stop()
    finally:
        restarted.stop()
    diff = float(np.abs(got - want).max())
    summary = {"acknowledged": len(acknowledged), "acknowledged_found": kept, "logged_after_restart": len(entries),
               "nodes_compared": len(everyone), "max_abs_score_diff": diff,
               "scores_equal": bool(np.array_equal(got, want))}
    print(f"\ncrash: SIGKILL after {args.crash_after:g}s of {args.writers} writers + {args.scorers} scorers; "
          f"{len(acknowledged)} writes acknowledged, {kept} of them found after the restart "
          f"({len(entries)} in the log: acknowledged + durable but unanswered); scores of {len(everyone)} nodes vs "
          f"a server that never crashed: max |diff| {diff:.3g}, identical: {summary['scores_equal']}")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    token = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory(prefix="writes-") as tmp:
        load = load_phase(args, Path(tmp), token)
        crash = crash_phase(args, Path(tmp), token)
    problems = [text for bad, text in (
        (load["score_p99_ms"] > args.p99_ms, f"score p99 {load['score_p99_ms']:.3f} ms over {args.p99_ms} ms"),
        (load["failures"] > 0, f"{load['failures']} failed requests"),
        (crash["acknowledged_found"] < crash["acknowledged"],
         f"{crash['acknowledged'] - crash['acknowledged_found']} acknowledged writes lost"),
        (not crash["scores_equal"], "scores differ from a server that never crashed"),
    ) if bad]
    if args.json:
        args.json.write_text(json.dumps({"load": load, "crash": crash, "config": {
            "bundle": str(args.bundle), "users": args.users, "duration_s": args.duration, "wait_ms": args.wait_ms,
            "writers": args.writers, "scorers": args.scorers, "crash_after_s": args.crash_after}}, indent=2) + "\n")
    print("FAIL: " + "; ".join(problems) if problems else
          f"PASS: score p99 {load['score_p99_ms']:.3f} ms <= {args.p99_ms} ms, no failures, every acknowledged write "
          "found after kill -9, scores equal to a server that never crashed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
