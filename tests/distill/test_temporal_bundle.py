"""`distill run` on a temporal dataset writes a temporal bundle through the publishing path, checked
through the service's own code as of each prediction time. Also the tiny Bitcoin-OTC-format fixture
(two CSVs) that tests/serve/test_temporal_serve.py serves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bundle.files import TemporalArrays, open_bundle
from bundle.temporal import FEATURES
from distill import cli
from distill.temporal import job
from distill.temporal.experiment import ExperimentConfig
from distill.temporal.loop import LoopConfig
from distill.temporal.protocol import EVAL_KS

TINY = ExperimentConfig(loop=LoopConfig(epochs=3, patience=2), teacher_members=1, kd_weights=(1.0,), unlabelled_cap=50)


def write_bitcoin(root: Path, users: int = 40, edges: int = 600, labelled: int = 24, seed: int = 0) -> Path:
    """A Bitcoin-OTC-format folder: otc_network.csv (source, target, rating, unix time) and otc_gt.csv
    (user, -1 fraudulent / 1 benign); odd users are fraudulent and mostly rated negatively."""
    rng = np.random.default_rng(seed)
    fraud = np.arange(users) % 2 == 1
    src, dst = rng.integers(1, users + 1, edges), rng.integers(1, users + 1, edges)
    keep = src != dst
    src, dst = src[keep], dst[keep]
    rating = np.where(fraud[dst - 1], rng.choice([-10, -5, 1], len(src)), rng.choice([-1, 2, 5, 10], len(src)))
    times = np.sort(rng.uniform(1.3e9, 1.4e9, len(src))).round()
    root.mkdir(parents=True, exist_ok=True)
    (root / "otc_network.csv").write_text("".join(f"{s},{d},{r},{t:.0f}\n"
                                                  for s, d, r, t in zip(src, dst, rating, times, strict=True)))
    (root / "otc_gt.csv").write_text("".join(f"{u},{-1 if fraud[u - 1] else 1}\n" for u in range(1, labelled + 1)))
    return root


def build_temporal(tmp: Path, seed: int = 0) -> Path:
    """A temporal bundle of the tiny fixture (trained for a few epochs: it is checked, not judged)."""
    data = write_bitcoin(tmp / "data")
    job.run(f"bitcoin-otc:{data}", tmp / "bundle", seed=seed, progress=False, cfg=TINY)
    return tmp / "bundle"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_temporal(tmp_path_factory.mktemp("temporal"))


def test_the_job_writes_a_temporal_bundle_checked_as_served(bundle: Path) -> None:
    opened = open_bundle(bundle)
    m = opened.manifest
    assert m.temporal and isinstance(opened.graph, TemporalArrays)
    assert m.model.inputs == ["x", "adj"] and m.dataset.num_features == len(FEATURES)
    assert m.dataset.class_names == ["benign", "fraudulent"]
    assert m.parity is not None and m.parity.max_abs_diff <= 1e-4 and m.parity.tolerance == 1e-4
    assert m.parity.nodes_checked > 0 and m.decision is not None and 0.0 <= m.decision.threshold <= 1.0
    assert (m.policy.rating_min, m.policy.rating_max) == (-10.0, 10.0)  # type: ignore[union-attr]
    # Edges are stored in time order, raw ids as node ids (names only, never features).
    assert (np.diff(opened.graph.time) >= 0).all() and opened.graph.node_ids.tolist() == list(range(1, 41))
    rep = json.loads((bundle / "report.json").read_text())
    assert set(rep["served"]["test"]) == {str(k) for k in EVAL_KS}
    # The distilled student as served scores what the torch student scored on test (parity <= 1e-4).
    for k, scores in rep["served"]["test"].items():
        assert scores["auroc"] == pytest.approx(rep["test"]["distilled"][k]["auroc"], abs=1e-6)
    assert m.metrics["served_test"] == rep["served"]["test"]


def test_cli_refuses_options_the_temporal_job_does_not_take(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    data = write_bitcoin(tmp_path / "data")
    code = cli.main(["run", "--dataset", f"bitcoin-otc:{data}", "--out", str(tmp_path / "b"), "--epochs", "3"])
    assert code == 2 and "--epochs does not apply to the temporal dataset" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_a_missing_temporal_folder_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args: list[Any] = ["run", "--dataset", f"bitcoin-otc:{tmp_path / 'none'}", "--out", str(tmp_path / "b")]
    assert cli.main(args) == 2
    assert "otc_network.csv not found" in capsys.readouterr().err


def test_refresh_of_a_temporal_bundle_exits_2_naming_the_way(bundle: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    data = bundle.parent / "data"
    code = cli.main(["refresh", "--bundle", str(bundle), "--dataset", f"bitcoin-otc:{data}", "--out",
                     str(tmp_path / "child"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "temporal_recent" in err and "distill run --dataset" in err
    assert not (tmp_path / "child").exists()
