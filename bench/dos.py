"""Denial-of-service bench: scoring under slowloris, big-header and idle-connection attacks.

    python bench/dos.py --bundle /tmp/dos_bundle [--duration 30] [--users 20] [--idle 5000] [--slowloris 200]
                        [--big-header 4] [--json out.json]

Starts `python -m serve` on the bundle (SERVE_* from the environment reach it), then runs bench/load.py's
locust load twice for --duration seconds each: once quiet (the baseline) and once while an attacker
process runs, against the same server:

- slowloris: --slowloris connections, each sending a request head one header line per --slow-every s and
  never finishing it (reconnecting when closed);
- big headers: --big-header clients, each sending a --big-mib MiB header, again and again;
- idle: --idle connections that send a partial head ("GET /livez HTTP/1.1\\r\\nHost: x\\r\\n") and then
  nothing; a closed one reconnects after --reconnect-s.

With --via-nginx, nginx runs in front with deploy/nginx.conf (upstream and port rewritten) and the
clients, probes and attackers all go through it, as in docker-compose.yml.

Meanwhile a probe GETs /livez on a fresh connection every 0.1 s, and the server's RSS and open file
descriptors are sampled. Prints one row per phase (score p50/p99 from locust's raw samples, 503s,
failures, /livez probe latency, RSS, fds) and one per attack (connections made, what the server answered,
how long a connection lived). Exits 1 when the score p99 under attack exceeds --p99-ms with no 503
shedding to explain it, or the /livez probe failed during the attack.

Server, locust and attacker are pinned with taskset when possible (--server-cores, --locust-cores,
--attacker-cores; on a 2-core machine the attacker must share a core with one of the others). The
attacker raises its own RLIMIT_NOFILE soft limit to fit its sockets.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from attackers import raise_nofile, status_of
from load import (
    ROOT,
    SCORE,
    free_port,
    histogram_quantile,
    pinned,
    read_csv,
    rss_mib,
    run_locust,
    scrape,
    start_server,
    stop_server,
    summarise,
    wait_ready,
)

HERE = Path(__file__).resolve()


class Monitor(threading.Thread):
    """GET /livez on a fresh connection every 0.1 s; RSS and open fds of the server every 0.5 s."""

    def __init__(self, url: str, pid: int) -> None:
        super().__init__(daemon=True)
        parts = urlsplit(url)
        self.address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.pid = pid
        self.stop = threading.Event()
        self.livez_ms: list[float] = []
        self.livez_failures: Counter[str] = Counter()
        self.rss_mib: list[float] = []
        self.fds: list[int] = []

    def probe(self) -> None:
        started = time.perf_counter()
        try:
            with socket.create_connection(self.address, timeout=2.0) as sock:
                sock.sendall(b"GET /livez HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := sock.recv(4096):
                    data += chunk
            status = status_of(data)
        except OSError as exc:
            status = type(exc).__name__
        if status == "200":
            self.livez_ms.append((time.perf_counter() - started) * 1e3)
        else:
            self.livez_failures[status] += 1

    def sample(self) -> None:
        try:
            self.rss_mib.append(rss_mib(self.pid))
            self.fds.append(len(os.listdir(f"/proc/{self.pid}/fd")))
        except (OSError, RuntimeError):  # the server is gone or exiting: no sample
            pass

    def run(self) -> None:
        tick = 0
        while not self.stop.is_set():
            started = time.monotonic()
            self.probe()
            if tick % 5 == 0:
                self.sample()
            tick += 1
            self.stop.wait(max(0.0, 0.1 - (time.monotonic() - started)))

    def summary(self) -> dict[str, Any]:
        ms = np.asarray(self.livez_ms or [np.nan])  # nan: no probe answered
        return {"livez_ok": len(self.livez_ms), "livez_failures": dict(self.livez_failures),
                "livez_p50_ms": round(float(np.percentile(ms, 50)), 3),
                "livez_p99_ms": round(float(np.percentile(ms, 99)), 3),
                "livez_max_ms": round(float(np.max(ms)), 3),
                "rss_mib_median": round(statistics.median(self.rss_mib), 1) if self.rss_mib else None,
                "rss_mib_max": round(max(self.rss_mib), 1) if self.rss_mib else None,
                "fds_max": max(self.fds) if self.fds else None}


def count_503(prefix: Path) -> int:
    """503 answers among locust's failures (the locustfile records 'status 503: ...')."""
    path = Path(f"{prefix}_failures.csv")
    if not path.exists():
        return 0
    with path.open(newline="") as fh:
        return sum(int(row["Occurrences"]) for row in csv.DictReader(fh) if "status 503" in row["Error"])


