"""Compose and write a bundle (layout in docs/bundle.md) from a finished run."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from distill import bundle, export, policy, report
from distill.errors import DistillError

if TYPE_CHECKING:
    from distill.pipeline import Distilled, Prepared


def write_bundle(out: Path, force: bool, prep: Prepared, result: Distilled, rep: dict[str, Any],
                 extra_manifest: dict[str, Any] | None = None, extra_files: dict[str, bytes] | None = None) -> None:
    """Write everything into a temp dir next to `out`, hash it, then rename it into place."""
    with bundle.staging(out, force) as tmp:
        _write(tmp, prep, result, rep, extra_manifest or {}, extra_files or {})


def _write(tmp: Path, prep: Prepared, result: Distilled, rep: dict[str, Any], extra_manifest: dict[str, Any],
           extra_files: dict[str, bytes]) -> None:
    cfg, ds, sg = result.cfg, prep.ds, result.sg
    n = ds.data.num_nodes
    csr = policy.to_csr(sg.prop_index, sg.prop_weight, n)
    arrays = {"features": ds.data.x.cpu().numpy(), "node_ids": np.arange(n, dtype=np.int64), **csr}
    graph_paths = bundle.save_graph(tmp, arrays)
    export.save(result.onnx_bytes, tmp / "student.onnx")
    buf = io.BytesIO()
    torch.save({k: v.cpu() for k, v in prep.teacher.state_dict().items()}, buf)
    (tmp / "teacher.pt").write_bytes(buf.getvalue())
    for name, blob in extra_files.items():
        (tmp / name).write_bytes(blob)
    bundle.write_json(tmp / "report.json", rep)
    (tmp / "report.md").write_text(report.markdown(rep))
    files = bundle.file_hashes(tmp)
    manifest = {
        "schema_version": bundle.SCHEMA_VERSION,
        "version": f"{ds.name}-{cfg.student}-{_served_digest(files)[:12]}",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": {"spec": cfg.dataset, "name": ds.name, "source": ds.source, "num_nodes": n,
                    "num_features": ds.data.num_features, "num_classes": ds.num_classes,
                    "class_names": list(ds.class_names)},
        "model": {"file": "student.onnx", "student": cfg.student, "num_layers": cfg.student_layers,
                  "hidden_channels": cfg.student_hidden, "inputs": export.input_names(sg.policy.propagation == "none"),
                  "outputs": ["logits"], "opset": export.OPSET,
                  "params": sum(p.numel() for p in result.student.parameters()),
                  "teacher_file": "teacher.pt"},
        "policy": {"name": "topk_in_neighbours", "score": sg.score, **sg.policy.__dict__},
        "graph": graph_paths,
        "metrics": {k: rep[k] for k in ("teacher", "scratch", "distilled")},
        "parity": result.parity.__dict__,
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "versions": bundle.library_versions(),
        **extra_manifest,
        "files": files,
    }
    bundle.write_json(tmp / "manifest.json", manifest)


def _served_digest(files: dict[str, str]) -> str:
    """sha256 over the hashes of what the service computes with (the ONNX model and the graph store): a
    refresh that changes only the graph (new nodes, new edges) still gets a new version."""
    served = sorted((k, v) for k, v in files.items() if k == "student.onnx" or k.startswith("graph/"))
    return hashlib.sha256(json.dumps(served).encode()).hexdigest()


def check_against_parent(rep: dict[str, Any], parent: dict[str, Any]) -> dict[str, Any]:
    """Manifest fields of a refreshed bundle: its parent and the metric deltas. Raises DistillError when the
    new distilled student is worse than the parent's by more than `parent["max_drop"]` (unless forced)."""
    old = parent["manifest"]["metrics"]["distilled"]
    new = rep["distilled"]
    deltas = {k: round(new[k] - old[k], 6) for k in report.METRICS if new[k] is not None and old[k] is not None}
    key = rep["selection_metric"]
    drop = -deltas.get(key, 0.0)
    if drop > parent["max_drop"] and not parent["allow_worse"]:
        raise DistillError(
            f"refreshed student is worse than its parent {parent['manifest']['version']} by {drop:.4f} {key} "
            f"(> --max-drop {parent['max_drop']}); nothing written. Pass --allow-worse to write it anyway"
        )
    return {"parent": {"version": parent["manifest"]["version"], "path": parent["path"],
                       "manifest_sha256": parent["manifest_sha256"]},
            "deltas": deltas}
