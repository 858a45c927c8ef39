"""Seconds per training epoch of each teacher family over a graph: what a teacher costs before any
accuracy is known, on this machine's CPU or its GPU (`--device auto`). Prints a table of medians.

    OMP_NUM_THREADS=1 python bench/epoch_time.py --dataset npz:$DATASETS/heterophilous/tolokers.npz \\
        --teachers sage-res,gcnii,gat-sep --epochs 5 --threads 1

One epoch is the model's share of what `fit` runs per epoch: a training forward (GRAND's: all of its
random views) and backward over the teacher's edges (the full graph unless `--set teacher_fanout=K`),
an Adam step and an eval-mode forward; `fit`'s scoring of that forward (AUROC on the host) and its
copy of an improved state are left out. Each family is built as `distill run` builds it (`--set`
takes any run option: depth, width, fan-out); the first epoch is a warm-up and is not counted. The
sage-res, GCNII and GRAND teachers propagate by one sparse product per layer (hop); their "message
passing" rows run the same models through PyG's gather-scatter with unit edge weights, the path
structure KD's weighted edges take (for sage-res one multiply per edge more than its unweighted
gather-scatter was).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.accuracy import parse_set  # noqa: E402
from distill import teacher as teachers  # noqa: E402
from distill.config import RunConfig  # noqa: E402
from distill.data import load_dataset  # noqa: E402
from distill.errors import ConfigError, DatasetError  # noqa: E402
from distill.objectives import supervised_views  # noqa: E402
from distill.train import Edges, param_groups, resolve_device  # noqa: E402

# Families whose unweighted propagation is a sparse product, and the suffix of their gather-scatter row.
SPARSE_PRODUCT = ("sage-res", "gcnii", "grand")
MESSAGE_PASSING = " (message passing)"


def epoch_seconds(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, edges: Edges,
                  epochs: int, weight_decay: float, device: torch.device) -> list[float]:
    """Time `epochs` + 1 epochs (the first a warm-up) of `model` on x [N, F], labels y [N] and the
    train mask [N] -> the seconds of each counted epoch."""
    opt = torch.optim.Adam(param_groups(model, weight_decay), lr=0.01)
    times = []
    for _ in range(epochs + 1):
        start = time.perf_counter()
        model.train()
        opt.zero_grad()
        supervised_views(model.run(x, edges.edge_index, edges.edge_weight), y, train).backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            model.run(x, edges.edge_index, edges.edge_weight)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times[1:]


def run(spec: str, families: list[str], epochs: int, overrides: dict[str, object], device: torch.device) -> str:
    """Markdown: per family, its depth, median and min seconds per epoch, and its ratio to the fastest."""
    ds = load_dataset(spec, int(str(overrides.get("split", 0))))
    cfg = RunConfig(**{**overrides, "dataset": spec})
    norm = teachers.feature_norm(cfg, ds)
    data = ds.data.to(device)
    rows: list[tuple[str, int, list[float]]] = []
    for family in families:
        names = [family, family + MESSAGE_PASSING] if family in SPARSE_PRODUCT else [family]
        for name in names:
            model, edges = teachers.teacher_model(cfg, ds, norm, device, family)
            if name.endswith(MESSAGE_PASSING):
                edges = Edges(edges.edge_index, torch.ones(edges.edge_index.size(1), device=device))
            times = epoch_seconds(model, data.x, data.y, data.train_mask, edges, epochs, cfg.weight_decay, device)
            rows.append((name, cfg.teacher_depth(family), times))
            print(f"  {name}: median {statistics.median(times):.3f} s/epoch", file=sys.stderr, flush=True)
    fastest = min(statistics.median(t) for _, _, t in rows)
    lines = [f"### {ds.name}: {ds.data.num_nodes} nodes, {ds.data.edge_index.size(1)} edges, {device.type}, "
             f"{torch.get_num_threads()} thread(s), {epochs} epochs after a warm-up", "",
             "| teacher | layers | median s/epoch | min s/epoch | x fastest |", "|---|---|---|---|---|"]
    for name, depth, times in rows:
        median = statistics.median(times)
        lines.append(f"| {name} | {depth} | {median:.3f} | {min(times):.3f} | {median / fastest:.2f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="synthetic", help="dataset spec (default: the built-in synthetic graph)")
    ap.add_argument("--teachers", default="sage-res,gcnii,grand,gat-sep,gat", help="comma-separated teacher families")
    ap.add_argument("--epochs", type=int, default=5, help="timed epochs per family, after one warm-up")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any distill run option")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.epochs < 1:
        print(f"--epochs {args.epochs}: give at least 1", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
        print(run(args.dataset, args.teachers.split(","), args.epochs, parse_set(args.set), device))
    except (ConfigError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
