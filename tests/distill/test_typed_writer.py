"""The job writes the typed section of meta-path bundles (distill/writer.py) and its served check
proves the section reproduces the graph the student was trained on (distill/served.py)."""

from __future__ import annotations

import io
from contextlib import redirect_stderr
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bundle import typed
from bundle.files import open_bundle
from distill import writer
from distill.cli import main
from distill.data import load_dataset
from distill.errors import DistillError
from tests.distill.test_hetero import write_small_acm

SPEC = "synthetic-hetero:transactions=200,users=60,devices=40,rings=3,fraud_rate=0.1,train_share=0.2"
TINY_RUN = ["--teacher", "hetero-sage", "--student", "gcn", "--teacher-layers", "2", "--teacher-hidden", "16",
            "--epochs", "15", "--patience", "5", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A tiny synthetic-hetero bundle and what the job printed on stderr."""
    out = tmp_path_factory.mktemp("typed-writer") / "b"
    err = io.StringIO()
    with redirect_stderr(err):
        assert main(["run", "--dataset", SPEC, *TINY_RUN, "--out", str(out)]) == 0
    return out, err.getvalue()


def test_a_synthetic_hetero_bundle_carries_its_types_and_passes_the_served_check(bundle):
    out, err = bundle
    assert "typed links reproduce the meta-path neighbours of" in err
    opened = open_bundle(out)
    section = opened.manifest.typed
    assert section is not None and (section.target, section.num_features) == ("transaction", 6)
    assert [(t.name, t.num_nodes, t.used) for t in section.node_types] == [
        ("transaction", 200, True), ("user", 60, True), ("device", 40, True)]
    assert [(v.type, v.relation) for v in section.via] == [("user", "made_by"), ("device", "uses")]
    arrays = opened.typed
    assert arrays is not None
    g = load_dataset(SPEC).hetero
    t, v = g["transaction", "uses", "device"].edge_index.numpy()
    inc = arrays.incidence["device"]
    assert inc.indptr[-1] == len(np.unique(np.stack([t, v]), axis=1)[0])
    assert sorted(inc.targets(np.array([7])).tolist()) == sorted(set(t[v == 7].tolist()))


def test_refresh_and_select_keep_the_typed_section(bundle, tmp_path):
    parent, _ = bundle
    child = tmp_path / "child"
    assert main(["refresh", "--bundle", str(parent), "--out", str(child), "--dataset", SPEC, "--reuse-teacher",
                 "--allow-worse", "--threads", "1", "--quiet"]) == 0
    assert open_bundle(child).manifest.typed == open_bundle(parent).manifest.typed
    chosen = tmp_path / "selected"
    assert main(["select", "--dataset", SPEC, *TINY_RUN, "--out", str(chosen), "--latency-budget-ms", "1000",
                 "--grid", "gcn:2:8", "--calls", "100"]) == 0
    assert open_bundle(chosen).manifest.typed == open_bundle(parent).manifest.typed


def test_an_acm_bundle_records_subjects_as_known_but_unused(tmp_path):
    out = tmp_path / "b"
    assert main(["run", "--dataset", f"acm:{write_small_acm(tmp_path / 'acm')}", *TINY_RUN, "--out", str(out)]) == 0
    section = open_bundle(out).manifest.typed
    assert section is not None and section.target == "paper" and section.num_features == 12
    assert [(t.name, t.used) for t in section.node_types] == [("paper", True), ("author", True), ("subject", False)]
    assert [(v.type, v.relation) for v in section.via] == [("author", "writes")] and section.link_types == [
        "author", "subject"]


def test_a_homogeneous_bundle_has_no_typed_section(tmp_path):
    out = tmp_path / "b"
    assert main(["run", "--dataset", "synthetic:nodes=80,features=4", "--teacher", "gcn", "--teacher-layers", "2",
                 "--student", "gcn", "--epochs", "5", "--patience", "5", "--threads", "1", "--quiet",
                 "--out", str(out)]) == 0
    assert open_bundle(out).manifest.typed is None and not (out / "typed").exists()
    assert b'"typed"' not in (out / "manifest.json").read_bytes()


def test_an_incidence_that_misses_a_link_is_refused_by_the_served_check(tmp_path, monkeypatch, capsys):
    original = typed.Incidence.from_pairs

    def lossy(target, via, num_via):  # drops the last link: the bundle no longer fits the training graph
        return original(target[:-1], via[:-1], num_via)

    monkeypatch.setattr(typed.Incidence, "from_pairs", staticmethod(lossy))
    out = tmp_path / "b"
    assert main(["run", "--dataset", SPEC, *TINY_RUN, "--out", str(out)]) == 2
    assert "the bundle's typed incidence is wrong" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("view", ["", "paper-author-venue", "paper-author"])
def test_a_view_without_meta_paths_is_named(view):
    ds = load_dataset(SPEC)
    with pytest.raises(DistillError, match="names no transaction-VIA-transaction meta-paths"):
        writer.via_types(replace(ds, source={**ds.source, "view": view}))
