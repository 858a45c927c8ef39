"""Temporal graphs under the early-detection protocol (issue 13): baseline, teacher, scratch and
distilled student at k = 1, 3, 5, 10 received ratings, mean ± std over split seeds, plus the
leakage canaries.

    OMP_NUM_THREADS=1 python bench/temporal.py --dataset bitcoin-otc:$DATASETS/bitcoin-otc --seeds 5 \
        --json docs/results/temporal_bitcoin.json --png docs/results/temporal_bitcoin.png

Protocol, splits and selection: distill/temporal/protocol.py. Canaries: (1) strict vs leaky AUROC of
the baseline, the leaky one reading every user's features from the final graph; (2) the largest
change of the first seed's distilled student's test predictions when label-revealing edges are planted
just after each prediction time, for the strict kernel and for the final-graph (leaky) variant.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.temporal import TemporalPolicy  # noqa: E402
from distill.errors import DistillError  # noqa: E402
from distill.temporal import canary  # noqa: E402
from distill.temporal.batch import build_blocks  # noqa: E402
from distill.temporal.data import TemporalDataset, load_temporal  # noqa: E402
from distill.temporal.experiment import ROLES, ExperimentConfig, Prepared, SeedResult, prepare, run_seed  # noqa: E402
from distill.temporal.loop import EvalSet, TrainSet, per_k_scores, predict, train  # noqa: E402
from distill.temporal.models import make_model  # noqa: E402
from distill.temporal.protocol import EVAL_KS, Examples, stratified_split  # noqa: E402

CANARY_EXAMPLES = 100
COLOURS = {"baseline": "tab:gray", "teacher": "tab:blue", "scratch": "tab:orange", "distilled": "tab:green"}


def summarise(results: list[SeedResult]) -> dict[str, dict[str, dict[str, float]]]:
    """role -> str(k) -> {auroc_mean, auroc_std, pr_auc_mean, pr_auc_std}."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for role in ROLES:
        out[role] = {}
        for k in EVAL_KS:
            a = np.array([r.test[role][k].auroc for r in results])
            p = np.array([r.test[role][k].pr_auc for r in results])
            out[role][str(k)] = {"auroc_mean": float(a.mean()), "auroc_std": float(a.std()),
                                 "pr_auc_mean": float(p.mean()), "pr_auc_std": float(p.std()),
                                 "auroc_per_seed": a.tolist()}
    return out


def leaky_auroc(data: TemporalDataset, prep: Prepared, seeds: list[int], cfg: ExperimentConfig) -> dict[str, float]:
    """Baseline AUROC per k when every example's features come from the final graph (mean over seeds)."""
    ex = prep.labelled
    final = Examples(ex.node, np.full(len(ex), float(data.store.time.max())), ex.k, ex.label)
    blocks = build_blocks(data.store, final, TemporalPolicy(fanout=1, k_hops=1), "leaky blocks")
    per_k: dict[int, list[float]] = {k: [] for k in EVAL_KS}
    for seed in seeds:
        split = stratified_split(data.labelled, data.labels, seed)
        evals = np.isin(ex.k, EVAL_KS)
        tr_m = np.isin(ex.node, split.train)
        va_m, te_m = (np.isin(ex.node, part) & evals for part in (split.val, split.test))
        pick = [[b for b, m in zip(blocks, mask, strict=True) if m] for mask in (tr_m, va_m, te_m)]
        model = make_model("baseline", seed)
        train(model, TrainSet(pick[0], ex.label[tr_m]), EvalSet(pick[1], ex.label[va_m], ex.k[va_m]),
              cfg.loop, seed, f"seed {seed} leaky baseline")
        for k, s in per_k_scores(predict(model, pick[2]), ex.label[te_m], ex.k[te_m]).items():
            per_k[k].append(s.auroc)
    return {str(k): float(np.mean(v)) for k, v in per_k.items()}


def prediction_change(data: TemporalDataset, prep: Prepared, first: SeedResult,
                      cfg: ExperimentConfig) -> dict[str, float]:
    """Max |Δp| of the first seed's distilled student on up to CANARY_EXAMPLES test examples."""
    ex = prep.labelled
    split = stratified_split(data.labelled, data.labels, first.seed)
    idx = np.flatnonzero(np.isin(ex.node, split.test) & np.isin(ex.k, EVAL_KS))[:CANARY_EXAMPLES]
    raters = canary.flaggers(data.store, 20)

    def scores(blocks: Any) -> np.ndarray:
        return predict(first.student, blocks)

    out = {}
    for name, fn in (("strict", canary.strict_block), ("leaky_final_graph", canary.final_graph_block)):
        out[name] = canary.max_prediction_change(data.store, ex.node[idx], ex.t[idx], ex.label[idx], raters,
                                                 fn(cfg.student_policy), scores)
    out["examples"] = float(len(idx))
    return out


