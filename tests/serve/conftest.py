"""Tiny bundles for the serve tests, built by the real offline job, plus the torch reference.

The reference is the torch student itself: the fixture spies on `distill.pipeline.export_student` to keep
the trained student, its full-graph logits (what the report evaluated) and the pruned propagation
matrix. The service must reproduce those logits from cached neighbourhoods.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = "synthetic:nodes=300,features=8"


@dataclass(frozen=True)
class TinyBundle:
    """A bundle on disk and the torch objects it was exported from."""

    path: Path
    student: Any  # distill.models._Stack in eval mode
    logits: np.ndarray  # float32 [N, C]: the torch student's full-graph logits
    features: Any  # torch float32 [N, F]
    prop_index: Any  # torch int64 [2, E]: P's entries as (source, target)
    prop_weight: Any  # torch float32 [E]
    policy: dict[str, Any]


def build_tiny(out: Path, student: str, seed: int = 0) -> TinyBundle:
    import torch

    from distill import pipeline
    from distill.config import RunConfig

    captured: dict[str, Any] = {}
    original = pipeline.export_student

    def spy(student_model: Any, logits: Any, ds: Any, sg: Any) -> Any:
        captured.update(student=student_model, logits=logits, ds=ds, sg=sg)
        return original(student_model, logits, ds, sg)

    # "gcn+attention": structure KD, the student propagating with the GAT teacher's attention.
    attention = student.endswith("+attention")
    cfg = RunConfig(dataset=TINY, teacher_layers=2, teacher_hidden=16, epochs=30, patience=10,
                    student=student.removesuffix("+attention"), seed=seed,
                    kd="response,structure" if attention else "response",
                    structure_weights="attention" if attention else "auto")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only fight over a shared CPU
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(pipeline, "export_student", spy)
            pipeline.run(cfg, out, progress=False)
    finally:
        torch.set_num_threads(threads)
    sg = captured["sg"]
    return TinyBundle(
        path=out, student=captured["student"].eval(), logits=captured["logits"].numpy(),
        features=captured["ds"].data.x, prop_index=sg.prop_index, prop_weight=sg.prop_weight,
        policy=dict(sg.policy.__dict__),
    )


@pytest.fixture(scope="session")
def tiny_bundles(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., TinyBundle]:
    """(student name (gcn / sage / mlp, or gcn+attention / sage+attention), seed=0) -> its tiny bundle,
    built once per session on first use."""
    root = tmp_path_factory.mktemp("bundles")
    built: dict[tuple[str, int], TinyBundle] = {}

    def get(student: str, seed: int = 0) -> TinyBundle:
        if (student, seed) not in built:
            built[student, seed] = build_tiny(root / f"{student}-seed{seed}", student, seed)
        return built[student, seed]

    return get


@pytest.fixture(scope="session")
def gcn(tiny_bundles: Callable[..., TinyBundle]) -> TinyBundle:
    return tiny_bundles("gcn")


@pytest.fixture(scope="session")
def gcn_seed1(tiny_bundles: Callable[..., TinyBundle]) -> TinyBundle:
    """Same data and student as `gcn`, another seed: another model_version to hot-reload to."""
    return tiny_bundles("gcn", seed=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A real `python -m serve` subprocess."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10.0)

    def wait_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                httpx.get(f"{self.url}/livez", timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise TimeoutError(f"server did not listen within {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(bundle: Path, log: Path, **env: str) -> Server:
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SERVE_")}
    clean.update(env)
    with log.open("wb") as fh:
        process = subprocess.Popen(
            [sys.executable, "-m", "serve", "--bundle", str(bundle), "--port", str(port)],
            cwd=ROOT, env=clean, stdout=fh, stderr=subprocess.STDOUT,
        )
    server = Server(process, f"http://127.0.0.1:{port}", log)
    server.wait_listening()
    return server


def wait_ready(server: Server, timeout: float = 60.0) -> list[int]:
    """Poll /readyz until 200 -> every status code seen on the way."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.append(httpx.get(f"{server.url}/readyz", timeout=5.0).status_code)
        if seen[-1] == 200:
            return seen
        time.sleep(0.02)
    raise TimeoutError(f"not ready after {timeout}s (seen {seen[-5:]}):\n{server.log.read_text()}")


def metric(client: httpx.Client, name: str) -> float:
    """One sample of /metrics by its full name with labels (`a_total{x="y"}`); 0 when absent."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_in_flight(client: httpx.Client, requests: int, timeout: float = 20.0) -> None:
    """Until `requests` requests besides this scrape are being handled (serve_requests_in_flight)."""
    deadline = time.monotonic() + timeout
    while metric(client, "serve_requests_in_flight") < requests + 1:
        assert time.monotonic() < deadline, "the request never became in flight"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def server(gcn: TinyBundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The gcn bundle served with small limits, so the limit cases are cheap to hit."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    srv = start_server(gcn.path, log, SERVE_MAX_BATCH="16", SERVE_MAX_BODY_BYTES="4096", SERVE_WARMUP_RUNS="5")
    try:
        wait_ready(srv)
        yield srv
    finally:
        srv.stop()
