"""Tiny bundles for the serve tests, built by the real offline job, plus the torch reference.

The reference is the torch student itself: the fixture spies on `distill.pipeline.export_student` to keep
the trained student, its full-graph logits (what the torch pass computed) and the pruned propagation
matrix. The service must reproduce those logits from cached neighbourhoods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.serve.servers import RunningServer, Server, Servers, serving

ROOT = Path(__file__).resolve().parents[2]
TINY = "synthetic:nodes=300,features=8"


@dataclass(frozen=True)
class TinyBundle:
    """A bundle on disk and the torch objects it was exported from."""

    path: Path
    student: Any  # distill.models.LayerStack in eval mode
    logits: np.ndarray  # float32 [N, C]: the torch student's full-graph logits
    features: Any  # torch float32 [N, F]
    prop_index: Any  # torch int64 [2, E]: P's entries as (source, target)
    prop_weight: Any  # torch float32 [E]
    policy: dict[str, Any]
    in_degree: Any = None  # int64 [N]: the raw graph's in-degree, for students with a degree column
    neighbour_mean: Any = None  # float32 [N, F]: mean raw features of in-neighbours, for students with mean input


def build_tiny(out: Path, student: str, seed: int = 0) -> TinyBundle:
    import torch

    from distill import pipeline
    from distill.config import RunConfig

    captured: dict[str, Any] = {}
    original = pipeline.export_student

    def spy(trained: Any, x: Any) -> Any:
        captured.update(trained=trained, x=x)
        return original(trained, x)

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
    trained = captured["trained"]
    edges = trained.graph.edges
    return TinyBundle(
        path=out, student=trained.model.eval(), logits=trained.logits.numpy(), features=captured["x"],
        prop_index=edges.edge_index, prop_weight=edges.edge_weight, policy=trained.graph.policy.model_dump(),
        in_degree=trained.graph.in_degree, neighbour_mean=trained.graph.neighbour_mean,
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


@pytest.fixture
def running_server(tmp_path: Path) -> Iterator[RunningServer]:
    """`running_server(bundle, *, ready=True, slow_ms=None, **SERVE_env) -> Server`: a real server
    (tests/serve/servers.py), ready unless `ready=False`; `slow_ms` holds every /v1/score that long.
    Every server started is stopped at teardown."""
    servers = Servers(tmp_path)
    try:
        yield servers
    finally:
        servers.stop_all()


@pytest.fixture(scope="module")
def server(gcn: TinyBundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The gcn bundle served with small limits, so the limit cases are cheap to hit."""
    with serving(gcn.path, tmp_path_factory.mktemp("server"), SERVE_MAX_BATCH="16", SERVE_MAX_BODY_BYTES="4096",
                 SERVE_WARMUP_RUNS="5") as srv:
        yield srv
