"""`distill run --dataset bitcoin-otc:PATH` (or `temporal:PATH`): the temporal student as a bundle.

One split seed of the experiment (distill.temporal.experiment.run_seed: baseline, teacher, scratch
and distilled students, one model for every k, trained on the union of the k = 1..10 snapshots of
the training users, the distilled weight chosen on validation), then the same publishing path as
every bundle: staged under bundle.publish.staging, checked through the service's own code
(distill.temporal.served: every validation / test (user, t) scored as of t, parity with torch
<= 1e-4, per-k metrics and the decision threshold from the served scores), signed, renamed into place.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bundle import files
from bundle.manifest import SCHEMA_VERSION, DatasetInfo, Manifest, StudentModel, TemporalGraphFiles, TemporalRecent
from bundle.publish import staging
from bundle.temporal import FEATURES, RELATIONS
from distill import served, writer
from distill.export import OPSET
from distill.temporal import served as temporal_served
from distill.temporal.data import TemporalDataset, load_temporal
from distill.temporal.experiment import ROLES, ExperimentConfig, Prepared, SeedResult, prepare, run_seed
from distill.temporal.export import export_student, torch_target_logits
from distill.temporal.protocol import EVAL_KS, stratified_split

CLASS_NAMES = {"bitcoin-otc": ["benign", "fraudulent"]}  # other temporal datasets: negative / positive


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _arrays(data: TemporalDataset) -> files.TemporalArrays:
    """The bundle's edge store: the dataset's edges in time order (a stable sort keeps the order of
    edges at the same second, so every block is the one the job trained on)."""
    s = data.store
    order = np.argsort(s.time, kind="stable")
    return files.TemporalArrays(data.raw_ids.astype(np.int64), s.src[order], s.dst[order], s.time[order],
                                s.rating[order])


def _examples(prep: Prepared, data: TemporalDataset, seed: int) -> dict[str, np.ndarray]:
    """Masks over prep.labelled of the validation and test examples at the evaluated k."""
    split = stratified_split(data.labelled, data.labels, seed)
    ex, evals = prep.labelled, np.isin(prep.labelled.k, EVAL_KS)
    return {"val": np.isin(ex.node, split.val) & evals, "test": np.isin(ex.node, split.test) & evals}


def _manifest(root: Path, spec: str, data: TemporalDataset, result: SeedResult, cfg: ExperimentConfig,
              graph: TemporalGraphFiles, arrays: files.TemporalArrays) -> Manifest:
    student, p = result.student, cfg.student_policy
    names = CLASS_NAMES.get(data.name, ["negative", "positive"])
    dataset = DatasetInfo(spec=spec, name=data.name,
                          source={"edges": int(len(arrays.src)), "labelled_users": int(len(data.labelled))},
                          num_nodes=len(arrays.node_ids), num_features=len(FEATURES), num_classes=2, class_names=names)
    model = StudentModel(file="student.onnx", student="temporal_student", num_layers=len(student.self_lins),
                         hidden_channels=student.inp.out_features, inputs=["x", "adj"], outputs=["logits"],
                         opset=OPSET, params=sum(q.numel() for q in student.parameters()))
    rating = arrays.rating.astype(np.float64)
    policy = TemporalRecent(name="temporal_recent", fanout=p.fanout, k_hops=p.k_hops, both_directions=p.both_directions,
                            features=list(FEATURES), relations=list(RELATIONS),
                            rating_min=float(rating.min(initial=0.0)), rating_max=float(rating.max(initial=0.0)))
    config = {"dataset": spec, "seed": result.seed, "kd_weight": result.kd_weight, **_jsonable(asdict(cfg))}
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest = Manifest(schema_version=SCHEMA_VERSION, version="", created_at=created, dataset=dataset,
                        model=model, policy=policy, graph=graph, metrics={}, config=config, seed=result.seed,
                        reproducibility=writer.reproducibility(), files=files.file_hashes(root))
    return files.with_version(manifest)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def build_report(data: TemporalDataset, result: SeedResult, check: temporal_served.TemporalCheck,
                 val_mean: float) -> dict[str, Any]:
    """report.json: every role's torch test scores per k, and the distilled student as served."""
    roles = {role: {str(k): {"auroc": round(s.auroc, 6), "pr_auc": round(s.pr_auc, 6)}
                    for k, s in result.test[role].items()} for role in ROLES}
    users = {str(k): v for k, v in result.users_per_k.items()}
    return {"dataset": data.name, "seed": result.seed, "users_per_k": users,
            "selection_metric": "val_mean_auroc", "val_mean_auroc": round(val_mean, 6),
            "val": {role: round(v, 6) for role, v in result.val.items()}, "test": roles,
            "served": temporal_served.report_rows(check), "kd_weight": result.kd_weight,
            "parity": check.parity.model_dump(), "decision": None if check.decision is None else
            check.decision.model_dump(exclude_none=True)}