def phase(args: argparse.Namespace, url: str, server_url: str, pid: int, work: Path) -> dict[str, Any]:
    """Locust + the monitor against `url` (the server, or the proxy in front of it) for one phase."""
    work.mkdir()
    monitor = Monitor(url, pid)
    before = scrape(server_url)
    monitor.start()
    try:
        prefix, samples_file = run_locust(args, url, work)
    finally:
        monitor.stop.set()
        monitor.join()
    after = scrape(server_url)
    # The server's own view of this phase: its /v1/score histogram, this phase's counts only (handler time;
    # the wait before the event loop picks a request up is in the client-side numbers only).
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
    samples = json.loads(samples_file.read_text()) if samples_file.exists() else {}
    rows = summarise(read_csv(prefix), samples)
    score = rows[SCORE]
    return {"score_requests": score["count"], "score_failures": score["failures"],
            "score_503": count_503(prefix), "score_rps": score["rps"], "score_p50_ms": score["p50_ms"],
            "score_p99_ms": score["p99_ms"], "locust_livez_p99_ms": rows.get("livez", {}).get("p99_ms"),
            "server_score_p99_ms": round(histogram_quantile(0.99, delta, "serve_request_seconds",
                                                            {"endpoint": "/v1/score"}), 2),
            **monitor.summary()}


def start_attacker(args: argparse.Namespace, url: str, work: Path) -> tuple[subprocess.Popen[str], Path]:
    out = work / "attack.json"
    cmd = pinned([sys.executable, str(HERE.parent / "attackers.py"), url, "--idle", str(args.idle), "--slowloris",
                  str(args.slowloris), "--slow-every", str(args.slow_every), "--big-header", str(args.big_header),
                  "--big-mib", str(args.big_mib), "--reconnect-s", str(args.reconnect_s), "--out", str(out)],
                 args.attacker_cores)
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()  # "ready {...}" once the idle connections are open
    if not line.startswith("ready"):
        process.kill()
        raise SystemExit(f"attacker did not start: {line!r}")
    print(f"attacker ready, connections open: {line.split(' ', 1)[1].strip()}")
    return process, out


def start_nginx(args: argparse.Namespace, upstream_port: int, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """nginx with deploy/nginx.conf, its upstream and port rewritten for this run -> (process, its URL)."""
    if shutil.which("nginx") is None:
        raise SystemExit("--via-nginx: no nginx binary on PATH")
    prefix = work / "nginx"
    (prefix / "logs").mkdir(parents=True)
    port = free_port()
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    conf = conf.replace("server serve:8000;", f"server 127.0.0.1:{upstream_port};")
    conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    (prefix / "nginx.conf").write_text(conf)
    cmd = pinned(["nginx", "-c", str(prefix / "nginx.conf"), "-p", f"{prefix}/", "-g",
                  f"daemon off; pid {prefix}/nginx.pid; error_log {prefix}/error.log warn;"], args.server_cores)
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, url
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"nginx did not start:\n{(prefix / 'error.log').read_text()}") from None
            time.sleep(0.05)


