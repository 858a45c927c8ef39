"""Writing a bundle through the contract (bundle.files, bundle.manifest): the served files first,
then, once the served check has passed, the report and the final manifest."""

from __future__ import annotations

import io
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bundle import files, publish, signing, typed
from bundle.errors import BundleInvalid
from bundle.manifest import (
    SCHEMA_VERSION,
    DatasetInfo,
    GraphFiles,
    Manifest,
    Parity,
    Reproducibility,
    StudentModel,
)
from distill import report
from distill.artefacts import Distilled, Prepared
from distill.config import RunConfig
from distill.data import Dataset, load_dataset
from distill.errors import ConfigError, DistillError
from distill.export import OPSET, input_names
from distill.models import takes_mean

# Room for what the estimate does not size: student.onnx, teacher.pt, reports, manifest, fs overhead.
SPACE_MARGIN = 32 << 20


def check_target(out: Path, force: bool, cfg: RunConfig | None = None) -> None:
    """Fail before any work when `out` cannot receive a bundle: it exists without `force`, it is not
    a directory, no writable ancestor, or (given `cfg`) too little free space for the estimate.
    First, what killed jobs left next to `out` is cleaned up (bundle.publish.clean_stale)."""
    cleaned = publish.clean_stale(out)
    if cleaned.restored is not None:
        print(f"[publish] {out} was missing after a killed run: restored the previous bundle from "
              f"{cleaned.restored.name}", file=sys.stderr)
    if cleaned.removed:
        print(f"[publish] removed {len(cleaned.removed)} folder(s) left next to {out} by killed runs",
              file=sys.stderr)
    if out.exists() and not force:
        raise ConfigError(f"--out {out} already exists; choose a new directory or pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    if force and out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        # --force replaces a bundle; a folder of something else (`--out . --force`) is never deleted.
        raise ConfigError(f"--out {out} holds files but no bundle (no manifest.json); --force replaces only "
                          "a bundle: choose a new or empty directory")
    # Missing parents are created when the bundle is written (after the work succeeded); the nearest
    # existing ancestor must be a writable directory.
    ancestor = out.resolve().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK):
        raise ConfigError(f"--out {out}: {ancestor} is not a writable directory")
    if cfg is not None:
        check_space(out, estimate_bytes(cfg))


def estimate_bytes(cfg: RunConfig) -> int:
    """Bytes the bundle of `cfg` will take, sized from the dataset (loaded once more here: 0.1 s for
    Tolokers or Amazon, against the minutes of training it protects): features N*F float32, node
    ids (int64, or 4 bytes per character of the longest string id), indptr and in-degree int64, at
    most min(E, N*fanout) pruned edges plus N self-loops at 12 bytes each, the neighbour mean N*F
    float32 when a student family the run may keep takes it, and SPACE_MARGIN. With
    --force the old bundle stays until the swap, so all of it is new space."""
    ds = load_dataset(cfg.dataset, cfg.split)
    data = ds.data
    n, f, e = int(data.num_nodes), int(data.num_features), int(data.num_edges)
    entries = min(e, n * cfg.fanout) + n
    mean = 4 * n * f if any(takes_mean(s, f) for s in cfg.students) else 0
    return 4 * n * f + mean + ds.external_ids.nbytes + 8 * (2 * n + 1) + 12 * entries + SPACE_MARGIN


def check_space(out: Path, need: int) -> None:
    """ConfigError (exit 2, one line) when the disk that will hold `out` has less than `need` free."""
    free = publish.free_bytes(out)
    if free < need:
        raise ConfigError(f"--out {out}: the bundle needs about {_mib(need)} free but its disk has {_mib(free)}; "
                          "free some space there or choose --out on another disk")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def reproducibility() -> Reproducibility:
    """Thread count and library versions: what a rerun must match to give the same version string."""
    import onnx
    import onnxruntime
    import torch_geometric

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "torch_geometric": torch_geometric.__version__, "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}
    return Reproducibility(threads=torch.get_num_threads(), versions=versions)


def stage(root: Path, prep: Prepared, result: Distilled, extra_files: dict[str, bytes] | None = None) -> Manifest:
    """Write what the service reads (graph store, student.onnx) and the teacher into `root`, with a
    provisional manifest (no metrics, no parity yet) so the staged bundle can be opened as served."""
    data, sg = prep.ds.data, result.trained.graph
    arrays = files.GraphArrays(data.x.cpu().numpy().astype(np.float32), prep.ds.external_ids, sg.csr, sg.in_degree,
                               sg.neighbour_mean)
    section = None if prep.ds.hetero is None else typed_section(root, prep.ds)
    graph = GraphFiles(**files.save_graph(root, arrays), id_type=arrays.id_type, typed=section)
    (root / "student.onnx").write_bytes(result.onnx_bytes)
    buf = io.BytesIO()
    torch.save({k: v.cpu() for k, v in prep.teacher.state_dict().items()}, buf)
    (root / "teacher.pt").write_bytes(buf.getvalue())
    for name, blob in (extra_files or {}).items():
        (root / name).write_bytes(blob)
    manifest = _manifest(root, prep, result, graph, {})
    files.write_manifest(root, manifest)
    return manifest


