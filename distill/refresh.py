"""`distill refresh`: re-distil a verified bundle with its own config on the dataset named on the
command line into a new version, gated on validation: parent and child are both scored as served,
on the same validation nodes with the same labels, and a child worse than `max_drop` is refused.

The dataset is never taken from the parent's manifest: a bundle is data from elsewhere, and a
dataset spec names files the job reads (Planetoid's are pickles). The rest of the recorded config
is numbers and names, validated by RunConfig like the command line's.

`--edge-log` folds the service's graph writes (a log bound to the parent) into that dataset first:
distill/fold.py; the child's manifest records what it folded (dataset.source["edge_log"])."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bundle import files, ids
from bundle.errors import BundleInvalid
from bundle.manifest import Manifest, Parent, RefreshGate
from distill import pipeline, served, writer
from distill.artefacts import Prepared
from distill.config import RunConfig
from distill.data import load_dataset
from distill.errors import DistillError
from distill.fold import FoldRecord, fold
from distill.metrics import evaluate
from distill.teacher_models import TEACHERS
from distill.train import selection_metric
from serve.errors import BundleError
from serve.runtime import open_service


@dataclass(frozen=True)
class Request:
    bundle: Path
    out: Path
    dataset: str
    reuse_teacher: bool = False
    max_drop: float = 0.01
    allow_worse: bool = False
    edge_log: Path | None = None


@dataclass(frozen=True)
class ParentBundle:
    """A verified parent: its manifest, the manifest's raw bytes (hashed into the child's lineage)."""

    root: Path
    manifest: Manifest
    raw: bytes


def read_parent(root: Path) -> ParentBundle:
    """The parent, opened exactly as the service opens it (hashes, arrays, model; its signature
    when the job has a key) before any training; DistillError otherwise. The manifest used is the
    one that was verified, not a second read."""
    try:
        bundle = open_service(root, key=writer.signing_key()).bundle
    except (BundleInvalid, BundleError) as exc:
        raise DistillError(f"--bundle {root}: {exc.message}; refusing to refresh") from None
    if bundle.manifest.policy.name != "topk_in_neighbours":
        raise DistillError(f"--bundle {root} is a {bundle.manifest.policy.name} (temporal) bundle, which refresh does "
                           "not re-distil yet; write the next one with `distill run --dataset <its temporal spec>`")
    return ParentBundle(root, bundle.manifest, bundle.raw_manifest)


@dataclass(frozen=True)
class ParentScores:
    """The parent's served probabilities [v, C] on `nodes` [v]: the child's validation nodes it knows."""

    nodes: np.ndarray
    probabilities: np.ndarray


def parent_validation(parent: ParentBundle, prep: Prepared, child_nodes: np.ndarray) -> ParentScores:
    """Score the child's validation nodes [v] that the parent knows, through the parent as served:
    reopened (and re-verified) after the training, and refused unless it is still the manifest
    read before it."""
    service = served.open_served(parent.root, writer.signing_key())
    if service.bundle.raw_manifest != parent.raw:
        raise DistillError(f"--bundle {parent.root} changed while the child was trained; refusing to compare")
    store = service.scorer.store
    external = prep.ds.external_ids[child_nodes]
    if ids.id_type_of(external) != store.id_type:  # int ids now, strings then (or back): no node in common
        return ParentScores(child_nodes[:0], np.zeros((0, len(service.bundle.class_names)), dtype=np.float32))
    internal, _ = store.lookup(external)  # the same node by its external id, whatever index each gave it
    known = internal >= 0
    return ParentScores(child_nodes[known], served.score(service, internal[known]).probabilities)


def gate(req: Request, parent_bundle: ParentBundle) -> pipeline.Gate:
    """The refresh gate for `publish`: compare parent and child on validation, as served."""
    parent, raw = parent_bundle.manifest, parent_bundle.raw

    def check(child: served.ServedCheck, prep: Prepared) -> dict[str, Any]:
        y, val = prep.ds.data.y.cpu().numpy(), prep.ds.data.val_mask.cpu().numpy()
        key = selection_metric(prep.ds.num_classes)
        parent_scores = parent_validation(parent_bundle, prep, np.flatnonzero(val))
        nodes = parent_scores.nodes
        lineage = Parent(version=parent.version, path=str(req.bundle), manifest_sha256=hashlib.sha256(raw).hexdigest())
        if not len(nodes):
            if req.allow_worse:
                return {"parent": lineage}
            raise DistillError(f"--bundle {req.bundle}: none of the new validation nodes is in the parent, so "
                               "parent and child cannot be compared; pass --allow-worse to write it anyway")
        rows = np.searchsorted(child.scores.nodes, nodes)  # check() scored every validation node
        parent_val = float(evaluate(parent_scores.probabilities, y[nodes])[key])
        child_val = float(evaluate(child.scores.probabilities[rows], y[nodes])[key])
        if not (np.isfinite(parent_val) and np.isfinite(child_val)):
            if req.allow_worse:
                return {"parent": lineage}
            raise DistillError(f"validation {key} is undefined on the {len(nodes)} validation nodes parent and child "
                               "share (one class only?), so they cannot be compared; pass --allow-worse to write "
                               "it anyway")
        if child_val < parent_val - req.max_drop and not req.allow_worse:
            raise DistillError(
                f"refreshed student is worse than its parent {parent.version} on validation {key}: "
                f"{child_val:.4f} < {parent_val:.4f} - --max-drop {req.max_drop} ({len(nodes)} nodes, both "
                "scored as served); nothing written. Pass --allow-worse to write it anyway")
        record = RefreshGate(metric=key, parent_val=round(parent_val, 6), child_val=round(child_val, 6),
                             nodes=len(nodes), max_drop=req.max_drop, allow_worse=req.allow_worse)
        return {"parent": lineage, "refresh": record}

    return check


def verified_teacher(parent: ParentBundle) -> bytes:
    """The bytes of the parent's teacher.pt, read once and checked against its sha256 in the
    verified manifest (a teacher file the manifest does not list is refused)."""
    rel = parent.manifest.model.teacher_file
    expected = parent.manifest.files.get(rel) if rel is not None else None
    if rel is None or expected is None:
        raise DistillError(f"--bundle {parent.root} lists no teacher file in its manifest; drop --reuse-teacher")
    data = files.inside(parent.root, rel).read_bytes()
    if hashlib.sha256(data).hexdigest() != expected:
        raise DistillError(f"--bundle {parent.root}: {rel} does not match its sha256 in the manifest")
    return data


def reused_family(cfg: RunConfig, parent: Manifest, root: Path) -> RunConfig:
    """The config with --teacher auto replaced by the family the parent kept (in its teacher
    metrics): a reused teacher.pt is one architecture, and the child's config says which."""
    if cfg.teacher != "auto":
        return cfg
    family = parent.metrics.get("teacher", {}).get("family")
    if family not in TEACHERS:  # any registered family, the type-aware ones included
        raise DistillError(f"--bundle {root}: its config says --teacher auto but its metrics do not name the family "
                           "it kept; drop --reuse-teacher")
    return replace(cfg, teacher=family)


