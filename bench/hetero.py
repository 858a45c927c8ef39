"""Route (b) on a heterogeneous graph: a type-aware teacher, a type-aware student from scratch and
distilled with type-specific losses, and the pooled-vs-per-type ablation, mean ± std over seeds.

    OMP_NUM_THREADS=1 python bench/hetero.py --dataset acm:$DATASETS/hetero-acm --split 0 --seeds 5 \\
        --teacher-cache runs/teachers --json runs/hetero/acm_s0.json
    python bench/hetero.py --from-json runs/hetero/acm_s0.json --from-json ... \\
        --json docs/results/hetero_acm.json --png docs/results/hetero_acm.png

Per split and seed the teacher (`hetero-sage`, bench/accuracy.py's `teacher_for`, so
`--teacher-cache` reuses it) is trained once; every student variant starts from the same seed and
goes through the one training loop (early stopping on validation accuracy, `fit`'s rule). Test
Macro-F1, Micro-F1 (= accuracy: one label per paper) and one-vs-rest AUROC; and, per node type, the
debiased linear CKA between the student's and the teacher's first-layer states (eval mode): how
much of the teacher's view of authors, subjects and papers the student kept, where pooling shows;
and the test recall of the rarest labelled class (`distill.tail`'s), which `per-type-balanced` (per-type KD with
`distill run --kd-balance on`'s class-balanced soft targets) is there to keep.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.accuracy import teacher_for  # noqa: E402
from distill import teacher as teachers  # noqa: E402
from distill.config import RunConfig  # noqa: E402
from distill.data import Dataset, load_dataset  # noqa: E402
from distill.errors import ConfigError, DatasetError  # noqa: E402
from distill.hetero_kd import TypedKD, TypedKDConfig, fit_typed, linear_cka  # noqa: E402
from distill.hetero_models import TypedOutputs  # noqa: E402
from distill.hetero_student import build_hetero_student  # noqa: E402
from distill.input_dropout import decide  # noqa: E402
from distill.models import FeatureNorm, with_input_dropout  # noqa: E402
from distill.tail import rarest_class  # noqa: E402
from distill.train import Edges, TrainConfig, predict, resolve_device, test_metrics  # noqa: E402

METRICS = {"macro_f1": "Macro-F1", "accuracy": "Micro-F1", "auroc": "AUROC"}
LEGEND_ROW_INCHES = 0.3  # the plot's legend, one row of labels at fontsize 9
# Variant -> its loss. "per-type" is the distilled student; "pooled" the same terms type-agnostic.
VARIANTS: dict[str, TypedKDConfig] = {
    "scratch": TypedKDConfig(kinds=()),
    "response": TypedKDConfig(kinds=("response",)),
    "per-type": TypedKDConfig(kd_types="per-type"),
    "pooled": TypedKDConfig(kd_types="pooled"),
    # --kd-balance on's class-balanced soft targets (distill run's tail-class mitigation) on the typed route.
    "per-type-balanced": TypedKDConfig(kd_types="per-type", balanced=True),
}
COLOURS = {"teacher": "#4d4d4d", "scratch": "tab:blue", "response": "tab:orange", "per-type": "tab:green",
           "pooled": "tab:red", "per-type-balanced": "tab:purple"}
LABELS = {"teacher": "teacher hetero-sage", "scratch": "typed student, scratch", "response": "typed, response KD",
          "per-type": "typed, per-type KD", "pooled": "typed, pooled KD",
          "per-type-balanced": "typed, per-type KD, class-balanced"}


def student_row(ds: Dataset, variant: str, seed: int, norm: FeatureNorm, teacher: TypedOutputs, hidden: int,
                tcfg: TrainConfig, device: torch.device, drop_inputs: bool = True) -> dict[str, Any]:
    """Train one typed student variant on seed `seed` (`drop_inputs`: the run's input dropout) -> its row."""
    torch.manual_seed(seed)
    student = build_hetero_student("typed-sage", in_channels=ds.data.num_features, hidden_channels=hidden,
                                   num_layers=2, out_channels=ds.num_classes, dropout=0.5, graph=ds.hetero)
    student.feature_norm = FeatureNorm(norm.mode, norm.mean, norm.std)
    with_input_dropout(student, drop_inputs)
    student.to(device)
    kd = TypedKD(VARIANTS[variant], student.schema.node_types, hidden, teacher.typed[0][student.schema.target].size(1))
    kd.to(device)
    assert ds.hetero is not None  # build_hetero_student refused a homogeneous dataset
    edges = {r: ds.hetero[r].edge_index.to(device) for r in ds.hetero.edge_types}
    data = ds.data.to(device)
    result = fit_typed(student, data, kd, teacher if VARIANTS[variant].kinds else None, edges, tcfg,
                       f"{variant} seed {seed}", progress=False)
    student.eval()
    with torch.no_grad():
        out = student.run(data.x)
    m = test_metrics(predict(student, data, Edges(data.edge_index)), data)
    cka = {t: linear_cka(out.typed[0][t], teacher.typed[0][t]) for t in out.typed[0]}
    return _row(variant, seed, m, cka, result.best_val, result.seconds)


def _row(model: str, seed: int, m: dict[str, Any], cka: dict[str, float], best_val: float | None,
         seconds: float) -> dict[str, Any]:
    return {"model": model, "seed": seed, **{k: m[k] for k in METRICS}, "cka": cka, "best_val": best_val,
            "seconds": seconds, "per_class_recall": m.get("per_class_recall")}


def run_split(spec: str, split: int, seeds: range, variants: list[str], hidden: int, cache: Path | None,
              rows: list[dict[str, Any]], save: Any) -> None:
    """Append the teacher's and every variant's row per seed (with `split`) to `rows`, saving after each;
    each row names the rarest labelled class (the one the tail-class mitigation targets)."""
    ds = load_dataset(spec, split)
    rare = rarest_class(ds.data, ds.num_classes)
    where = {"split": split, "dataset": ds.name, "rare_class": rare}
    device = resolve_device("auto")
    bar = tqdm(total=len(seeds) * (1 + len(variants)), desc=f"{ds.name} split {split}", mininterval=5.0)
    for seed in seeds:
        cfg = RunConfig(dataset=spec, split=split, seed=seed, teacher="hetero-sage", teacher_layers=2)
        norm = teachers.feature_norm(cfg, ds)
        decision = decide(cfg, ds, norm, cfg.train_config, device)
        trained = teacher_for(decision.config(cfg), ds, norm, cfg.train_config, device, cache)
        trained.model.eval()
        with torch.no_grad():
            teacher_out = trained.model.run(ds.data.x.to(device))
        assert isinstance(teacher_out, TypedOutputs)
        t_cka = {t: 1.0 for t in teacher_out.typed[0]}
        rows.append({**_row("teacher", seed, trained.metrics, t_cka, trained.metrics.get("best_val"),
                            trained.metrics.get("seconds", 0.0)), **where})
        bar.update()
        for variant in variants:
            row = student_row(ds, variant, seed, norm, teacher_out, hidden, cfg.train_config, device,
                              decision.dropout.on)
            rows.append({**row, **where})
            bar.update()
            bar.write(f"  split {split} seed {seed} {variant:<9} macro-F1 {row['macro_f1']:.4f} "
                      f"cka {' '.join(f'{t} {v:.3f}' for t, v in row['cka'].items())} ({row['seconds']:.0f}s)")
            save()
    bar.close()


def _setting(rows: list[dict[str, Any]], split: int) -> str:
    """How a split is named: ACM's by its labels per class (HeCo's 20 / 40 / 60), others by dataset and
    split (rows of earlier ACM runs carry no dataset name)."""
    name = next((r.get("dataset", "acm") for r in rows if r["split"] == split), "acm")
    return f"{(20, 40, 60)[split]} labels per class" if name == "acm" and split < 3 else f"{name}, split {split}"


def _ms(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def _rare_recall(sel: list[dict[str, Any]]) -> str:
    """Mean ± std of the rarest labelled class's test recall, with the class; blank unless every
    row recorded it (a mean over fewer seeds than the row's count would mislead)."""
    if not all("rare_class" in r and r.get("per_class_recall") for r in sel):
        return ""
    return f"{_ms([r['per_class_recall'][r['rare_class']] for r in sel])} ({sel[0]['rare_class']})"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per split, one line per model: metrics mean ± std, paired Macro-F1 gain over
    scratch (seeds up), gap to the teacher, the rarest labelled class's test recall (rows of runs
    before it was recorded leave it blank), per-type CKA to the teacher."""
    types = list(rows[0]["cka"])
    head = ("| setting | model | " + " | ".join(METRICS.values()) + " | gain vs scratch (macro-F1, seeds up) "
            "| gap to teacher | recall rarest class | " + " | ".join(f"CKA {t}" for t in types) + " |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for split in sorted({r["split"] for r in rows}):
        srows = [r for r in rows if r["split"] == split]
        teacher = float(np.mean([r["macro_f1"] for r in srows if r["model"] == "teacher"]))
        scratch = {r["seed"]: r["macro_f1"] for r in srows if r["model"] == "scratch"}
        for model in [m for m in COLOURS if any(r["model"] == m for r in srows)]:
            sel = [r for r in srows if r["model"] == model]
            gains = [r["macro_f1"] - scratch[r["seed"]] for r in sel if r["seed"] in scratch]
            gain = "" if model in ("teacher", "scratch") or not gains else \
                f"{100 * np.mean(gains):+.2f} ± {100 * np.std(gains):.2f} ({sum(g > 0 for g in gains)}/{len(gains)})"
            gap = "" if model == "teacher" else f"{100 * (np.mean([r['macro_f1'] for r in sel]) - teacher):+.2f}"
            cka = " | ".join("" if model == "teacher" else _ms([r["cka"][t] for r in sel]) for t in types)
            lines.append(f"| {_setting(rows, split)} ({len(sel)} seeds) | {LABELS[model]} | "
                         + " | ".join(_ms([r[k] for r in sel]) for k in METRICS)
                         + f" | {gain} | {gap} | {_rare_recall(sel)} | {cka} |")
    return "\n".join(lines)


def _bars(ax: Any, groups: list[str], models: list[str], values: dict[tuple[str, str], list[float]]) -> None:
    """Grouped bars with std error bars and each mean printed; full 0-1 axis."""
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        for g, group in enumerate(groups):
            vals = values.get((group, model))
            if not vals:
                continue
            x, mean, std = g + (i - (len(models) - 1) / 2) * width, float(np.mean(vals)), float(np.std(vals))
            ax.bar(x, mean, width * 0.92, color=COLOURS[model], yerr=std, capsize=2, ecolor="black")
            ax.text(x, mean + std + 0.015, f"{mean:.3f}", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylim(0.0, 1.2)
    ax.set_yticks(np.linspace(0.0, 1.0, 6))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def figure(rows: list[dict[str, Any]]) -> Any:
    """Top: test Macro-F1 and AUROC per model, one panel per split. Bottom: per node type, the
    students' first-layer CKA to the teacher."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    splits = sorted({r["split"] for r in rows})
    models = [m for m in COLOURS if any(r["model"] == m for r in rows)]
    students = [m for m in models if m != "teacher"]
    fig, axes = plt.subplots(2, len(splits), figsize=(5.2 * len(splits), 7.6), squeeze=False)
    for col, split in enumerate(splits):
        srows = [r for r in rows if r["split"] == split]
        seeds = len({r["seed"] for r in srows})
        metric = {(METRICS[k], m): [r[k] for r in srows if r["model"] == m] for k in ("macro_f1", "auroc")
                  for m in models}
        _bars(axes[0, col], [METRICS["macro_f1"], METRICS["auroc"]], models, metric)
        axes[0, col].set_ylabel("test score")
        axes[0, col].set_title(f"{_setting(rows, split)}: test metrics\n(mean ± std, {seeds} seeds)",
                               fontsize=10)
        types = list(srows[0]["cka"])
        cka = {(t, m): [r["cka"][t] for r in srows if r["model"] == m] for t in types for m in students}
        _bars(axes[1, col], types, students, cka)
        axes[1, col].set_ylabel("debiased linear CKA to the teacher (layer 1)")
        axes[1, col].set_xlabel("node type")
        axes[1, col].set_title(f"{_setting(rows, split)}: per-type embedding alignment", fontsize=10)
    ncol = min(len(models), 2 * len(splits))  # two labels fit across one panel's width
    fig.legend(handles=[Patch(color=COLOURS[m], label=LABELS[m]) for m in models], loc="upper center",
               ncol=ncol, fontsize=9, frameon=False)
    legend_inches = LEGEND_ROW_INCHES * (math.ceil(len(models) / ncol) + 0.5)
    fig.tight_layout(rect=(0, 0, 1, 1 - legend_inches / fig.get_figheight()))
    return fig


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", help="a heterogeneous dataset spec, e.g. acm:PATH or synthetic-hetero")
    ap.add_argument("--split", type=int, action="append", default=[], help="ACM: 0 | 1 | 2 = 20 / 40 / 60 labels "
                    "per class (repeatable; default 0)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--variants", default="scratch,per-type,pooled", help=f"comma-separated, of {list(VARIANTS)}")
    ap.add_argument("--hidden", type=int, default=64, help="student width")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--teacher-cache", type=Path, default=None, metavar="DIR",
                    help="reuse each seed's trained teacher from DIR (and save new ones there)")
    ap.add_argument("--from-json", type=Path, action="append", default=[], help="merge rows of earlier --json files")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--png", type=Path)
    return ap


def main() -> int:
    args = parser().parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}", file=sys.stderr)
        return 2
    if not args.dataset and not args.from_json:
        print("give --dataset SPEC (a heterogeneous one, e.g. acm:PATH) or --from-json FILE", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = [r for p in args.from_json for r in json.loads(p.read_text())["rows"]]

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"rows": rows, "variants": {k: VARIANTS[k].__dict__ for k in variants}},
                                            indent=1))

    try:
        for split in args.split or [0] if args.dataset else []:
            run_split(args.dataset, split, range(args.first_seed, args.first_seed + args.seeds), variants,
                      args.hidden, args.teacher_cache, rows, save)
    except (ConfigError, DatasetError) as exc:
        print(f"bench/hetero.py: {exc}", file=sys.stderr)
        return 2
    save()
    print(table(rows))
    if args.png:
        import matplotlib.pyplot as plt

        fig = figure(rows)
        fig.savefig(args.png, dpi=120)
        plt.close(fig)
        print(f"plot: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
