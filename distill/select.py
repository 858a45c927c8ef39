"""Pick the student that meets a latency budget with the least accuracy loss.

One teacher; a grid of distilled candidates (architecture × depth × width, plus optional int8
copies). Each is exported, checked, and timed the way the service runs it: an onnxruntime CPU
session with one intra-op thread and no spinning, on real cached neighbourhoods, each call
including the gather of the neighbourhood's features. The most accurate candidate on validation
whose p99 fits the budget wins (tie -> fewer parameters).
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

from distill import bundle, pipeline, policy, report, writer
from distill.config import RunConfig
from distill.errors import ConfigError, DistillError
from distill.metrics import evaluate
from distill.train import selection_metric

DEFAULT_GRID = ("gcn:2:16", "gcn:2:64", "gcn:2:128", "gcn:3:64", "sage:2:32", "sage:2:64",
                "mlp:2:64", "mlp:2:256", "mlp:3:256")
INT8_AGREEMENT = 0.99  # int8 copy kept only if >= 99 % of test predictions match the float student
INT8_MAX_PROB_DIFF = 0.05  # ... and no test probability moves by more than this


@dataclass(frozen=True)
class Candidate:
    student: str
    layers: int
    hidden: int

    @property
    def name(self) -> str:
        return f"{self.student}-{self.layers}x{self.hidden}"

    @classmethod
    def parse(cls, text: str) -> Candidate:
        """`gcn:2:64` -> Candidate("gcn", 2, 64)."""
        parts = text.split(":")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            raise ConfigError(f"--grid entry {text!r}: expected STUDENT:LAYERS:HIDDEN, e.g. gcn:2:64")
        pipeline.propagation_of(parts[0])
        return cls(parts[0], int(parts[1]), int(parts[2]))


def latency(onnx_bytes: bytes, result: pipeline.Distilled, ds_x: np.ndarray, calls: int, seed: int,
            threads: int = 1) -> tuple[float, float]:
    """(p50, p99) in ms of one scoring call: gather features of a cached neighbourhood + session.run."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    sg, n = result.sg, ds_x.shape[0]
    nodes = np.random.default_rng(seed).choice(n, size=min(n, 200), replace=False)
    cache = []
    for node in nodes.tolist():
        subset, adj, _ = policy.neighbourhood(node, sg.policy.k_hops, sg.prop_index, sg.prop_weight, n)
        cache.append((subset.numpy(), adj.numpy()))
    graph_free = sg.policy.propagation == "none"
    times = []
    for i in range(calls + 50):
        subset, adj = cache[i % len(cache)]
        start = time.perf_counter()
        feeds = {"x": ds_x[subset]}
        if not graph_free:
            feeds["adj"] = adj
        session.run(["logits"], feeds)
        if i >= 50:  # warm-up calls are not measured
            times.append(time.perf_counter() - start)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def _val_test(logits: torch.Tensor, data: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    out = []
    for mask in (data.val_mask, data.test_mask):
        probs = F.softmax(logits[mask], -1).numpy()
        out.append(evaluate(probs, data.y[mask].numpy()))
    return out[0], out[1]


def _row(name: str, result: pipeline.Distilled, blob: bytes, p50: float, p99: float, key: str,
         logits: torch.Tensor, data: Any, teacher_test: float) -> dict[str, Any]:
    val, test = _val_test(logits, data)
    return {"name": name, "params": sum(p.numel() for p in result.student.parameters()), "bytes": len(blob),
            "p50_ms": round(p50, 4), "p99_ms": round(p99, 4), "val_metric": val[key], "test_metric": test[key],
            "gap_to_teacher": round(test[key] - teacher_test, 6), "chosen": False}


def _int8(result: pipeline.Distilled, prep: pipeline.Prepared) -> tuple[bytes, torch.Tensor] | None:
    """Dynamic int8 quantisation; returns (bytes, full-graph logits) if within tolerance, else None."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = Path(tempfile.mkdtemp())
    try:
        (tmp / "f.onnx").write_bytes(result.onnx_bytes)
        logging.disable(logging.WARNING)  # the quantiser logs advice to the root logger on every call
        quantize_dynamic(str(tmp / "f.onnx"), str(tmp / "q.onnx"), weight_type=QuantType.QInt8)
        blob = (tmp / "q.onnx").read_bytes()
    finally:
        logging.disable(logging.NOTSET)
        shutil.rmtree(tmp, ignore_errors=True)
    logits = _served_logits(blob, result, prep)
    test = prep.ds.data.test_mask
    p_f, p_q = F.softmax(result.logits[test], -1), F.softmax(logits[test], -1)
    agree = float((p_f.argmax(-1) == p_q.argmax(-1)).float().mean())
    if agree < INT8_AGREEMENT or float((p_f - p_q).abs().max()) > INT8_MAX_PROB_DIFF:
        return None
    return blob, logits


def _served_logits(blob: bytes, result: pipeline.Distilled, prep: pipeline.Prepared) -> torch.Tensor:
    """Logits [N, C] of the validation and test nodes (zeros elsewhere), each computed the way the
    service computes it: the ONNX model on the node's cached neighbourhood."""
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    data, sg = prep.ds.data.cpu(), result.sg
    logits = torch.zeros(data.num_nodes, result.logits.size(1))
    for node in (data.val_mask | data.test_mask).nonzero().view(-1).tolist():
        subset, adj, local = policy.neighbourhood(node, sg.policy.k_hops, sg.prop_index, sg.prop_weight,
                                                  data.num_nodes)
        feeds = {"x": data.x[subset].numpy()}
        if sg.policy.propagation != "none":
            feeds["adj"] = adj.numpy()
        logits[node] = torch.from_numpy(session.run(["logits"], feeds)[0][local])
    return logits


def choose(rows: list[dict[str, Any]], budget_ms: float) -> dict[str, Any] | None:
    """Most accurate on validation among those whose p99 fits; ties -> fewer parameters, then fewer bytes."""
    fits = [r for r in rows if r["p99_ms"] <= budget_ms]
    return max(fits, key=lambda r: (r["val_metric"], -r["params"], -r["bytes"])) if fits else None


def run_select(cfg: RunConfig, grid: list[Candidate], budget_ms: float, out: Path, force: bool,
               progress: bool, int8: bool, calls: int = 1000) -> dict[str, Any]:
    """Distil, export and time every candidate; write the chosen bundle with select.{json,md,png}."""
    bundle.check_target(out, force)
    prep = pipeline.prepare(cfg, progress)
    data, x = prep.ds.data.cpu(), prep.ds.data.x.cpu().numpy()
    key = selection_metric(prep.ds.num_classes)
    teacher_test = float(prep.teacher_metrics[key])
    rows, results = [], {}
    for cand in grid:
        ccfg = replace(cfg, student=cand.student, student_layers=cand.layers, student_hidden=cand.hidden)
        result = pipeline.distill_student(ccfg, prep, progress)
        p50, p99 = latency(result.onnx_bytes, result, x, calls, cfg.seed)
        rows.append(_row(cand.name, result, result.onnx_bytes, p50, p99, key, result.logits, data, teacher_test))
        results[cand.name] = (result, result.onnx_bytes)
        pipeline.log(f"[select] {cand.name}: val {key} {rows[-1]['val_metric']:.4f}, p99 {p99:.3f} ms")
        quant = _int8(result, prep) if int8 else None
        if quant is not None:
            q50, q99 = latency(quant[0], result, x, calls, cfg.seed)
            rows.append(_row(cand.name + "-int8", result, quant[0], q50, q99, key, quant[1], data, teacher_test))
            results[cand.name + "-int8"] = (result, quant[0])
    chosen = choose(rows, budget_ms)
    summary = {"budget_ms": budget_ms, "metric": key, "teacher_test_metric": teacher_test, "candidates": rows}
    if chosen is None:
        print(select_table(summary))
        fastest = min(rows, key=lambda r: r["p99_ms"])
        raise DistillError(f"no candidate meets --latency-budget-ms {budget_ms}: the fastest, {fastest['name']}, "
                           f"has p99 {fastest['p99_ms']:.3f} ms; raise the budget or add smaller candidates")
    chosen["chosen"] = True
    result, blob = results[chosen["name"]]
    result = replace(result, onnx_bytes=blob)
    scratch = pipeline.scratch_metrics(result.cfg, prep, progress)
    rep = report.build(prep.ds, result.cfg, prep.teacher_metrics, scratch, result.metrics)
    files = {"select.json": json.dumps(summary, indent=2).encode(), "select.md": select_table(summary).encode(),
             "select.png": plot(summary)}
    writer.write_bundle(out, force, prep, result, rep, {"selection": {"budget_ms": budget_ms, "chosen": chosen}},
                        files)
    return summary


def select_table(summary: dict[str, Any]) -> str:
    """Markdown table of every candidate, the chosen one marked."""
    key = summary["metric"]
    lines = [f"## Candidates (budget p99 <= {summary['budget_ms']} ms; teacher test {key} "
             f"{summary['teacher_test_metric']:.4f})", "",
             f"| candidate | params | bytes | p50 ms | p99 ms | val {key} | test {key} | gap to teacher "
             "| fits | chosen |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["candidates"]:
        fits = "yes" if r["p99_ms"] <= summary["budget_ms"] else "no"
        lines.append(f"| {r['name']} | {r['params']} | {r['bytes']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                     f"{r['val_metric']:.4f} | {r['test_metric']:.4f} | {r['gap_to_teacher']:+.4f} | {fits} | "
                     f"{'**yes**' if r['chosen'] else ''} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any]) -> bytes:
    """PNG: validation metric vs p99 latency, Pareto front, budget line, chosen candidate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(summary["candidates"], key=lambda r: r["p99_ms"])
    front, best = [], -np.inf
    for r in rows:
        if r["val_metric"] > best:
            front.append(r)
            best = r["val_metric"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([r["p99_ms"] for r in rows], [r["val_metric"] for r in rows], color="tab:blue")
    for r in rows:
        ax.annotate(r["name"], (r["p99_ms"], r["val_metric"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.plot([r["p99_ms"] for r in front], [r["val_metric"] for r in front], "--", color="tab:green",
            label="Pareto front")
    ax.axvline(summary["budget_ms"], color="tab:red", label=f"budget {summary['budget_ms']} ms")
    chosen = [r for r in rows if r["chosen"]]
    if chosen:
        ax.scatter([chosen[0]["p99_ms"]], [chosen[0]["val_metric"]], s=160, facecolors="none", edgecolors="red",
                   label=f"chosen: {chosen[0]['name']}")
    ax.set_xscale("log")
    ax.set_xlabel("p99 latency per scoring call (ms, log scale)")
    ax.set_ylabel(f"validation {summary['metric']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()