def table(summary: dict[str, Any], users: dict[str, int], reference: dict[str, float] | None) -> str:
    head = "| model | " + " | ".join(f"k = {k} ({users[str(k)]} users) AUROC / PR-AUC" for k in EVAL_KS) + " |"
    lines = [head, "|---|" + "---|" * len(EVAL_KS)]
    for role in ROLES:
        cells = [f"{summary[role][str(k)]['auroc_mean']:.3f} ± {summary[role][str(k)]['auroc_std']:.3f} / "
                 f"{summary[role][str(k)]['pr_auc_mean']:.3f} ± {summary[role][str(k)]['pr_auc_std']:.3f}"
                 for k in EVAL_KS]
        lines.append(f"| {role} | " + " | ".join(cells) + " |")
    if reference:
        lines.append("| baseline, final-graph features (leaky) | "
                     + " | ".join(f"{reference[str(k)]:.3f}" for k in EVAL_KS) + " |")
    return "\n".join(lines)


def plot(summary: dict[str, Any], seeds: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, role in enumerate(ROLES):
        xs = np.array(EVAL_KS, dtype=float) * (1 + 0.02 * (i - 1.5))  # small offsets: error bars apart
        ys = [summary[role][str(k)]["auroc_mean"] for k in EVAL_KS]
        es = [summary[role][str(k)]["auroc_std"] for k in EVAL_KS]
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, color=COLOURS[role], label=role)
    ax.set_xscale("log")
    ax.set_xticks(list(EVAL_KS), [str(k) for k in EVAL_KS])
    ax.set_xlabel("k: prediction right after the user's k-th received rating")
    ax.set_ylabel("test AUROC (mean ± std)")
    ax.set_ylim(0.5, 1.0)
    ax.set_title(f"Bitcoin-OTC early detection, {seeds} seeds")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="bitcoin-otc:../shared/datasets/bitcoin-otc",
                    help="bitcoin-otc:PATH or temporal:PATH (distill/temporal/data.py)")
    ap.add_argument("--seeds", type=int, default=5, help="split seeds 0..N-1")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--png", type=Path, default=None)
    ap.add_argument("--no-canary", action="store_true", help="skip the canary runs")
    return ap


def main() -> int:
    args = parser().parse_args()
    if args.seeds < 1 or args.threads < 1:
        print(f"--seeds {args.seeds} / --threads {args.threads}: both must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        data = load_temporal(args.dataset)
    except DistillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start, cfg = time.perf_counter(), ExperimentConfig()
    prep = prepare(data, cfg)
    results = [run_seed(data, prep, seed, cfg) for seed in range(args.seeds)]
    summary = summarise(results)
    users = {str(k): v for k, v in results[0].users_per_k.items()}
    report: dict[str, Any] = {"dataset": args.dataset, "seeds": args.seeds, "users_per_k": users,
                              "labelled_users": int(len(data.labelled)), "test": summary,
                              "val_mean_auroc": {role: [r.val[role] for r in results] for role in ROLES},
                              "distilled_kd_weight_per_seed": [r.kd_weight for r in results]}
    leaky = None
    if not args.no_canary:
        leaky = leaky_auroc(data, prep, list(range(args.seeds)), cfg)
        report["canary"] = {"baseline_auroc_strict": {str(k): summary["baseline"][str(k)]["auroc_mean"]
                                                      for k in EVAL_KS},
                            "baseline_auroc_leaky_final_graph": leaky,
                            "max_prediction_change_future_edges": prediction_change(data, prep, results[0], cfg)}
    report["seconds"] = time.perf_counter() - start
    print(table(summary, users, leaky))
    if "canary" in report:
        change = report["canary"]["max_prediction_change_future_edges"]
        print(f"max |prediction change| with planted future edges: {change}")
    print(f"distillation weight kept on validation, per seed: {[r.kd_weight for r in results]}")
    print(f"{time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    if args.png:
        args.png.parent.mkdir(parents=True, exist_ok=True)
        plot(summary, args.seeds, args.png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
