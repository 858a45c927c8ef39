"""What a distilled student does on nodes whose soft labels it never saw, with and without weight decay
and dropout (--soft-regularise on / off).

    python bench/inductive.py --dataset planetoid:../shared/datasets/planetoid/Cora --seeds 3 --students mlp \
        --set teacher=gcnii --teacher-cache runs/teachers

Every soft-target student fits the teacher's soft labels on every node, the test nodes included
(transductive, as GLNN and CPF train): right for nodes that are in the graph when the job runs, but
a node added later reaches the service without one. So each student is trained twice per setting:
as `distill run` trains it, and with the test nodes' soft labels hidden (the KL term restricted to
the other nodes), which is how a node added after training meets the student. Validation picks the
candidate either way, and its nodes keep their soft labels in both, as they do in `distill run`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.accuracy import parse_set, prepared_for  # noqa: E402
from distill import objectives  # noqa: E402
from distill.config import RunConfig  # noqa: E402
from distill.data import load_dataset  # noqa: E402
from distill.students import train_candidates  # noqa: E402
from distill.train import resolve_device, selection_metric  # noqa: E402

SETTINGS = ("on", "off")
SOFT_LABELS = ("all nodes", "test hidden")


@contextmanager
def hidden_soft_labels(visible: torch.Tensor | None) -> Iterator[None]:
    """While active, the soft-target KL of every student covers only the `visible` nodes [N] (bool),
    its class-balanced weights (if any) counted over them alone; None leaves it as `distill run` has
    it. Swaps `objectives.soft_target_kl`, which the objective calls through its module, and puts it
    back however the block ends."""
    real = objectives.soft_target_kl
    if visible is not None:
        # Class shares under --kd-balance on are recounted over the visible nodes: the hidden ones
        # must not shape the weights either.
        objectives.soft_target_kl = lambda s, t, temperature, weight=None: real(
            s[visible], t[visible], temperature,
            None if weight is None else objectives.class_balanced_weights(t[visible]))
    try:
        yield
    finally:
        objectives.soft_target_kl = real


def run(spec: str, seeds: int, students: list[str], overrides: dict[str, object], cache: Path | None) -> str:
    """Markdown: per student, test metric (mean ± std over seeds) for each soft-label view x setting."""
    ds = load_dataset(spec, int(str(overrides.get("split", 0))))
    device = resolve_device(str(overrides.get("device", "auto")))
    key = selection_metric(ds.num_classes)
    scores: dict[tuple[str, str, str], list[float]] = {}
    teacher_scores = []
    for seed in range(seeds):
        cfg = RunConfig(**{**overrides, "dataset": spec, "seed": seed, "kd": "response"})
        prep = prepared_for(cfg, ds, device, cache)
        teacher_scores.append(prep.teacher_metrics[key])
        for student in students:
            for view in SOFT_LABELS:
                visible = None if view == "all nodes" else ~ds.data.test_mask.to(device)
                for setting in SETTINGS:
                    scfg = replace(cfg, student=student, soft_regularise=setting)
                    with hidden_soft_labels(visible):
                        result = train_candidates(scfg, prep, ("response",), progress=False)
                    scores.setdefault((student, view, setting), []).append(result.test[key])
                    print(f"  seed {seed} {student} {view} soft-regularise {setting}: test {key} "
                          f"{result.test[key]:.4f}", file=sys.stderr, flush=True)
    head = " | ".join(f"{view}, {setting}" for view in SOFT_LABELS for setting in SETTINGS)
    lines = [f"### {ds.name}: test {key}, {seeds} seeds (teacher {np.mean(teacher_scores):.4f})", "",
             f"| student | {head} |", "|---" * (1 + len(SOFT_LABELS) * len(SETTINGS)) + "|"]
    for student in students:
        cells = [f"{np.mean(v):.4f} ± {np.std(v):.4f}" for view in SOFT_LABELS for setting in SETTINGS
                 for v in [scores[(student, view, setting)]]]
        lines.append(f"| {student} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, help="dataset spec")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--students", default="mlp", help="comma-separated student families")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any distill run option")
    ap.add_argument("--teacher-cache", type=Path, default=None, metavar="DIR", help="as in bench/accuracy.py")
    args = ap.parse_args()
    print(run(args.dataset, args.seeds, args.students.split(","), parse_set(args.set), args.teacher_cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
