"""Does distillation pay? Teacher vs scratch vs distilled students, mean ± std over seeds.

    python bench/accuracy.py --dataset planetoid:../shared/datasets/planetoid/Cora --seeds 5 \
        --students gcn,mlp --json runs/cora.json --png runs/cora.png

For every dataset and seed the teacher is trained once; then each student is trained from scratch
and with every distillation variant, all through the same pipeline functions `distill run` uses.
Prints a markdown table (accuracy, macro-F1, AUROC, gain over scratch, gap to the teacher, recall
of the rarest class) and draws the same as a bar chart. `--set key=value` overrides any
`distill run` option (e.g. `--set teacher_fanout=32`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.accuracy_plot import canonical, plot  # noqa: E402
from distill import input_dropout, tail  # noqa: E402
from distill import teacher as teachers  # noqa: E402
from distill.artefacts import Prepared, Trained, TrainedTeacher  # noqa: E402
from distill.choose import best_on_validation  # noqa: E402
from distill.config import KD_AUTO, KD_KINDS, RunConfig  # noqa: E402
from distill.data import Dataset, load_dataset  # noqa: E402
from distill.models import FeatureNorm  # noqa: E402
from distill.students import auto_tries_structure, candidate_name, train_candidates, train_distilled  # noqa: E402
from distill.train import TrainConfig, resolve_device, selection_metric  # noqa: E402

METRICS = ("accuracy", "macro_f1", "auroc", "pr_auc")
# Variant name -> the objectives it switches on.
VARIANTS: dict[str, tuple[str, ...]] = {
    "scratch": (),
    "response": ("response",),
    "response+feature": ("response", "feature"),
    "response+structure": ("response", "structure"),
    "all": KD_KINDS,
    # The run's --kd (auto: the response and the response+structure candidates pooled, best on
    # validation), through the same function `distill run` uses.
    "default": (),
}
DEFAULT = "default"


def parse_set(items: list[str]) -> dict[str, Any]:
    """`key=value` pairs typed like the RunConfig field they override."""
    defaults = RunConfig().to_dict()
    out: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in defaults:
            raise SystemExit(f"--set {item!r}: unknown option {key!r}; known: {sorted(defaults)}")
        kind = type(defaults[key])
        out[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return out


# Options that only shape the students: a teacher trained under any values of these is the same teacher.
# Options a cached teacher does not depend on: every student and distillation option, derived so that a
# new one cannot be missed (a missed one changes the key, and every cached teacher is trained again).
STUDENT_OPTIONS = {f.name for f in fields(RunConfig) if f.metadata["group"] in ("student", "distillation")}

# Teacher options added after teachers were cached: at these values (their defaults, the behaviour
# before they existed) they stay out of the key, so the cached teachers remain valid.
KEYED_ONLY_OFF_DEFAULT = {("teacher_keep_on", "metric"), ("teacher_ensemble", 1), ("input_dropout", "on")}


def teacher_key(cfg: RunConfig, families: tuple[str, ...]) -> dict[str, Any]:
    """What a cached teacher is keyed by: every option but STUDENT_OPTIONS and KEYED_ONLY_OFF_DEFAULT's
    pairs, and the families trained under --teacher auto or where they differ from cfg.families (a
    teacher auto kept before a family joined it never chose among that family)."""
    key: dict[str, Any] = {k: v for k, v in cfg.to_dict().items()
                           if k not in STUDENT_OPTIONS and (k, v) not in KEYED_ONLY_OFF_DEFAULT}
    if cfg.teacher == "auto" or families != cfg.families:
        key["families"] = list(families)
    return key


def teacher_for(cfg: RunConfig, ds: Dataset, norm: FeatureNorm, tcfg: TrainConfig, device: torch.device,
                cache: Path | None) -> TrainedTeacher:
    """The seed's trained teacher, from `cache` when it holds one trained under the same options (a
    Tolokers teacher takes 5-10 min on a 2-core CPU and is deterministic per seed), else trained
    and, with a cache, saved there. Keyed by every option except STUDENT_OPTIONS, and by the families
    the run trains where the dataset makes them differ from the option: on a heterogeneous graph --kd
    decides whether --teacher auto may keep a type-aware teacher (a homogeneous graph's keys are as
    they were before that entry). A cached teacher of a family the run would not train (saved under
    the old key, before that entry) is trained again and replaced."""
    if cfg.teacher_ensemble > 1:  # each member cached as the single teacher it is
        return teachers.ensemble(cfg, lambda member: teacher_for(member, ds, norm, tcfg, device, cache), ds, device)
    if cache is None:
        return teachers.train_teacher(cfg, ds, norm, tcfg, device, progress=False)
    families = teachers.teacher_families(cfg, ds)
    key = teacher_key(cfg, families)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache / f"{ds.name}-seed{cfg.seed}-{digest}.pt"
    saved = torch.load(path, map_location=device) if path.exists() else None
    # A teacher saved without its family predates --teacher auto: it is the named one (teacher_family).
    if saved is not None and (cfg.teacher_family(saved["metrics"]) in families or "family" not in saved["metrics"]):
        teacher, edges = teachers.teacher_model(cfg, ds, norm, device, family=cfg.teacher_family(saved["metrics"]))
        teacher.load_state_dict(saved["state"])
        return TrainedTeacher(teacher, edges, saved["metrics"])
    trained = teachers.train_teacher(cfg, ds, norm, tcfg, device, progress=False)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"state": trained.model.state_dict(), "metrics": trained.metrics, "options": key}, path)
    return trained


def prepared_for(cfg: RunConfig, ds: Dataset, device: torch.device, cache: Path | None) -> Prepared:
    """What the students of one seed need: `teacher_for`'s teacher (cached or trained) and its signals."""
    norm = teachers.feature_norm(cfg, ds)
    decision = input_dropout.decide(cfg, ds, norm, cfg.train_config, device)
    # Keyed by the decision, not by auto: the same teacher as one trained under --input-dropout on / off.
    trained = teacher_for(decision.config(cfg), ds, norm, cfg.train_config, device, cache)
    return decision.prepared(cfg, ds, norm, device, trained.model, trained.edges, trained.metrics)


