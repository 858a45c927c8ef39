"""What `distill select` shows: one row per candidate, a markdown table and a latency/accuracy plot."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from distill.latency import Timing


@dataclass(frozen=True)
class Row:
    """A timed candidate; validation/test metrics are the served student's."""

    name: str
    params: int
    bytes: int
    timing: Timing
    val_metric: float
    test_metric: float
    gap_to_teacher: float

    @property
    def p50_ms(self) -> float:
        return self.timing.budgeted.p50_ms

    @property
    def p99_ms(self) -> float:
        return self.timing.budgeted.p99_ms

    def to_dict(self) -> dict[str, Any]:
        t = self.timing
        out = {"name": self.name, "params": self.params, "bytes": self.bytes, "p50_ms": self.p50_ms,
               "p99_ms": self.p99_ms, "single_p50_ms": t.single.p50_ms, "single_p99_ms": t.single.p99_ms,
               "batch16_p50_ms": t.batch.p50_ms, "batch16_p99_ms": t.batch.p99_ms,
               "val_metric": round(self.val_metric, 6), "test_metric": round(self.test_metric, 6),
               "gap_to_teacher": round(self.gap_to_teacher, 6), "chosen": False}
        if t.http is not None:
            out.update(http_p50_ms=t.http.p50_ms, http_p99_ms=t.http.p99_ms)
        return out


def summary_json(summary: dict[str, Any]) -> bytes:
    return json.dumps(summary, indent=2).encode()


def select_table(summary: dict[str, Any]) -> str:
    """Markdown table of every candidate, the chosen one marked."""
    key, http = summary["metric"], summary.get("timed") == "http"
    lines = [f"## Candidates (budget: p99 <= {summary['budget_ms']} ms per single-node call, "
             f"{'over HTTP' if http else 'through the service scoring path in-process'}; "
             f"teacher test {key} {summary['teacher_test_metric']:.4f})", "",
             "| candidate | params | bytes | p50 ms | p99 ms | batch of 16: p50 / p99 ms"
             f"{' | in-process p99 ms' if http else ''} | val {key} | test {key} | gap to teacher | fits | chosen |",
             "|---|---|---|---|---|---|" + ("---|" if http else "") + "---|---|---|---|---|"]
    for r in summary["candidates"]:
        fits = "yes" if r["p99_ms"] <= summary["budget_ms"] else "no"
        extra = f" | {r['single_p99_ms']:.3f}" if http else ""
        lines.append(f"| {r['name']} | {r['params']} | {r['bytes']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                     f"{r['batch16_p50_ms']:.3f} / {r['batch16_p99_ms']:.3f}{extra} | {r['val_metric']:.4f} | "
                     f"{r['test_metric']:.4f} | {r['gap_to_teacher']:+.4f} | {fits} | "
                     f"{'**yes**' if r['chosen'] else ''} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any]) -> bytes:
    """PNG: validation metric vs served p99 latency, Pareto front, budget line, chosen candidate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(summary["candidates"], key=lambda r: r["p99_ms"])
    front, best = [], -np.inf
    for r in rows:
        if r["val_metric"] > best:
            front.append(r)
            best = r["val_metric"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        fits = r["p99_ms"] <= summary["budget_ms"]
        ax.scatter(r["p99_ms"], r["val_metric"], color="tab:blue" if fits else "tab:gray", zorder=3)
    # Alternate label offsets: neighbouring candidates often sit close together.
    for i, r in enumerate(rows):
        ax.annotate(r["name"], (r["p99_ms"], r["val_metric"]), fontsize=7, textcoords="offset points",
                    xytext=(4, 6 if i % 2 == 0 else -11))
    ax.plot([r["p99_ms"] for r in front], [r["val_metric"] for r in front], "--", color="tab:green",
            label="Pareto front")
    ax.axvline(summary["budget_ms"], color="tab:red", label=f"budget {summary['budget_ms']} ms")
    chosen = [r for r in rows if r["chosen"]]
    if chosen:
        ax.scatter([chosen[0]["p99_ms"]], [chosen[0]["val_metric"]], s=180, facecolors="none", edgecolors="red",
                   label=f"chosen: {chosen[0]['name']}", zorder=4)
    where = "over HTTP" if summary.get("timed") == "http" else "served path, in-process"
    ax.set_xlabel(f"p99 latency of one single-node scoring call (ms, {where})")
    ax.set_ylabel(f"validation {summary['metric']} (served)")
    ax.set_title("distill select: candidates vs latency budget (grey: over budget)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()
