"""bench/accuracy.py's bar chart: one panel per dataset, one colour per role (teacher, scratch, each
distillation variant) in every panel, and the row order its table shares."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from distill.train import selection_metric

# Row variants in table and plot order: the teacher, then bench/accuracy.py's VARIANTS (a test keeps
# the two lists equal).
ROLES = ("teacher", "scratch", "response", "response+feature", "response+structure", "all", "default")


def canonical(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Teacher first, then students as first seen, variants in ROLES order (merged runs mix them)."""
    students = list(dict.fromkeys(r["student"] for r in rows if r["variant"] != "teacher"))
    return sorted(rows, key=lambda r: (r["variant"] != "teacher", students.index(r["student"])
                                       if r["student"] in students else -1, ROLES.index(r["variant"])))


# One colour per role, the same in every panel: the reader compares distilled against scratch by colour,
# and the teacher stands apart. Keys are ROLES.
ROLE_COLOURS: dict[str, str] = {"teacher": "#4d4d4d", "scratch": "tab:blue", "response": "tab:orange",
                                "response+feature": "tab:green", "response+structure": "tab:purple",
                                "all": "tab:red", "default": "tab:brown"}
ROLE_LABELS: dict[str, str] = {"teacher": "teacher", "scratch": "scratch (no distillation)",
                               **{v: f"distilled: {v}" for v in ROLES[2:]},
                               "default": "distilled: default (--kd auto)"}


def _panel(ax: Any, drows: list[dict[str, Any]], key: str) -> None:
    """Grouped bars for one dataset: the teacher, then per student one bar per variant, coloured by role.
    Full 0-1 axis (a truncated one exaggerates gaps) with each mean printed on its bar."""
    groups = list(dict.fromkeys(r["student"] for r in canonical(drows)))
    width = 0.8 / max(len({r["variant"] for r in drows if r["variant"] != "teacher"}), 1)
    bars = len({(r["student"], r["variant"]) for r in drows})
    ticks, names = [], []
    for g, student in enumerate(groups):
        srows = [r for r in drows if r["student"] == student]
        variants = list(dict.fromkeys(r["variant"] for r in canonical(srows)))
        for i, variant in enumerate(variants):
            vals = [r[key] for r in srows if r["variant"] == variant]
            x = g + (i - (len(variants) - 1) / 2) * width
            mean, std = float(np.mean(vals)), float(np.std(vals))
            ax.bar(x, mean, width * 0.92, color=ROLE_COLOURS.get(variant, "tab:brown"),
                   yerr=std if len(vals) > 1 else None, capsize=2, ecolor="black")
            # Above the error bar; upright while the bars are wide enough for it.
            ax.text(x, mean + std + 0.015, f"{mean:.3f}", ha="center", va="bottom", fontsize=7,
                    rotation=0 if bars <= 10 else 90)
            if variant == "teacher":  # reference line: the gap to the teacher reads off every bar
                ax.axhline(mean, color=ROLE_COLOURS["teacher"], linestyle=":", linewidth=1, zorder=0)
        ticks.append(g)
        names.append(textwrap.fill(student, 14, break_on_hyphens=False) + ("\n(teacher)" if variants == ["teacher"]
                                                                           else ""))
    ax.set_xticks(ticks, names, fontsize=8)
    ax.set_ylim(0.0, 1.12)  # headroom for the printed values
    ax.set_yticks(np.linspace(0.0, 1.0, 6))
    ax.set_ylabel(f"test {key}")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def figure(rows: list[dict[str, Any]], num_classes: dict[str, int]) -> Any:
    """Bar chart of the selection metric, one panel per dataset (two per row), error bars = std over seeds,
    a single legend of roles for the whole figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    cols = min(len(datasets), 2)
    nrows = -(-len(datasets) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6.5 * cols, 3.8 * nrows + 0.8), squeeze=False)
    for ax, dataset in zip(axes.flat, datasets, strict=False):
        key = selection_metric(num_classes[dataset])
        drows = [r for r in rows if r["dataset"] == dataset]
        seeds = len({r["seed"] for r in drows})
        _panel(ax, drows, key)
        spread = "mean ± std over" if seeds > 1 else "single run,"
        ax.set_title(f"{dataset}: test {key} ({spread} {seeds} seed{'s' * (seeds > 1)})", fontsize=10)
    for ax in axes.flat[len(datasets):]:
        ax.set_visible(False)
    roles = [v for v in ROLE_COLOURS if any(r["variant"] == v for r in rows)]
    handles = [Patch(color=ROLE_COLOURS[v], label=ROLE_LABELS[v]) for v in roles]
    if "teacher" in roles:
        handles.append(Line2D([], [], color=ROLE_COLOURS["teacher"], linestyle=":", label="teacher mean"))
    ncol = min(len(handles), 3 * cols)  # about three labels fit across one 6.5-inch panel
    fig.legend(handles=handles, loc="upper center", ncol=ncol, fontsize=9, frameon=False)
    lines = -(-len(handles) // ncol)
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.25 + 0.22 * lines) / fig.get_figheight()))
    return fig


def plot(rows: list[dict[str, Any]], num_classes: dict[str, int], path: Path) -> None:
    """Save `figure` as a PNG at `path`."""
    import matplotlib.pyplot as plt

    fig = figure(rows, num_classes)
    fig.savefig(path, dpi=120)
    plt.close(fig)
