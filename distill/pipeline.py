"""The offline job: data -> teacher -> scratch and distilled students -> a bundle checked through
the service's own code, written atomically."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bundle.publish import staging
from distill import input_dropout, report, served, tail, writer
from distill.artefacts import Distilled, Prepared, Trained
from distill.config import RunConfig
from distill.data import Dataset, load_dataset
from distill.export import export_onnx
from distill.policy import neighbourhood
from distill.students import train_candidates, train_distilled
from distill.teacher import feature_norm, teacher_model, train_teacher
from distill.train import predict, resolve_device, test_metrics

# (served check of the new bundle, the run's data) -> extra manifest fields; raises to refuse the bundle.
Gate = Callable[[served.ServedCheck, Prepared], dict[str, Any]]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def prepare(cfg: RunConfig, progress: bool, teacher_state: dict[str, Tensor] | None = None,
            ds: Dataset | None = None) -> Prepared:
    """Load the data (or take `ds`, already loaded from `cfg.dataset`) and train the teacher, or
    restore it from `teacher_state` (a state_dict)."""
    device = resolve_device(cfg.device)
    ds = load_dataset(cfg.dataset, cfg.split) if ds is None else ds
    log(f"[data] {ds.name}: {ds.data.num_nodes} nodes, {ds.data.num_edges} edges, "
        f"{ds.data.num_features} features, {ds.num_classes} classes; device {device}")
    norm = feature_norm(cfg, ds)
    decision = input_dropout.decide(cfg, ds, norm, cfg.train_config, device, progress)
    dropout = decision.dropout
    log(f"[inputs] input dropout {'on' if dropout.on else 'off'} ({dropout.rule}"
        + "".join(f"; scratch val {k} {v:.4f}" for k, v in dropout.probe_val.items()) + ")")
    cfg = decision.config(cfg)
    if teacher_state is None:
        trained = train_teacher(cfg, ds, norm, cfg.train_config, device, progress)
        teacher, edges, metrics = trained.model, trained.edges, trained.metrics
    else:
        teacher, edges = teacher_model(cfg, ds, norm, device)
        teacher.load_state_dict(teacher_state)
        data = ds.data.to(device)
        metrics = {**test_metrics(predict(teacher, data, edges), data), "reused": True, "epochs_run": 0}
    log(f"[teacher{' (reused)' if teacher_state is not None else ''}] test {report.headline(metrics)}")
    return decision.prepared(cfg, ds, norm, device, teacher, edges, metrics)


def export_student(trained: Trained, x: Tensor) -> bytes:
    """The student as ONNX bytes, traced on the busiest node's cached neighbourhood (x [N, F] on CPU,
    the raw features: the policy adds any degree column)."""
    sg = trained.graph
    example = int(np.argmax(sg.csr.degree)) if not sg.policy.graph_free else 0
    nodes, adj = neighbourhood(sg, example)
    x = sg.inputs(x)
    return export_onnx(trained.model, x[torch.from_numpy(nodes)], torch.from_numpy(adj), sg.policy.graph_free)


def distill_student(cfg: RunConfig, prep: Prepared, progress: bool, tail_floor: tail.Floor | None = None
                    ) -> Distilled:
    """Train the student with `cfg.kd` (the best candidate on validation, over every objective set
    under auto), add the tail-class logit
    shift chosen on validation (`--tail-adjust`; `tail_floor`: what the scratch student reaches on
    the rarest class, see distill.tail), and export it to ONNX."""
    trained = train_distilled(cfg, prep, progress)
    if cfg.tail_adjust == "auto":
        trained = tail.adjust(trained, prep.ds.data.cpu(), tail_floor)
    return Distilled(cfg, trained, export_student(trained, prep.ds.data.x.cpu()))


def publish(out: Path, force: bool, prep: Prepared, scratch: Trained, result: Distilled,
            gate: Gate | None = None, extra: dict[str, Any] | None = None,
            extra_files: dict[str, bytes] | None = None, tolerance: float | None = served.TOLERANCE
            ) -> dict[str, Any]:
    """Stage the bundle, check it through the service's code (parity; the distilled student's
    reported test metrics are the served ones), let `gate` veto it, then rename it into place.
    Nothing is left at `out` (or changed there) when any step fails. Returns the report."""
    data = prep.ds.data.cpu()
    with staging(out, force) as tmp:
        staged = writer.stage(tmp, prep, result, extra_files)
        service = served.open_served(tmp)
        check = served.check(service, result.trained.logits.numpy(), data.y.numpy(),
                             data.val_mask.numpy(), data.test_mask.numpy(), result.cfg.seed, tolerance)
        log(f"[served] parity max |diff| {check.parity.max_abs_diff:.2e} over {check.parity.nodes_checked} nodes")
        if prep.ds.hetero is not None:
            typed = served.check_typed(service, writer.typed_links(prep.ds), data.edge_index.numpy(),
                                       check.scores.nodes, data.x.numpy())
            log(f"[served] typed links reproduce the meta-path neighbours of {typed} nodes")
        distilled = {**result.trained.record(), **check.test, "served": True}
        rep = report.build(prep.ds, result.cfg, prep.teacher_metrics, scratch.record(), distilled, check.decision)
        # The decision is served (the version covers it): the manifest takes it from the check itself.
        fields = {**(extra or {}), **(gate(check, prep) if gate is not None else {}), "decision": check.decision}
        writer.finish(tmp, staged, rep, check.parity, fields)
    return rep


def run(cfg: RunConfig, out: Path, force: bool = False, progress: bool = True,
        teacher_state: dict[str, Tensor] | None = None, gate: Gate | None = None,
        ds: Dataset | None = None) -> dict[str, Any]:
    """Run the whole job and write the bundle at `out`. Returns the report dict.

    `teacher_state` reuses a trained teacher; `gate` (from `distill refresh`) may veto the bundle;
    `ds` is the data when the caller loaded it (`distill refresh --edge-log` folds a log into it).
    """
    writer.check_target(out, force, cfg)
    started = time.perf_counter()
    prep = prepare(cfg, progress, teacher_state, ds)
    # The manifest records the decision, not auto: `distill refresh` retrains with the same inputs.
    cfg = prep.input_dropout.config(cfg)
    scratch = prep.scratch or train_candidates(cfg, prep, (), progress)  # the probe's, where it ran
    log(f"[scratch] test {report.headline(scratch.test)}")
    result = distill_student(cfg, prep, progress, tail.floor(scratch.logits, prep.ds.data.cpu()))
    log(f"[distilled {'+'.join(result.trained.kd) or 'none'}] test {report.headline(result.trained.test)}")
    rep = publish(out, force, prep, scratch, result, gate)
    rep["seconds"] = round(time.perf_counter() - started, 2)
    return rep