@dataclass(frozen=True)
class Refreshed:
    report: dict[str, Any]
    parent: Manifest
    folded: FoldRecord | None = None


def refresh(req: Request, force: bool, progress: bool) -> Refreshed:
    """Run the job with the parent's config (on the dataset grown by `req.edge_log`, if any) and
    write the child at `req.out`."""
    parent_bundle = read_parent(req.bundle)
    parent = parent_bundle.manifest
    # A parent from before --input-dropout dropped its input features: its child keeps that recipe.
    cfg = RunConfig.from_dict({"input_dropout": "on", **parent.config, "dataset": req.dataset})
    folded = None
    if req.edge_log is not None:  # before any training: a log that cannot be folded costs nothing
        folded = fold(load_dataset(cfg.dataset, cfg.split), req.edge_log, parent, req.bundle)
    state = None
    if req.reuse_teacher:
        import torch

        state = torch.load(io.BytesIO(verified_teacher(parent_bundle)), map_location="cpu", weights_only=True)
        cfg = reused_family(cfg, parent, req.bundle)
    rep = pipeline.run(cfg, req.out, force=force, progress=progress, teacher_state=state, gate=gate(req, parent_bundle),
                       ds=None if folded is None else folded.ds)
    return Refreshed(rep, parent, None if folded is None else folded.record)
