"""`distill refresh`: re-distil a verified bundle with its own config (optionally on new data) into a
new version, gated on validation: parent and child are both scored as served, on the same
validation nodes with the same labels, and a child worse than `max_drop` is refused."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bundle import files
from bundle.errors import BundleInvalid
from bundle.manifest import Manifest, Parent, RefreshGate
from distill import pipeline, served
from distill.artefacts import Prepared
from distill.config import RunConfig
from distill.errors import DistillError
from distill.metrics import evaluate
from distill.train import selection_metric
from serve.runtime import open_service


@dataclass(frozen=True)
class Request:
    bundle: Path
    out: Path
    dataset: str | None = None
    reuse_teacher: bool = False
    max_drop: float = 0.01
    allow_worse: bool = False


def read_parent(root: Path) -> tuple[Manifest, bytes]:
    """The parent's manifest, after checking every file against it; DistillError otherwise."""
    try:
        manifest, raw = files.read_manifest(root)
        files.verify_files(root, manifest)
    except BundleInvalid as exc:
        raise DistillError(f"--bundle {root}: {exc.message}; refusing to refresh") from None
    return manifest, raw


def parent_validation(root: Path, prep: Prepared, child_nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Served probabilities of the parent on the child's validation nodes that it knows -> (the
    child's internal indices of those nodes [v], probabilities [v, C])."""
    service = open_service(root)
    internal, _ = service.scorer.store.lookup(child_nodes)  # child bundles use ids 0..N-1
    known = internal >= 0
    scores = served.score(service, internal[known])
    return child_nodes[known], scores.probabilities


def gate(req: Request, parent: Manifest, raw: bytes) -> pipeline.Gate:
    """The refresh gate for `publish`: compare parent and child on validation, as served."""

    def check(child: served.ServedCheck, prep: Prepared) -> dict[str, Any]:
        y, val = prep.ds.data.y.cpu().numpy(), prep.ds.data.val_mask.cpu().numpy()
        key = selection_metric(prep.ds.num_classes)
        nodes, parent_probs = parent_validation(req.bundle, prep, np.flatnonzero(val))
        lineage = Parent(version=parent.version, path=str(req.bundle), manifest_sha256=hashlib.sha256(raw).hexdigest())
        if not len(nodes):
            if req.allow_worse:
                return {"parent": lineage}
            raise DistillError(f"--bundle {req.bundle}: none of the new validation nodes is in the parent, so "
                               "parent and child cannot be compared; pass --allow-worse to write it anyway")
        rows = np.searchsorted(child.scores.nodes, nodes)  # check() scored every validation node
        parent_val = float(evaluate(parent_probs, y[nodes])[key])
        child_val = float(evaluate(child.scores.probabilities[rows], y[nodes])[key])
        if child_val < parent_val - req.max_drop and not req.allow_worse:
            raise DistillError(
                f"refreshed student is worse than its parent {parent.version} on validation {key}: "
                f"{child_val:.4f} < {parent_val:.4f} - --max-drop {req.max_drop} ({len(nodes)} nodes, both "
                "scored as served); nothing written. Pass --allow-worse to write it anyway")
        record = RefreshGate(metric=key, parent_val=round(parent_val, 6), child_val=round(child_val, 6),
                             nodes=len(nodes), max_drop=req.max_drop, allow_worse=req.allow_worse)
        return {"parent": lineage, "refresh": record}

    return check


def refresh(req: Request, force: bool, progress: bool) -> tuple[dict[str, Any], Manifest]:
    """Run the job with the parent's config and write the child at `req.out` -> (report, parent)."""
    parent, raw = read_parent(req.bundle)
    values = dict(parent.config)
    if req.dataset:
        values["dataset"] = req.dataset
    cfg = RunConfig.from_dict(values)
    state = None
    if req.reuse_teacher:
        import torch

        if parent.model.teacher_file is None:
            raise DistillError(f"--bundle {req.bundle} has no teacher file; drop --reuse-teacher")
        state = torch.load(files.inside(req.bundle, parent.model.teacher_file), map_location="cpu", weights_only=True)
    return pipeline.run(cfg, req.out, force=force, progress=progress, teacher_state=state,
                        gate=gate(req, parent, raw)), parent