def print_tables(quiet: dict[str, Any], attacked: dict[str, Any], attackers: dict[str, Any]) -> None:
    print(f"\n{'phase':<8} {'score req':>9} {'fail':>5} {'503':>5} {'p50 ms':>7} {'p99 ms':>7} {'server p99':>10} "
          f"{'livez probes ok/fail':>20} {'livez p50':>9} {'p99':>7} {'max ms':>7} {'RSS MiB med/max':>15} "
          f"{'fds max':>7}")
    for name, r in (("quiet", quiet), ("attack", attacked)):
        probes = f"{r['livez_ok']}/{sum(r['livez_failures'].values())}"
        rss = f"{r['rss_mib_median']}/{r['rss_mib_max']}"
        print(f"{name:<8} {r['score_requests']:>9} {r['score_failures']:>5} {r['score_503']:>5} "
              f"{r['score_p50_ms']:>7.2f} {r['score_p99_ms']:>7.2f} {r['server_score_p99_ms']:>10.2f} {probes:>20} "
              f"{r['livez_p50_ms']:>9.2f} {r['livez_p99_ms']:>7.2f} {r['livez_max_ms']:>7.1f} {rss:>15} "
              f"{r['fds_max']!s:>7}")
    if attacked["livez_failures"]:
        print(f"livez probe failures under attack: {attacked['livez_failures']}")
    print(f"\n{'attacker':<11} {'opened':>7} {'per s':>7} {'conn err':>8} {'closed':>7} {'reset':>6} "
          f"{'open at end':>11} {'life p50 s':>10} {'max s':>7}  server answers")
    for name, a in attackers.items():
        print(f"{name:<11} {a['opened']:>7} {a['opened_per_s']:>7} {a['connect_errors']:>8} {a['closed_by_server']:>7} "
              f"{a['resets']:>6} "
              f"{a['open_at_end']:>11} {a['lifetime_p50_s']!s:>10} {a['lifetime_max_s']!s:>7}  "
              + ", ".join(f"{k}: {v}" for k, v in sorted(a["statuses"].items())))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--duration", type=int, default=30, help="seconds of locust load per phase")
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--wait-ms", type=float, default=100.0)
    p.add_argument("--idle", type=int, default=5000, help="idle partial-head connections the attacker keeps open")
    p.add_argument("--slowloris", type=int, default=200, help="connections trickling a never-ending head")
    p.add_argument("--slow-every", type=float, default=1.0, help="seconds between a slowloris's header lines")
    p.add_argument("--big-header", type=int, default=4, help="clients sending huge headers in a loop")
    p.add_argument("--big-mib", type=int, default=16, help="MiB of one huge header")
    p.add_argument("--reconnect-s", type=float, default=5.0,
                   help="an idle attacker reconnects this long after a close (small values make a connection flood)")
    p.add_argument("--p99-ms", type=float, default=10.0)
    p.add_argument("--server-cores", default="0")
    p.add_argument("--locust-cores", default="1", help="taskset cores of locust")
    p.add_argument("--attacker-cores", default="1", help="taskset cores of the attacker process")
    p.add_argument("--via-nginx", action="store_true",
                   help="put nginx with deploy/nginx.conf in front (needs an nginx binary): the compose set-up")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    args.spawn_rate = 0  # what load.run_locust reads
    if not (args.bundle / "manifest.json").is_file():
        p.error(f"{args.bundle} is not a bundle (no manifest.json)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    raise_nofile(4096)  # the monitor's probes; the attacker raises its own
    with tempfile.TemporaryDirectory(prefix="dos-") as tmp:
        work = Path(tmp)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_server(args, port, work / "server.log", None)
        proxy = None
        try:
            print(f"server ready in {wait_ready(url, server, 600):.1f}s at {url}; {args.users} users, "
                  f"{args.duration}s per phase")
            front = url
            if args.via_nginx:
                proxy, front = start_nginx(args, port, work)
                print(f"clients and attackers go through nginx (deploy/nginx.conf) at {front}")
            quiet = phase(args, front, url, server.pid, work / "quiet")
            attacker, attack_out = start_attacker(args, front, work)
            try:
                attacked = phase(args, front, url, server.pid, work / "attack")
            finally:
                attacker.send_signal(signal.SIGTERM)
                attacker.wait(timeout=60)
            attackers = json.loads(attack_out.read_text())
        finally:
            if proxy is not None:
                proxy.terminate()
                proxy.wait(timeout=10)
            exit_code = stop_server(server)
        log_lines = (work / "server.log").read_text().splitlines()
    shed = [line for line in log_lines if "http limits: shed" in line]
    print_tables(quiet, attacked, attackers)
    print(f"\nserver: {len(shed)} 'http limits: shed' log lines" + (f"; last: {shed[-1]}" if shed else "")
          + f"; exit code after SIGTERM {exit_code}")
    summary = {"quiet": quiet, "attack": attacked, "attackers": attackers, "shed_log_lines": len(shed),
               "server_exit_code": exit_code, "config": {k: str(v) for k, v in vars(args).items()}}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    problems = []
    if attacked["score_p99_ms"] > args.p99_ms and attacked["score_503"] == 0:
        problems.append(f"score p99 {attacked['score_p99_ms']:.2f} ms under attack over {args.p99_ms} ms, none shed")
    if attacked["livez_failures"]:
        problems.append(f"/livez probe failed under attack: {attacked['livez_failures']}")
    print(("FAIL: " + "; ".join(problems)) if problems else
          f"PASS: score p99 under attack {attacked['score_p99_ms']:.2f} ms (quiet {quiet['score_p99_ms']:.2f} ms), "
          f"/livez answered every probe")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
