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


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Candidates no faster candidate beats on the validation metric, fastest first (`rows` sorted by p99)."""
    front, best = [], -np.inf
    for r in rows:
        if r["val_metric"] > best:
            front.append(r)
            best = r["val_metric"]
    return front


# Directions tried for a label, in order; each at growing distances, the far ones with a leader line.
# Neighbouring candidates often sit within a marker of each other (same latency class).
_DIRECTIONS = ((1, 0.6), (1, -0.6), (-1, 0.6), (-1, -0.6), (0, 1), (0, -1), (1, 0), (-1, 0))
_RINGS_PT = (2, 12, 24)  # gap between marker edge and label, points


def _front_boxes(ax: Any, rows: list[dict[str, Any]]) -> list[Any]:
    """Display boxes of the Pareto steps: labels avoid them, a label on the line hides where the front turns."""
    from matplotlib.transforms import Bbox

    front = pareto_front(sorted(rows, key=lambda r: r["p99_ms"]))
    corners = [(b["p99_ms"], v) for a, b in zip(front, front[1:], strict=False)
               for v in (a["val_metric"], b["val_metric"])]
    path = ax.transData.transform([(front[0]["p99_ms"], front[0]["val_metric"]), *corners])
    return [Bbox.from_extents(min(x0, x1) - 1, min(y0, y1) - 1, max(x0, x1) + 1, max(y0, y1) + 1)
            for (x0, y0), (x1, y1) in zip(path, path[1:], strict=False)]


def place_labels(ax: Any, rows: list[dict[str, Any]]) -> list[Any]:
    """Name every candidate without two labels (or a label and a marker) overlapping: greedy, each label
    takes the first position whose box is clear and inside the axes (else the last one tried)."""
    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    px = fig.dpi / 72
    radius = {r["name"]: 8.0 if r["chosen"] else 4.0 for r in rows}  # the chosen one wears a ring, points
    taken = []
    for r in rows:
        x, y = ax.transData.transform((r["p99_ms"], r["val_metric"]))
        pad = radius[r["name"]] * px
        taken.append(Bbox.from_extents(x - pad, y - pad, x + pad, y + pad))
    taken += _front_boxes(ax, rows)
    texts = []
    tries = [(ring, ux, uy) for ring in _RINGS_PT for ux, uy in _DIRECTIONS]
    for r in sorted(rows, key=lambda r: -r["val_metric"]):
        for i, (ring, ux, uy) in enumerate(tries):
            dist = radius[r["name"]] + ring
            text = ax.annotate(r["name"], (r["p99_ms"], r["val_metric"]), xytext=(ux * dist, uy * dist),
                               textcoords="offset points", fontsize=8,
                               ha="left" if ux > 0 else "right" if ux < 0 else "center",
                               va="bottom" if uy > 0 else "top" if uy < 0 else "center",
                               bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8},
                               arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.6} if ring > 2 else None)
            box = text.get_window_extent(renderer).padded(1)
            clear = inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1 \
                and not any(box.overlaps(b) for b in taken)
            if clear or i == len(tries) - 1:
                taken.append(box)
                texts.append(text)
                break
            text.remove()
    return texts


def figure(summary: dict[str, Any]) -> Any:
    """Validation metric vs served p99 latency: candidates (grey: over budget), Pareto front, budget line,
    chosen candidate; legend outside the axes so it covers no candidate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    budget = summary["budget_ms"]
    rows = sorted(summary["candidates"], key=lambda r: r["p99_ms"])
    fig, ax = plt.subplots(figsize=(10, 5.2))
    for fits, colour, label in ((True, "tab:blue", f"fits budget (p99 ≤ {budget} ms)"),
                                (False, "0.6", f"over budget (p99 > {budget} ms)")):
        sel = [r for r in rows if (r["p99_ms"] <= budget) == fits]
        if sel:
            ax.scatter([r["p99_ms"] for r in sel], [r["val_metric"] for r in sel], color=colour, s=36, zorder=3,
                       label=label)
    front = pareto_front(rows)
    ax.step([r["p99_ms"] for r in front], [r["val_metric"] for r in front], where="post", color="tab:green",
            linewidth=1.8, zorder=2, label="Pareto front (best at ≤ this latency)")
    # Log latency: candidates span 0.02-2 ms, a linear axis squeezes the fast ones into one clump.
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    times = [r["p99_ms"] for r in rows] + [budget]
    lo, hi = min(times), max(times)
    ax.set_xlim(lo / 1.6, hi * 1.6)
    ax.axvspan(budget, hi * 1.6, color="0.93", zorder=0)
    ax.axvline(budget, color="tab:red", linewidth=1.5, label=f"latency budget: p99 {budget} ms")
    ax.text(budget, 1.0, f" budget {budget} ms ", transform=ax.get_xaxis_transform(), color="tab:red",
            fontsize=8, ha="right", va="bottom")
    chosen = [r for r in rows if r["chosen"]]
    if chosen:
        ax.scatter([chosen[0]["p99_ms"]], [chosen[0]["val_metric"]], s=220, facecolors="none", edgecolors="red",
                   linewidths=1.5, label=f"chosen: {chosen[0]['name']}", zorder=4)
    ys = [r["val_metric"] for r in rows]
    span = max(max(ys) - min(ys), 0.01)
    ax.set_ylim(min(ys) - 0.12 * span, max(ys) + 0.12 * span)
    where = "over HTTP" if summary.get("timed") == "http" else "served path, in-process"
    ax.set_xlabel(f"p99 latency of one single-node scoring call (ms, log scale; {where})")
    ax.set_ylabel(f"validation {summary['metric']} of the served student\n(axis zoomed to the candidates)")
    ax.set_title(f"distill select: {len(rows)} candidates, validation {summary['metric']} vs latency", pad=14)
    ax.grid(alpha=0.3, which="major")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.tight_layout()
    place_labels(ax, rows)
    return fig


def plot(summary: dict[str, Any]) -> bytes:
    """PNG of `figure`."""
    import matplotlib.pyplot as plt

    fig = figure(summary)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()
