"""Bulk scoring throughput: `distill score` over every node, and the service's batch endpoint.

    python bench/bulk.py --bundle mlp=/tmp/bulk_mlp --bundle auto=/tmp/bulk_auto [--repeats 3]
    python bench/bulk.py --build npz:$DATASETS/heterophilous/tolokers.npz --work /tmp/bulk [--split 0]
    python bench/bulk.py --bundle auto=/tmp/bulk_auto --service --batch-sizes 64,256,1024 --seconds 10

Offline: runs `distill score --bundle B --out F.npy --threads 1 --quiet` as a subprocess `--repeats`
times per bundle (OMP_NUM_THREADS=1: one core) and prints the median of two rates: **scoring**
nodes/s (what `distill score` reports: id resolution, blocks, onnxruntime, softmax) and
**end-to-end** nodes/s (the process's wall time: Python start-up, bundle verification, scoring,
writing the file). `--build SPEC` first writes an MLP and a default-student bundle with a small
training budget (throughput does not depend on accuracy).

`--service`: starts `python -m serve` per bundle (SERVE_MAX_BATCH = the largest size, one onnxruntime
thread) and, per batch size, one closed-loop keep-alive client POSTs /v1/score with that many random
existing ids for `--seconds`: p50 / p99 latency (send to last byte) and nodes/s = ids answered /
elapsed. The verdict column says whether p99 < `--p99-ms`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from load import free_port, pinned, stop_server, wait_ready  # bench/, next to this file

ROOT = Path(__file__).resolve().parents[1]
DISTILL = [sys.executable, "-m", "distill"]
RATE = re.compile(r"scored (\d+) nodes in ([0-9.]+)s \(([0-9,]+) nodes/s")
BUILD = ["--teacher", "gcn", "--teacher-layers", "2", "--epochs", "30", "--min-epochs", "5", "--temperature", "1",
         "--alpha", "0.5", "--quiet", "--force", "--threads", "1"]


def one_core() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def build(spec: str, work: Path, split: int) -> list[tuple[str, Path]]:
    """An MLP and a default (`--student auto`) bundle of `spec` under `work` -> [(name, path)]."""
    out = []
    for student in ("mlp", "auto"):
        path = work / f"bulk_{student}"
        cmd = [*DISTILL, "run", "--dataset", spec, "--split", str(split), "--student", student,
               "--out", str(path), *BUILD]
        print(f"building {path} ...", flush=True)
        subprocess.run(cmd, cwd=ROOT, env=one_core(), check=True, stdout=subprocess.DEVNULL)
        out.append((student, path))
    return out


def score_once(bundle: Path, out: Path) -> tuple[int, float, float]:
    """One `distill score` process -> (nodes, scoring nodes/s, process wall seconds)."""
    started = time.perf_counter()
    done = subprocess.run([*DISTILL, "score", "--bundle", str(bundle), "--out", str(out), "--threads", "1", "--quiet"],
                          cwd=ROOT, env=one_core(), capture_output=True, text=True)
    wall = time.perf_counter() - started
    match = RATE.search(done.stdout)
    if done.returncode != 0 or match is None:
        raise SystemExit(f"distill score failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    return int(match.group(1)), float(match.group(3).replace(",", "")), wall


def offline(bundles: list[tuple[str, Path]], repeats: int) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bulk-") as tmp:
        for name, bundle in bundles:
            runs = [score_once(bundle, Path(tmp) / "scores.npy") for _ in range(repeats)]
            nodes = runs[0][0]
            manifest = json.loads((bundle / "manifest.json").read_text())
            rows.append({"bundle": name, "student": manifest["model"]["student"], "nodes": nodes,
                         "scoring_nodes_per_s": statistics.median(r[1] for r in runs),
                         "end_to_end_nodes_per_s": statistics.median(nodes / r[2] for r in runs),
                         "wall_s": statistics.median(r[2] for r in runs)})
    print(f"\n`distill score`, all nodes, one core, median of {repeats}:\n")
    print("| bundle | student | nodes | scoring nodes/s | end-to-end nodes/s | process wall s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['bundle']} | {r['student']} | {r['nodes']:,} | {r['scoring_nodes_per_s']:,.0f} | "
              f"{r['end_to_end_nodes_per_s']:,.0f} | {r['wall_s']:.2f} |")
    return rows


def closed_loop(port: int, ids: list[int], size: int, seconds: float) -> dict[str, Any]:
    """One keep-alive client sending batches of `size` random ids for `seconds` -> latency and rate."""
    rng = np.random.default_rng(size)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies: list[float] = []
    answered = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        body = json.dumps({"node_ids": rng.choice(ids, size=size).tolist()})
        sent = time.perf_counter()
        conn.request("POST", "/v1/score", body, {"content-type": "application/json"})
        response = conn.getresponse()
        payload = response.read()
        latencies.append((time.perf_counter() - sent) * 1e3)
        if response.status != 200:
            raise SystemExit(f"batch of {size}: status {response.status}: {payload[:300]!r}")
        answered += len(json.loads(payload)["results"])
    elapsed = time.perf_counter() - started
    conn.close()
    warm = latencies[min(10, len(latencies) // 10):]  # drop the first requests (connection, lazy allocations)
    p50, p99 = np.percentile(warm, [50, 99])
    return {"batch": size, "requests": len(latencies), "p50_ms": float(p50), "p99_ms": float(p99),
            "nodes_per_s": answered / elapsed}


def service(bundles: list[tuple[str, Path]], sizes: list[int], seconds: float, p99_ms: float,
            cores: str | None) -> list[dict[str, Any]]:
    rows = []
    for name, bundle in bundles:
        ids = np.load(bundle / json.loads((bundle / "manifest.json").read_text())["graph"]["node_ids"]).tolist()
        port = free_port()
        env = {**one_core(), "SERVE_MAX_BATCH": str(max(sizes)), "SERVE_INTRA_OP_THREADS": "1"}
        with tempfile.TemporaryDirectory(prefix="bulk-serve-") as tmp, open(Path(tmp) / "server.log", "wb") as log:
            cmd = pinned([sys.executable, "-m", "serve", "--bundle", str(bundle), "--port", str(port)], cores)
            server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_ready(f"http://127.0.0.1:{port}", server, 600)
                rows += [{"bundle": name, **closed_loop(port, ids, size, seconds)} for size in sizes]
            finally:
                stop_server(server)
    print(f"\nservice /v1/score, one closed-loop client, {seconds:g}s per batch size (p99 budget {p99_ms:g} ms):\n")
    print("| bundle | batch | requests | p50 ms | p99 ms | nodes/s | p99 < budget |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['bundle']} | {r['batch']} | {r['requests']:,} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{r['nodes_per_s']:,.0f} | {'yes' if r['p99_ms'] < p99_ms else 'no'} |")
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", action="append", default=[], metavar="NAME=DIR", help="a bundle to measure")
    p.add_argument("--build", metavar="SPEC", help="first build an MLP and a default bundle of this dataset")
    p.add_argument("--split", type=int, default=0, help="--split for --build")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bulk", help="where --build writes")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-offline", action="store_true", help="skip the `distill score` runs")
    p.add_argument("--service", action="store_true", help="also measure the service's batch scoring")
    p.add_argument("--batch-sizes", default="64,256,1024")
    p.add_argument("--seconds", type=float, default=10.0, help="per batch size, with --service")
    p.add_argument("--p99-ms", type=float, default=10.0)
    p.add_argument("--server-cores", default="0", help="taskset cores for the server ('' = no pinning)")
    p.add_argument("--json", type=Path, help="write every row here")
    args = p.parse_args(argv)
    args.bundles = [(b.split("=", 1)[0], Path(b.split("=", 1)[1])) if "=" in b else (Path(b).name, Path(b))
                    for b in args.bundle]
    if not args.bundles and not args.build:
        p.error("name at least one --bundle NAME=DIR, or --build SPEC")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bundles = args.bundles + (build(args.build, args.work, args.split) if args.build else [])
    result: dict[str, Any] = {}
    if not args.no_offline:
        result["offline"] = offline(bundles, args.repeats)
    if args.service:
        sizes = [int(s) for s in args.batch_sizes.split(",")]
        result["service"] = service(bundles, sizes, args.seconds, args.p99_ms, args.server_cores or None)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