def markdown(rep: dict[str, Any]) -> str:
    """A short table of the served test AUROC / PR-AUC per k, with the torch roles beside it."""
    ks = list(rep["served"]["test"])
    lines = [f"# {rep['dataset']}: temporal student (seed {rep['seed']})", "",
             "| test AUROC / PR-AUC | " + " | ".join(f"k = {k} ({rep['users_per_k'][k]} users)" for k in ks) + " |",
             "|---|" + "---|" * len(ks)]
    rows = [(role, rep["test"][role]) for role in ROLES] + [("distilled, served", rep["served"]["test"])]
    for name, per_k in rows:
        lines.append(f"| {name} | " + " | ".join(f"{per_k[k]['auroc']:.3f} / {per_k[k]['pr_auc']:.3f}" for k in ks)
                     + " |")
    parity = rep["parity"]
    lines += ["", f"Parity served vs torch: max |diff| {parity['max_abs_diff']:.2e} over {parity['nodes_checked']} "
                  "(user, t) examples."]
    return "\n".join(lines) + "\n"


def _finish(root: Path, staged: Manifest, rep: dict[str, Any], check: temporal_served.TemporalCheck) -> Manifest:
    files.write_json(root / "report.json", rep)
    (root / "report.md").write_text(markdown(rep))
    metrics = {"selection_metric": rep["selection_metric"], "val_mean_auroc": rep["val_mean_auroc"],
               "served_test": rep["served"]["test"], "test": rep["test"], "users_per_k": rep["users_per_k"]}
    manifest = staged.model_copy(update={"metrics": metrics, "parity": check.parity, "decision": check.decision,
                                         "files": files.file_hashes(root)})
    return writer.seal(root, manifest)


def run(spec: str, out: Path, force: bool = False, seed: int = 0, progress: bool = True,
        cfg: ExperimentConfig | None = None) -> dict[str, Any]:
    """Train on one split seed and write the temporal bundle at `out` -> the report."""
    cfg = ExperimentConfig() if cfg is None else cfg
    writer.check_target(out, force)
    started = time.perf_counter()
    data = load_temporal(spec)
    log(f"[data] {data.name}: {data.store.num_nodes} users, {len(data.store.src)} rated edges, "
        f"{len(data.labelled)} labelled")
    prep = prepare(data, cfg, progress)
    result = run_seed(data, prep, seed, cfg, progress)
    masks = _examples(prep, data, seed)
    val, test = (prep.labelled.subset(masks[s]) for s in ("val", "test"))
    torch_logits = {s: torch_target_logits(result.student, [b for b, m in zip(prep.student_blocks, masks[s],
                                                                              strict=True) if m]) for s in masks}
    example = max(prep.student_blocks, key=lambda b: len(b.nodes))
    onnx = export_student(result.student, example)
    arrays = _arrays(data)
    with staging(out, force) as tmp:
        graph = TemporalGraphFiles(**files.save_graph(tmp, arrays), id_type=arrays.id_type)
        (tmp / "student.onnx").write_bytes(onnx)
        staged = _manifest(tmp, spec, data, result, cfg, graph, arrays)
        files.write_manifest(tmp, staged)
        check = temporal_served.check(served.open_served(tmp), val, test, torch_logits["val"], torch_logits["test"],
                                      staged.dataset.class_names)
        log(f"[served] parity max |diff| {check.parity.max_abs_diff:.2e} over {check.parity.nodes_checked} examples")
        rep = build_report(data, result, check, result.val["distilled"])
        _finish(tmp, staged, rep, check)
    rep["seconds"] = round(time.perf_counter() - started, 2)
    return rep