def run_dataset(spec: str, seeds: range, students: list[str], variants: list[str],
                overrides: dict[str, Any], rows: list[dict[str, Any]], save: Any,
                cache: Path | None = None, logits_dir: Path | None = None) -> None:
    """Append all rows for one dataset to `rows`: one per (student, variant, seed), plus the teacher per
    seed; `save()` after each row, so a long run cut short keeps what it measured. With `logits_dir`,
    each student's logits [N, C] per variant, before any tail shift, go to one .npz per seed
    (bench/tail.py compares tail-class rules on them)."""
    ds = load_dataset(spec, overrides.get("split", 0))
    device = resolve_device(overrides.get("device", "auto"))
    for seed in seeds:
        cfg = RunConfig(**{**overrides, "dataset": spec, "seed": seed})
        prep = prepared_for(cfg, ds, device, cache)
        m = prep.teacher_metrics
        rows.append(_row(ds.name, cfg.teacher_name(m), "teacher", seed, m))
        _log(rows[-1])
        save()
        for student in students:
            scfg = replace(cfg, student=student)
            floor, raw = None, {}
            for variant in variants:
                trained = train_variant(scfg, prep, variant, probed=scfg.students == cfg.students)
                raw[variant] = trained.logits.numpy()
                if variant == "scratch":
                    floor = tail.floor(trained.logits, ds.data.cpu())
                elif scfg.tail_adjust == "auto":  # what `distill run` ships
                    trained = tail.adjust(trained, ds.data.cpu(), floor)
                m = trained.record()
                rows.append(_row(ds.name, f"{student}-{cfg.student_layers}", variant, seed, m))
                _log(rows[-1])
                save()
            if logits_dir is not None:
                _save_logits(logits_dir / f"{ds.name}-{student}-seed{seed}.npz", ds, raw)


def train_variant(cfg: RunConfig, prep: Prepared, variant: str, probed: bool) -> Trained:
    """One student as `variant` trains it; the scratch students of a run whose input-dropout probe
    trained them (`probed`: the same families) are the probe's, as `distill run` keeps them."""
    if variant == "scratch" and probed and prep.scratch is not None:
        return prep.scratch
    if variant == DEFAULT:
        return train_distilled(cfg, prep, progress=False)
    return train_candidates(cfg, prep, VARIANTS[variant], progress=False)


def _save_logits(path: Path, ds: Dataset, logits: dict[str, np.ndarray]) -> None:
    data = ds.data.cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, y=data.y.numpy(), train=data.train_mask.numpy(), val=data.val_mask.numpy(),
                        test=data.test_mask.numpy(), **logits)


def _row(dataset: str, student: str, variant: str, seed: int, m: dict[str, Any]) -> dict[str, Any]:
    return {"dataset": dataset, "student": student, "variant": variant, "seed": seed,
            **{k: m.get(k) for k in METRICS}, "recall_at_1pct_fpr": m.get("recall_at_1pct_fpr"),
            "per_class_recall": m["per_class_recall"], "seconds": m["seconds"],
            "propagation": m.get("propagation"), "alpha": m.get("alpha"), "temperature": m.get("temperature"),
            "kept": m.get("student"), "best_val": m.get("best_val"), "kd": m.get("kd"),
            "regularised": m.get("regularised", True), "tail_shift": (m.get("tail") or {}).get("shift"),
            **({"input_dropout": m["input_dropout"]} if "input_dropout" in m else {})}  # the teacher row's


