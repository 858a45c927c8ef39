"""`distill refresh --edge-log`: the service's writes (logged by its own EdgeLog) folded into the child
bundle: new nodes by id with their features, logged edges in P, the child serving them as its own
nodes; a log of another bundle, ids of the other kind and unknown ids refused with exit 2; a torn
last record left out, as the service's replay leaves it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from bundle.edge_log import EdgeRecord, Entry, Header, NodeRecord, encode, frame
from bundle.files import open_bundle
from distill.cli import main
from distill.data import load_dataset
from serve.app import create_app
from serve.edge_log import EdgeLog
from serve.settings import Settings

SPEC = "synthetic:nodes=300,features=8"
# --kd response: the hash policy, so whether a logged edge is among a node's kept neighbours does not
# hang on how a teacher ranks it (structure KD keeps the teacher's top-ranked ones).
TINY = ["--dataset", SPEC, "--teacher-layers", "2", "--teacher-hidden", "16", "--epochs", "20", "--patience", "5",
        "--kd", "response", "--quiet", "--threads", "1"]
NEW_A = tuple(float(i) / 8 for i in range(8))
NEW_B = tuple(-float(i) for i in range(8))


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("parent") / "v1"
    assert main(["run", "--out", str(root), *TINY]) == 0
    return root


def header_of(root: Path) -> Header:
    manifest = json.loads((root / "manifest.json").read_text())
    return Header(manifest["version"], manifest["digest"] or manifest["version"])


def existing_and_missing_edge() -> tuple[tuple[int, int], tuple[int, int]]:
    """An edge (src, dst) the dataset has, and one between existing nodes it has not."""
    edges = load_dataset(SPEC).data.edge_index.numpy().T
    present = {tuple(e) for e in edges.tolist()}
    missing = next((s, d) for s in range(300) for d in range(300) if s != d and (s, d) not in present)
    return tuple(edges[0].tolist()), missing  # type: ignore[return-value]


def write_log(path: Path, header: Header, entries: list[Entry], torn: Entry | None = None) -> None:
    """The service's own writer; `torn`: a last write only partly on disk (a crash mid-append)."""
    log, _ = EdgeLog.open(path, header)
    for entry in entries:
        log.sync(log.append(encode(entry)))
    log.close()
    if torn is not None:
        with path.open("ab") as fh:
            fh.write(frame(encode(torn))[:-5])


def edge(src: int | str, dst: int | str, t: float = 100.0) -> EdgeRecord:
    return EdgeRecord(src, dst, t)


@contextmanager
def ready_client(bundle: Path, **settings: Any) -> Iterator[TestClient]:
    app = create_app(Settings(bundle=bundle, warmup_runs=0, **settings))  # type: ignore[arg-type]
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        yield client


def refresh(parent: Path, child: Path, log: Path) -> int:
    return main(["refresh", "--bundle", str(parent), *TINY[:2], "--out", str(child), "--reuse-teacher", "--quiet",
                 "--threads", "1", "--allow-worse", "--edge-log", str(log)])


