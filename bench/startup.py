"""Start-up time and memory of `python -m serve` on a bundle: time from spawn to `/readyz` 200 and
the process's RSS once ready (and after scoring every node once, which pages in every array).

    python bench/startup.py --bundle runs/hard/tolokers --runs 5 [--repo PATH]

`--repo` runs the service from another checkout (e.g. a `git worktree` of an older commit), so a
before / after comparison is measured by the same script on the same machine in one go.
Prints a table of medians; timings on a shared machine are noisy, compare side by side only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from load import free_port, rss_mib


@dataclass(frozen=True)
class Sample:
    ready_s: float
    rss_ready_mib: float
    rss_scored_mib: float


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except OSError:
        return 0


def _score_all(base: str, ids: list[int], batch: int = 64) -> None:
    for i in range(0, len(ids), batch):
        body = json.dumps({"node_ids": ids[i:i + batch]}).encode()
        req = urllib.request.Request(f"{base}/v1/score", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()


def one_run(bundle: Path, repo: Path, num_nodes: int, timeout: float = 300.0) -> Sample:
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SERVE_")}, "PYTHONPATH": str(repo)}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "serve", "--bundle", str(bundle.resolve()), "--port", str(port)],
                            cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        while _get(f"{base}/readyz") != 200:
            if proc.poll() is not None or time.perf_counter() - started > timeout:
                raise RuntimeError(f"service on {bundle} did not become ready (exit {proc.poll()})")
            time.sleep(0.02)
        ready = time.perf_counter() - started
        rss_ready = rss_mib(proc.pid)
        _score_all(base, list(range(num_nodes)))
        return Sample(ready, rss_ready, rss_mib(proc.pid))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--repo", type=Path, action="append", default=None,
                   help="checkout(s) to run the service from (default: this one); repeat to compare")
    args = p.parse_args()
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    num_nodes = int(manifest["dataset"]["num_nodes"])
    repos = args.repo or [Path(__file__).resolve().parents[1]]
    print(f"bundle {args.bundle} ({num_nodes} nodes), {args.runs} runs each, medians")
    print(f"{'checkout':<40} {'ready s':>8} {'RSS ready MiB':>14} {'RSS scored MiB':>15}")
    for repo in repos:
        samples = [one_run(args.bundle, repo.resolve(), num_nodes) for _ in range(args.runs)]
        med = {f: statistics.median(getattr(s, f) for s in samples) for f in Sample.__dataclass_fields__}
        print(f"{str(repo):<40} {med['ready_s']:>8.2f} {med['rss_ready_mib']:>14.1f} {med['rss_scored_mib']:>15.1f}")


if __name__ == "__main__":
    main()