def _log(row: dict[str, Any]) -> None:
    print(f"  {row['dataset']} seed {row['seed']} {row['student']:>8} {row['variant']:<20} "
          f"acc {row['accuracy']:.4f} auroc {row['auroc']:.4f} P={row['propagation']} "
          f"alpha={row['alpha']} ({row['seconds']:.1f}s)",
          file=sys.stderr, flush=True)


def _ms(values: list[float | None]) -> str:
    """mean ± std; n/a when a row lacks the metric (rows saved before it was measured) or it is undefined."""
    if any(v is None for v in values):
        return "n/a"
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def table(rows: list[dict[str, Any]], num_classes: dict[str, int]) -> str:
    """Markdown: per dataset and student, one line per variant, mean ± std over seeds."""
    lines = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        key = selection_metric(num_classes[dataset])
        drows = [r for r in rows if r["dataset"] == dataset]
        teacher = [r for r in drows if r["variant"] == "teacher"]
        rare = int(np.argmin(_SUPPORT[dataset]))
        lines += [f"### {dataset} ({len(teacher)} seeds, test set; gain/gap in {key})", "",
                  "| model | variant | accuracy | macro-F1 | AUROC | PR-AUC | paired gain vs scratch (seeds up) "
                  f"| gap to teacher | recall rarest class ({rare}) | chosen on validation |", "|" + "---|" * 10]
        t_mean = np.mean([r[key] for r in teacher])
        lines.append(_line(teacher[0]["student"], "teacher", teacher, key, None, t_mean, rare))
        for student in dict.fromkeys(r["student"] for r in drows if r["variant"] != "teacher"):
            srows = [r for r in drows if r["student"] == student]
            scratch = {r["seed"]: r[key] for r in srows if r["variant"] == "scratch"}
            for variant in dict.fromkeys(r["variant"] for r in canonical(srows)):
                sel = [r for r in srows if r["variant"] == variant]
                lines.append(_line(student, variant, sel, key, scratch, t_mean, rare))
        lines.append("")
    return "\n".join(lines)


# Label counts per dataset: the rarest class is the one whose recall the table tracks.
_SUPPORT: dict[str, list[int]] = {}


def paired_gain(sel: list[dict[str, Any]], scratch: dict[int, float], key: str) -> str:
    """Per-seed (variant - scratch) on the same seed: mean ± std and how many seeds gained."""
    gains = [r[key] - scratch[r["seed"]] for r in sel if r["seed"] in scratch]
    if not gains:
        return ""
    return f"{np.mean(gains):+.4f} ± {np.std(gains):.4f} ({sum(g > 0 for g in gains)}/{len(gains)})"


def _line(student: str, variant: str, sel: list[dict[str, Any]], key: str, scratch: dict[int, float] | None,
          teacher: float, rare: int) -> str:
    mean = float(np.mean([r[key] for r in sel]))
    gain = "" if scratch is None or variant == "scratch" else paired_gain(sel, scratch, key)
    gap = "" if variant == "teacher" else f"{mean - teacher:+.4f}"
    recall = _ms([r["per_class_recall"][rare] for r in sel])
    cells = [_ms([r.get(k) for r in sel]) for k in METRICS]
    return f"| {student} | {variant} | " + " | ".join(cells) + f" | {gain} | {gap} | {recall} | {_chosen(sel)} |"


def _chosen(sel: list[dict[str, Any]]) -> str:
    """Which candidate (propagation, soft-target weight) validation kept, counted over seeds."""
    names = Counter((f"{'+'.join(r['kd'])}: " if r["variant"] == DEFAULT and r.get("kd") else "")
                    + (f"{r['kept']}: " if r.get("kept") and not r["student"].startswith(r["kept"]) else "")
                    + candidate_name(r["propagation"], r.get("alpha"), r.get("temperature"), r.get("regularised", True))
                    for r in sel if r.get("propagation"))
    return ", ".join(f"{name} ×{count}" for name, count in names.most_common()) if len(sel) > 1 else \
        ", ".join(names)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", action="append", default=[], help="dataset spec (repeatable)")
    ap.add_argument("--from-json", type=Path, action="append", default=[],
                    help="re-render the table and plot from earlier --json files (repeatable: merged)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds run are first-seed .. first-seed + seeds - 1 "
                    "(split a long run across processes, then merge with --from-json)")
    ap.add_argument("--students", default="auto", help="comma-separated student names (auto: the run's "
                    "default, the best of the AUTO_STUDENTS families on validation)")
    ap.add_argument("--variants", default=None,
                    help=f"comma-separated, of {list(VARIANTS)} (default: scratch,default, the two students "
                    "`distill run` trains); with --from-json, only these rows (and the teachers) are shown")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a run option")
    ap.add_argument("--teacher-cache", type=Path, default=None, metavar="DIR",
                    help="reuse each seed's trained teacher from DIR (and save new ones there)")
    ap.add_argument("--logits", type=Path, default=None, metavar="DIR",
                    help="save each student's raw logits per variant and seed to DIR (for bench/tail.py)")
    ap.add_argument("--pick-default", action="store_true",
                    help=f"add `default` rows picked on validation from the {' and '.join(AUTO_VARIANTS)} rows "
                    "(what --kd auto keeps), for runs that trained them apart")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--png", type=Path)
    return ap