def test_the_child_holds_the_logged_nodes_and_edges_and_serves_them(parent: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    old_edge, new_edge = existing_and_missing_edge()
    log = tmp_path / "edges.log"
    entries = [Entry(1, (NodeRecord(300, NEW_A),), (edge(0, 300), edge(1, 300), edge(300, 2))),
               # an undirected write is logged both ways; a duplicate of a graph edge and a self-loop add nothing
               Entry(2, (NodeRecord(301, NEW_B),), (edge(300, 301), edge(301, 300), edge(*old_edge),
                                                    edge(*new_edge), edge(5, 5), edge(0, 300)))]
    write_log(log, header_of(parent), entries, torn=Entry(3, (NodeRecord(302, NEW_A),), (edge(302, 0),)))
    child = tmp_path / "v2"
    assert refresh(parent, child, log) == 0
    assert "folded" in capsys.readouterr().out
    opened = open_bundle(child)
    record = opened.manifest.dataset.source["edge_log"]
    assert record["records"] == 2 and record["last_seq"] == 2 and record["nodes_added"] == 2
    assert record["edges_logged"] == 9 and record["self_loops_dropped"] == 1 and record["torn_bytes"] > 0
    # 0->300, 1->300, 300->2, 300->301, 301->300 and the missing edge; not the duplicates or the loop
    assert record["edges_added"] == 6 and record["bundle_version"] == header_of(parent).bundle_version
    g = opened.graph
    assert g.node_ids.tolist() == [*range(302)]  # 302 was in the torn record only
    np.testing.assert_array_equal(g.features[300:], np.array([NEW_A, NEW_B], dtype=np.float32))
    assert opened.manifest.dataset.num_nodes == 302

    def row(node: int) -> set[int]:
        return set(g.csr.indices[g.csr.indptr[node]: g.csr.indptr[node + 1]].tolist())

    # rows are in-neighbours: each logged source is kept (rows of the new nodes are far below the fanout)
    assert {0, 1, 301} <= row(300) and {300} <= row(301) and 300 in row(2)
    with ready_client(child) as client:
        got = client.post("/v1/score", json={"node_ids": [300, 301, 0]})
        assert got.status_code == 200, got.text
        assert [r["node_id"] for r in got.json()["results"]] == [300, 301, 0]
        assert client.post("/v1/score", json={"node_ids": [302]}).status_code == 404


def test_a_log_of_another_bundle_is_refused(parent: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "edges.log"
    write_log(log, Header("v0-other", "f" * 64), [Entry(1, (), (edge(0, 1),))])
    child = tmp_path / "v2"
    assert refresh(parent, child, log) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "belongs to bundle v0-other" in err
    assert header_of(parent).bundle_version in err and "drop --edge-log" in err and not child.exists()


@pytest.mark.parametrize(("entry", "message"), [
    (Entry(1, (NodeRecord("acct-9", NEW_A),), ()), "node ids are int64 but the log's are not"),
    (Entry(1, (), (edge(0, 777),)), "names node 777, which is neither in --dataset nor added by the log"),
    (Entry(1, (NodeRecord(7, NEW_A),), ()), "adds node 7, which the graph already has"),
    (Entry(1, (NodeRecord(400, NEW_A[:3]),), ()), "node 400 has 3 features, the dataset 8"),
])
def test_a_log_that_does_not_fit_the_dataset_is_refused_naming_it(parent: Path, tmp_path: Path, entry: Entry,
                                                                    message: str,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "edges.log"
    write_log(log, header_of(parent), [entry])
    assert refresh(parent, tmp_path / "v2", log) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "v2").exists()


def test_the_folded_dataset_keeps_new_nodes_out_of_every_mask(parent: Path, tmp_path: Path) -> None:
    from bundle.manifest import Manifest
    from distill.fold import fold

    log = tmp_path / "edges.log"
    write_log(log, header_of(parent), [Entry(1, (NodeRecord(300, NEW_A),), (edge(300, 0), edge(0, 300)))])
    manifest = Manifest.model_validate_json((parent / "manifest.json").read_bytes())
    ds = load_dataset(SPEC)
    folded = fold(ds, log, manifest, parent).ds
    data = folded.data
    assert data.num_nodes == 301 and folded.external_ids[-1] == 300
    assert not (data.train_mask[300] or data.val_mask[300] or data.test_mask[300])
    assert torch.equal(data.train_mask[:300], ds.data.train_mask)
    assert data.num_edges == ds.data.num_edges + 2


def test_writes_posted_to_the_service_are_in_the_child(parent: Path, tmp_path: Path) -> None:
    log, token = tmp_path / "edges.log", "write-token-0123456789"
    with ready_client(parent, edge_log=log, write_token=token) as client:
        body = {"nodes": [{"id": 300, "features": list(NEW_A)}], "edges": [{"src": 300, "dst": 4, "time": 5.0}],
                "undirected": True}
        got = client.post("/v1/edges", json=body, headers={"Authorization": f"Bearer {token}"})
        assert got.status_code == 200, got.text
    child = tmp_path / "v2"
    assert refresh(parent, child, log) == 0
    opened = open_bundle(child)
    record = opened.manifest.dataset.source["edge_log"]
    assert (record["records"], record["nodes_added"], record["edges_logged"]) == (1, 1, 2)
    csr = opened.graph.csr
    assert opened.graph.node_ids[300] == 300 and 4 in csr.indices[csr.indptr[300]: csr.indptr[301]]
    assert 300 in csr.indices[csr.indptr[4]: csr.indptr[5]]
    with ready_client(child) as client:  # no log: 300 is one of the bundle's own nodes now
        assert client.post("/v1/score", json={"node_ids": [300]}).status_code == 200
    with ready_client(parent) as client:
        assert client.post("/v1/score", json={"node_ids": [300]}).status_code == 404
