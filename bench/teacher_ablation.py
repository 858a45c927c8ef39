"""Which tricks make a deep GAT teacher work? Trains teacher variants side by side and prints a table.

    python bench/teacher_ablation.py --dataset planetoid:../shared/datasets/planetoid/Cora --seeds 3

Each variant changes the default teacher config (`distill run` defaults) in one or more fields;
the 2-layer GCN row is the scratch student the teacher must beat. Reports test accuracy, AUROC and
validation score as mean ± std over seeds, with the wall time per run.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill import teacher as teachers  # noqa: E402
from distill.artefacts import Prepared  # noqa: E402
from distill.config import RunConfig  # noqa: E402
from distill.data import load_dataset  # noqa: E402
from distill.students import train_candidates  # noqa: E402
from distill.train import resolve_device  # noqa: E402

VARIANTS: dict[str, dict[str, object]] = {
    "plain (no residual, no norm)": {"teacher_residual": False, "teacher_norm": "none"},
    "+ residual": {"teacher_norm": "none"},
    "+ residual + layernorm": {},
    "+ residual + layernorm + jk=cat": {"teacher_jk": "cat"},
    "+ residual + layernorm + jk=max": {"teacher_jk": "max"},
    "+ residual + batchnorm": {"teacher_norm": "batch"},
    "+ residual + layernorm, attn dropout 0.6": {"attn_dropout": 0.6},
    "+ residual + layernorm + jk=cat, dropout 0.6/0.6": {"teacher_jk": "cat", "attn_dropout": 0.6,
                                                         "teacher_dropout": 0.6},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--teacher-layers", type=int, default=6)
    ap.add_argument("--teacher-fanout", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--only", default="", help="comma-separated substrings of variant names to run")
    ap.add_argument("--json", type=Path, help="write all rows here")
    args = ap.parse_args()
    base = RunConfig(dataset=args.dataset, teacher="gat", teacher_layers=args.teacher_layers,
                     teacher_fanout=args.teacher_fanout, epochs=args.epochs)
    ds = load_dataset(base.dataset)
    device = resolve_device("auto")
    norm = teachers.feature_norm(base, ds)
    tcfg = base.train_config
    wanted = [v for v in VARIANTS if not args.only or any(s in v for s in args.only.split(","))]
    rows = []
    for seed in range(args.seeds):
        for name in wanted:
            cfg = replace(base, seed=seed, **VARIANTS[name])  # type: ignore[arg-type]
            trained = teachers.train_teacher(cfg, ds, norm, tcfg, device, progress=False)
            teacher, edges, m = trained.model, trained.edges, trained.metrics
            rows.append({"variant": f"gat-{cfg.teacher_layers} {name}", "seed": seed, **_pick(m)})
            print(f"seed {seed} {rows[-1]['variant']}: acc {m['accuracy']:.4f} ({m['seconds']:.1f}s)",
                  file=sys.stderr, flush=True)
        # The scratch student never reads the teacher; Prepared just carries the data and budget.
        prep = Prepared(ds, device, norm, tcfg, teacher, edges, m, teachers.teacher_signals(teacher, ds, edges, device))
        m = train_candidates(replace(base, seed=seed, student="gcn"), prep, (), progress=False).record()
        rows.append({"variant": "gcn-2 scratch student (reference)", "seed": seed, **_pick(m)})
    print(table(rows, ds.name, args.seeds))
    if args.json:
        args.json.write_text(json.dumps({"dataset": args.dataset, "rows": rows}, indent=2))
    return 0


def _pick(m: dict[str, object]) -> dict[str, object]:
    return {k: m[k] for k in ("accuracy", "macro_f1", "auroc", "best_val", "seconds")}


def table(rows: list[dict[str, object]], dataset: str, seeds: int) -> str:
    """Markdown table: one row per variant, mean ± std over seeds."""
    lines = [f"## {dataset}: teacher ablation, {seeds} seeds (test set, mean ± std)", "",
             "| variant | accuracy | macro-F1 | AUROC | val | s/run |", "|---|---|---|---|---|---|"]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        sel = [r for r in rows if r["variant"] == variant]
        cells = [_ms([float(r[k]) for r in sel]) for k in ("accuracy", "macro_f1", "auroc", "best_val")]
        secs = np.median([float(r["seconds"]) for r in sel])
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {secs:.1f} |")
    return "\n".join(lines)


def _ms(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


if __name__ == "__main__":
    sys.exit(main())