def merged_rows(paths: list[Path], num_classes: dict[str, int]) -> list[dict[str, Any]]:
    """Rows of earlier --json files; merged runs may repeat a row (each run retrains the teacher of its
    seeds): the first is kept."""
    rows: list[dict[str, Any]] = []
    for path in paths:
        saved = json.loads(path.read_text())
        rows += saved["rows"]
        num_classes.update(saved["num_classes"])
        _SUPPORT.update(saved["support"])
    unique: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        unique.setdefault((r["dataset"], r["student"], r["variant"], r["seed"]), r)
    return list(unique.values())


# The variant of each --kd auto set, in KD_AUTO's order (ties go to the first, as in the pooled choice).
AUTO_VARIANTS = [next(v for v, kinds in VARIANTS.items() if kinds == k and v != DEFAULT) for k in KD_AUTO]


def pick_default(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`default` rows made from runs of each --kd auto set alone (AUTO_VARIANTS): per dataset,
    student and seed with a row of each, a copy of the one with the best validation score, the
    first on a tie; the response row where auto never tries structure (a graph-free student, a
    type-aware teacher). What `--kd auto` keeps from the same candidates pooled, each trained as it
    is alone (same seed, same initialisation; exact where training is deterministic, as on a CPU),
    so a long run need not train them twice."""
    picked = []
    groups: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
    # Teacher rows name the kept teacher `family-depth` (`gat-sep-6`).
    teachers = {(r["dataset"], r["seed"]): r["student"].rsplit("-", 1)[0] for r in rows if r["variant"] == "teacher"}
    for r in rows:
        if r["variant"] in AUTO_VARIANTS:
            groups.setdefault((r["dataset"], r["student"], r["seed"]), {})[r["variant"]] = r
    for (dataset, _, seed), runs in groups.items():
        if len(runs) < len(AUTO_VARIANTS):
            continue
        response = runs[AUTO_VARIANTS[0]]
        tried = AUTO_VARIANTS if auto_tries_structure(teachers.get((dataset, seed), ""), response["kept"]) \
            else AUTO_VARIANTS[:1]
        best = best_on_validation([(v, lambda r=runs[v]: r) for v in tried], key=lambda r: (r["best_val"],)).item
        picked.append({**best, "variant": DEFAULT, "kd": best.get("kd") or list(VARIANTS[best["variant"]])})
    return picked


def main() -> int:
    args = parser().parse_args()
    overrides = parse_set(args.set)
    variants = (args.variants or f"scratch,{DEFAULT}").split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    num_classes: dict[str, int] = {}
    rows = merged_rows(args.from_json, num_classes)
    if not args.from_json and not args.dataset:
        raise SystemExit("give --dataset SPEC (repeatable) or --from-json FILE")

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"rows": rows, "overrides": overrides, "num_classes": num_classes,
                                             "support": _SUPPORT}, indent=1))

    for spec in args.dataset:
        ds = load_dataset(spec, overrides.get("split", 0))
        num_classes[ds.name] = ds.num_classes
        y = ds.data.y.numpy()
        _SUPPORT[ds.name] = np.bincount(y[y >= 0], minlength=ds.num_classes).tolist()  # -1: unlabelled
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        run_dataset(spec, seeds, args.students.split(","), variants, overrides, rows, save,
                    args.teacher_cache, args.logits)
    if args.pick_default:
        have = {(r["dataset"], r["student"], r["seed"]) for r in rows if r["variant"] == DEFAULT}
        rows += [r for r in pick_default(rows) if (r["dataset"], r["student"], r["seed"]) not in have]
    if args.variants:  # a re-render of merged runs may show a subset of their rows
        rows[:] = [r for r in rows if r["variant"] in ("teacher", *variants)]
    print(table(rows, num_classes))
    save()
    if args.png:
        plot(rows, num_classes, args.png)
        print(f"plot: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