def via_types(ds: Dataset) -> list[str]:
    """The via types of the meta-paths the student is served on, read from the view the loader
    recorded (`paper-author-paper`, `transaction-user-transaction + transaction-device-transaction`).
    DistillError when there is none to read: the bundle could not expand typed links."""
    from distill.hetero import target_type

    assert ds.hetero is not None
    target, view = target_type(ds.hetero), str(ds.source.get("view", ""))
    paths = [part.strip().split("-") for part in view.split("+")]
    if not view or any(len(p) != 3 or p[0] != target or p[2] != target for p in paths):
        raise DistillError(f"dataset {ds.name}: its view {view!r} names no {target}-VIA-{target} meta-paths; "
                           "a typed bundle needs them (distill/data.py records the view of acm: and synthetic-hetero)")
    return [p[1] for p in paths]


def typed_links(ds: Dataset) -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
    """Per via type of `ds.hetero`: (its target -> via relation, target [E], via [E] internal indices)."""
    from distill.hetero import target_type

    graph = ds.hetero
    assert graph is not None
    target, found = target_type(graph), {}
    for name in via_types(ds):
        rel = next((r for (src, r, dst) in graph.edge_types if src == target and dst == name), None)
        if rel is None:
            raise DistillError(f"dataset {ds.name}: no relation from {target!r} to the via type {name!r}")
        t, v = graph[target, rel, name].edge_index.cpu().numpy()
        found[name] = (rel, t, v)
    return found


def typed_section(root: Path, ds: Dataset) -> typed.TypedGraph:
    """Write the typed arrays of a meta-path bundle (bundle.typed): every node type of `ds.hetero`
    with its count and whether the student reads it, and per via type the via -> target incidence."""
    from distill.hetero import target_type

    graph = ds.hetero
    assert graph is not None
    target, links = target_type(graph), typed_links(ds)
    types = [(name, int(graph[name].num_nodes), name == target or name in links) for name in graph.node_types]
    incidence = {name: (rel, typed.Incidence.from_pairs(t, v, int(graph[name].num_nodes)))
                 for name, (rel, t, v) in links.items()}
    return typed.save(root, target, int(ds.data.num_features), types, incidence)


def finish(root: Path, staged: Manifest, rep: dict[str, Any], parity: Parity, extra: dict[str, Any]) -> Manifest:
    """Add the report, re-hash every file, and write the final manifest (`extra`: decision, parent,
    refresh, selection)."""
    files.write_json(root / "report.json", rep)
    (root / "report.md").write_text(report.markdown(rep))
    metrics = {k: rep[k] for k in report.ROLES}
    manifest = staged.model_copy(update={"metrics": metrics, "parity": parity, "files": files.file_hashes(root),
                                         **extra})
    return seal(root, manifest)


def seal(root: Path, manifest: Manifest) -> Manifest:
    """Write the final, versioned `manifest` into the staged bundle at `root`, sign it when
    DISTILL_BUNDLE_KEY is set, and read the bundle back as a reader will (model_copy does not
    validate): a bundle this job cannot open itself must never be renamed into place."""
    files.write_manifest(root, files.with_version(manifest))
    key = signing_key()
    if key is not None:
        signing.sign(root, key)
    try:
        return files.open_bundle(root, key).manifest
    except BundleInvalid as exc:
        raise DistillError(f"the bundle just written does not read back: {exc.message}") from None


def _manifest(root: Path, prep: Prepared, result: Distilled, graph: GraphFiles, metrics: dict[str, Any]) -> Manifest:
    cfg, ds, trained = result.cfg, prep.ds, result.trained
    hashes = files.file_hashes(root)
    student = trained.student  # the family --student auto kept
    model = StudentModel(file="student.onnx", student=student, num_layers=cfg.student_layers,
                         hidden_channels=cfg.student_hidden, inputs=input_names(trained.graph.policy.graph_free),
                         outputs=["logits"], opset=OPSET, params=sum(p.numel() for p in trained.model.parameters()),
                         teacher_file="teacher.pt")
    dataset = DatasetInfo(spec=cfg.dataset, name=ds.name, source=ds.source, num_nodes=ds.data.num_nodes,
                          num_features=ds.data.num_features, num_classes=ds.num_classes,
                          class_names=list(ds.class_names))
    manifest = Manifest(schema_version=SCHEMA_VERSION, version="", created_at=_now(), dataset=dataset, model=model,
                        policy=trained.graph.policy, graph=graph, metrics=metrics, config=cfg.to_dict(), seed=cfg.seed,
                        reproducibility=reproducibility(), files=hashes)
    return files.with_version(manifest)


def signing_key() -> bytes | None:
    """The HMAC key bundles are signed with (DISTILL_BUNDLE_KEY; None = unsigned); ConfigError if weak."""
    try:
        return signing.key_from_env(signing.JOB_KEY_ENV)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
