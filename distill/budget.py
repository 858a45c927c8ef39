"""`distill select`: the most accurate student on validation whose served latency fits a budget.

One teacher; a grid of distilled candidates (architecture x depth x width, optionally each with its
own fan-out, plus optional int8 copies). Each is staged as a real bundle and timed through the
service's own scoring path (serve.runtime.open_service: id lookup, cached block, feature gather,
onnxruntime, softmax), one node per call and in batches; `--http` adds a real `python -m serve`
process timed over HTTP, and the budget then applies to that. Accuracy is the served student's, on
validation.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from distill import pipeline, served, writer
from distill.artefacts import Distilled, Prepared
from distill.budget_report import Row, select_table
from distill.choose import best_on_validation
from distill.config import RunConfig
from distill.errors import ConfigError, DistillError
from distill.latency import time_http, time_service
from distill.models import propagation_of
from distill.students import train_candidates
from distill.train import selection_metric

INT8_AGREEMENT = 0.99  # int8 copy kept only if >= 99 % of validation predictions match the float student
INT8_MAX_PROB_DIFF = 0.05  # ... and no validation probability moves by more than this


@dataclass(frozen=True)
class Candidate:
    """One `--grid` entry: a student family, its depth and width, and optionally its own fan-out
    (in-neighbours kept per node at every hop; None: the run's --fanout). On a graph with hubs the
    neighbourhood, not the model, is most of a call's cost, so it is a size to select on too."""

    student: str
    layers: int
    hidden: int
    fanout: int | None = None

    @property
    def name(self) -> str:
        return f"{self.student}-{self.layers}x{self.hidden}" + (f"-f{self.fanout}" if self.fanout else "")

    @classmethod
    def parse(cls, text: str) -> Candidate:
        """`gcn:2:64` -> Candidate("gcn", 2, 64); `sage-res:2:64:5` -> fan-out 5."""
        parts = text.split(":")
        sizes = parts[1:]
        if len(parts) not in (3, 4) or not all(p.isdigit() and int(p) > 0 for p in sizes):
            raise ConfigError(f"--grid entry {text!r}: expected STUDENT:LAYERS:HIDDEN or STUDENT:LAYERS:HIDDEN:FANOUT "
                              "with positive integers, e.g. gcn:2:64 or sage-res:2:64:5")
        propagation_of(parts[0])
        return cls(parts[0], *(int(p) for p in sizes))

    def config(self, cfg: RunConfig) -> RunConfig:
        """`cfg` with this candidate's student, depth, width and (when it has one) fan-out."""
        fanout = {"fanout": self.fanout} if self.fanout else {}
        return replace(cfg, student=self.student, student_layers=self.layers, student_hidden=self.hidden, **fanout)


@dataclass(frozen=True)
class Options:
    budget_ms: float
    calls: int = 1000
    int8: bool = False
    http_calls: int = 0  # 0 = no HTTP measurement


@contextmanager
def staged(prep: Prepared, result: Distilled) -> Iterator[Path]:
    """The candidate as a real bundle in a temporary directory (removed afterwards)."""
    root = Path(tempfile.mkdtemp(prefix="distill-select-"))
    try:
        writer.stage(root, prep, result)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class Measured:
    """A staged, checked and timed candidate: its table row and its served scores."""

    row: Row
    scores: served.ServedScores


def measure(name: str, prep: Prepared, result: Distilled, opts: Options, key: str, teacher_test: float,
            reference: served.ServedScores | None = None) -> Measured | None:
    """Stage, check and time one candidate. A float candidate must match torch (parity, else
    ParityError); an int8 copy must agree with its float `reference` on validation, else None."""
    data = prep.ds.data.cpu()
    y, val, test = data.y.numpy(), data.val_mask.numpy(), data.test_mask.numpy()
    with staged(prep, result) as root:
        service = served.open_served(root)  # once: checked, scored and timed as loaded
        if reference is None:
            scores = served.check(service, result.trained.logits.numpy(), y, val, test, result.cfg.seed).scores
        else:
            scores = served.score(service, reference.nodes)
            if not _agrees(scores, reference, val):
                return None
        timing = time_service(service, opts.calls, result.cfg.seed)
        if opts.http_calls:
            ids = service.scorer.store.node_ids
            timing = replace(timing, http=time_http(root, ids, opts.http_calls, result.cfg.seed))
    val_m, test_m = served.metrics_on(scores, y, val)[key], served.metrics_on(scores, y, test)[key]
    params = sum(p.numel() for p in result.trained.model.parameters())
    row = Row(name, params, len(result.onnx_bytes), timing, float(val_m), float(test_m), float(test_m) - teacher_test)
    return Measured(row, scores)


def _agrees(q: served.ServedScores, f: served.ServedScores, val_mask: np.ndarray) -> bool:
    rows = np.flatnonzero(val_mask[f.nodes])
    pq, pf = q.probabilities[rows], f.probabilities[rows]
    agree = float((pq.argmax(1) == pf.argmax(1)).mean())
    return agree >= INT8_AGREEMENT and float(np.abs(pq - pf).max()) <= INT8_MAX_PROB_DIFF


def int8_copy(onnx_bytes: bytes) -> bytes:
    """Dynamic int8 quantisation of an ONNX model (weights int8, activations quantised per call)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = Path(tempfile.mkdtemp())
    try:
        (tmp / "f.onnx").write_bytes(onnx_bytes)
        logging.disable(logging.WARNING)  # the quantiser logs advice to the root logger on every call
        quantize_dynamic(str(tmp / "f.onnx"), str(tmp / "q.onnx"), weight_type=QuantType.QInt8)
        return (tmp / "q.onnx").read_bytes()
    finally:
        logging.disable(logging.NOTSET)
        shutil.rmtree(tmp, ignore_errors=True)


def candidates(cfg: RunConfig, prep: Prepared, grid: list[Candidate], opts: Options, key: str, teacher_test: float,
               progress: bool) -> tuple[list[Row], dict[str, Distilled]]:
    """Train, stage and time every grid candidate (and its int8 copy when asked)."""
    rows, results = [], {}
    for cand in grid:
        result = pipeline.distill_student(cand.config(cfg), prep, progress)
        measured = measure(cand.name, prep, result, opts, key, teacher_test)
        assert measured is not None  # a float candidate either passes parity or raises
        rows.append(measured.row)
        results[cand.name] = result
        pipeline.log(f"[select] {cand.name}: val {key} {rows[-1].val_metric:.4f}, p99 {rows[-1].p99_ms:.3f} ms")
        if opts.int8:
            quant = replace(result, onnx_bytes=int8_copy(result.onnx_bytes))
            q = measure(cand.name + "-int8", prep, quant, opts, key, teacher_test, reference=measured.scores)
            if q is not None:
                rows.append(q.row)
                results[q.row.name] = quant
    return rows, results


def choose(rows: list[Row], budget_ms: float) -> Row | None:
    """Most accurate on validation among the rows whose p99 fits; ties -> fewer parameters, then bytes."""
    fits = [(r.name, lambda r=r: r) for r in rows if r.p99_ms <= budget_ms]
    return best_on_validation(fits, key=lambda r: (r.val_metric, -r.params, -r.bytes)).item if fits else None


def run_select(cfg: RunConfig, grid: list[Candidate], opts: Options, out: Path, force: bool,
               progress: bool) -> dict[str, Any]:
    """Distil, stage and time every candidate; write the chosen bundle with select.{json,md,png}."""
    from distill.budget_report import plot, summary_json

    writer.check_target(out, force, cfg)
    prep = pipeline.prepare(cfg, progress)
    cfg = prep.input_dropout.config(cfg)  # every candidate's manifest records the run's decision
    key = selection_metric(prep.ds.num_classes)
    teacher_test = float(prep.teacher_metrics[key])
    rows, results = candidates(cfg, prep, grid, opts, key, teacher_test, progress)
    chosen = choose(rows, opts.budget_ms)
    summary = {"budget_ms": opts.budget_ms, "timed": "http" if opts.http_calls else "served", "metric": key,
               "teacher_test_metric": teacher_test, "candidates": [r.to_dict() for r in rows]}
    if chosen is None:
        print(select_table(summary))
        fastest = min(rows, key=lambda r: r.p99_ms)
        raise DistillError(f"no candidate meets --latency-budget-ms {opts.budget_ms}: the fastest, {fastest.name}, "
                           f"has p99 {fastest.p99_ms:.3f} ms; raise the budget or add smaller candidates")
    for c in summary["candidates"]:
        c["chosen"] = c["name"] == chosen.name
    result = results[chosen.name]
    scratch = train_candidates(result.cfg, prep, (), progress)
    files = {"select.json": summary_json(summary), "select.md": select_table(summary).encode(),
             "select.png": plot(summary)}
    selection = {"budget_ms": opts.budget_ms, "timed": summary["timed"], "chosen": chosen.to_dict()}
    int8 = chosen.name.endswith("-int8")
    pipeline.publish(out, force, prep, scratch, result, extra={"selection": selection}, extra_files=files,
                     tolerance=None if int8 else served.TOLERANCE)
    return summary
