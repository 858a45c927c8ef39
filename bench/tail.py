"""Tail-class rules compared on the same students: rare-class recall and what it costs.

    python bench/accuracy.py --dataset planetoid:$DATASETS/planetoid/Cora --seeds 5 \
        --variants scratch,default --logits runs/logits/cora
    python bench/tail.py --logits runs/logits/cora --png docs/results/tail.png

Reads the raw logits `bench/accuracy.py --logits` saved (scratch and distilled student per seed,
before any tail shift) and applies each rule to the distilled student, all chosen on validation
against the same seed's scratch student, reported on test:

- `none`: the distilled student as trained;
- `prior tau`: every class shifted by -tau * log(prior), tau in {0, 0.25, ..., 1}, the smallest
  whose validation recall of the rarest class reaches the scratch student's, never at the price of
  validation AUROC (the rule `--tail-adjust auto` used before the shift);
- `shift, recall floor`: the rarest class's logit raised, the smallest shift that reaches the
  scratch student's validation recall (distill.tail without the prediction-share floor);
- `shift, recall + share floors`: distill.tail as `distill run` ships it.

"recall rarest" is the test recall of the class with the fewest nodes in the graph (as in
bench/accuracy.py); "seeds >= scratch" counts seeds where it is at least the scratch student's.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill import tail  # noqa: E402
from distill.metrics import binary_auroc, evaluate  # noqa: E402
from distill.train import selection_metric  # noqa: E402

Rule = Callable[[Tensor, Tensor, Data], Tensor]  # (scratch, distilled logits [N, C], data) -> offsets [C]
PRIOR_TAUS = (0.0, 0.25, 0.5, 0.75, 1.0)


def prior_tau(scratch: Tensor, logits: Tensor, data: Data) -> Tensor:
    """The earlier rule: -tau * log(prior) on every class, AUROC-guarded, smallest tau to the recall floor."""
    floor, log_prior = tail.floor(scratch, data), tail.labelled_prior(data, logits.size(1)).log()
    rare, val = tail.rarest_class(data, logits.size(1)), data.val_mask

    def scores(offsets: Tensor) -> tuple[float, float]:
        m = evaluate(torch.softmax(logits[val] + offsets, 1).numpy(), data.y[val].numpy())
        return float(m["auroc"]), float(m["per_class_recall"][rare])  # type: ignore[arg-type, index]

    base_auroc = scores(torch.zeros(logits.size(1)))[0]
    tried = [(o, *scores(o)) for o in (-t * log_prior - (-t * log_prior).mean() for t in PRIOR_TAUS)]
    allowed = [(o, recall) for o, auroc, recall in tried if auroc >= base_auroc - 1e-9]
    reaching = [o for o, recall in allowed if recall >= floor.recall]
    return reaching[0] if reaching else max(allowed, key=lambda a: a[1])[0]


def shift(use_rate: bool) -> Rule:
    """distill.tail's rule, with (as shipped) or without the share-of-predictions floor."""

    def rule(scratch: Tensor, logits: Tensor, data: Data) -> Tensor:
        floor = tail.floor(scratch, data)
        return torch.tensor(tail.choose(logits, data, floor if use_rate else replace(floor, rate=0.0)).offsets)
    return rule


RULES: dict[str, Rule] = {
    "none": lambda scratch, logits, data: torch.zeros(logits.size(1)),
    "prior tau": prior_tau,
    "shift, recall floor": shift(use_rate=False),
    "shift, recall + share floors": shift(use_rate=True),
}


def _load(path: Path) -> tuple[Data, dict[str, Tensor]]:
    f = np.load(path)
    # The distilled student: the run's default (--kd auto) where it was saved, else response KD alone.
    distilled = "default" if "default" in f.files else "response"
    missing = {"y", "train", "val", "test", "scratch", distilled} - set(f.files)
    if missing:
        raise SystemExit(f"{path}: no {sorted(missing)}; save it with bench/accuracy.py --logits DIR "
                         "--variants scratch,default")
    t = {k: torch.from_numpy(f[k]) for k in f.files}
    data = Data(y=t["y"], train_mask=t["train"], val_mask=t["val"], test_mask=t["test"], num_nodes=len(t["y"]))
    return data, {"scratch": t["scratch"], "distilled": t[distilled]}


def rare_classes(data: Data, num_classes: int) -> tuple[int, int]:
    """(the class with the fewest nodes in the graph, the rarest labelled class the rule shifts)."""
    y = data.y.numpy()
    return int(np.argmin(np.bincount(y[y >= 0], minlength=num_classes))), tail.rarest_class(data, num_classes)


def measure(path: Path) -> dict[str, dict[str, float]]:
    """One seed's file -> per rule (and `scratch`): test recall of the rarest class, selection metric,
    macro-F1; and under `ranking`, that class's one-vs-rest AUROC per model and split."""
    data, logits = _load(path)
    c = logits["scratch"].size(1)
    rare, key = rare_classes(data, c)[0], selection_metric(c)
    test = data.test_mask

    def scored(z: Tensor) -> dict[str, float]:
        m = evaluate(torch.softmax(z[test], 1).numpy(), data.y[test].numpy())
        return {"recall": m["per_class_recall"][rare], key: m[key], "macro_f1": m["macro_f1"]}  # type: ignore

    out = {"scratch": scored(logits["scratch"])}
    for name, rule in RULES.items():
        out[name] = scored(logits["distilled"] + rule(logits["scratch"], logits["distilled"], data))
    out["ranking"] = {f"{model} {split}": rare_ranking(logits[model], data, rare, mask)
                      for model in ("scratch", "distilled") for split, mask in (("val", data.val_mask), ("test", test))}
    return out


def rare_ranking(logits: Tensor, data: Data, rare: int, mask: Tensor) -> float:
    """One-vs-rest AUROC of class `rare` over the `mask` nodes: how well the model ranks that class's
    nodes first. A shift of that class's logit moves every node's score for it the same way, so no
    rule here changes this: where the distilled student ranks worse, only training can help."""
    probs = torch.softmax(logits[mask], 1)[:, rare].numpy()
    return binary_auroc(probs, data.y[mask].numpy() == rare)


def table(files: list[Path]) -> tuple[str, dict[str, dict[str, list[float]]]]:
    """Markdown per dataset and student (the file name before `-seed`, after its folder's name when
    the files come from several folders), and the recalls per group and rule."""
    groups: dict[str, list[Path]] = {}
    several = len({f.parent for f in files}) > 1  # runs of the same graph and student from different folders
    for f in files:
        name = f.stem.rsplit("-seed", 1)[0]
        groups.setdefault(f"{f.parent.name}/{name}" if several else name, []).append(f)
    lines: list[str] = []
    recalls: dict[str, dict[str, list[float]]] = {}
    for name, paths in groups.items():
        runs = [measure(p) for p in paths]
        key = next(k for k in runs[0]["scratch"] if k not in ("recall", "macro_f1"))
        data, logits = _load(paths[0])
        rare, shifted = rare_classes(data, logits["scratch"].size(1))
        other = "" if rare == shifted else f"; the rule shifts class {shifted}, the rarest labelled one"
        lines += [f"#### {name} ({len(runs)} seeds, test set; rarest class {rare}{other})", "",
                  f"| rule | recall rarest class | seeds >= scratch | {key} | macro-F1 |", "|---|---|---|---|---|"]
        recalls[name] = {}
        for rule in ["scratch", *RULES]:
            r = [run[rule]["recall"] for run in runs]
            up = sum(run[rule]["recall"] >= run["scratch"]["recall"] for run in runs)
            recalls[name][rule] = r
            cells = [f"{np.mean(v):.4f} ± {np.std(v):.4f}" for v in
                     (r, [run[rule][key] for run in runs], [run[rule]["macro_f1"] for run in runs])]
            seeds = "" if rule == "scratch" else f"{up}/{len(runs)}"
            lines.append(f"| {rule} | {cells[0]} | {seeds} | {cells[1]} | {cells[2]} |")
        rank = {k: np.nanmean([run["ranking"][k] for run in runs]) for k in runs[0]["ranking"]}
        lines += ["", f"One-vs-rest AUROC of class {rare} (no shift changes it), validation / test: scratch "
                  f"{rank['scratch val']:.3f} / {rank['scratch test']:.3f}, distilled {rank['distilled val']:.3f} / "
                  f"{rank['distilled test']:.3f}.", ""]
    return "\n".join(lines), recalls


def plot(recalls: dict[str, dict[str, list[float]]], path: Path) -> None:
    import matplotlib.pyplot as plt

    rules = ["scratch", *RULES]
    fig, ax = plt.subplots(figsize=(2.2 + 1.8 * len(recalls), 3.6))
    width = 0.8 / len(rules)
    for i, rule in enumerate(rules):
        means = [np.mean(recalls[d][rule]) for d in recalls]
        ax.bar(np.arange(len(recalls)) + i * width, means, width, label=rule)
    ax.set_xticks(np.arange(len(recalls)) + 0.4 - width / 2, list(recalls))
    ax.set_ylabel("test recall of the rarest class")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--logits", type=Path, action="append", required=True, help="a bench/accuracy.py --logits DIR")
    ap.add_argument("--png", type=Path)
    args = ap.parse_args()
    files = sorted(f for d in args.logits for f in d.glob("*.npz"))
    if not files:
        raise SystemExit(f"--logits {[str(d) for d in args.logits]}: no .npz files; run bench/accuracy.py --logits")
    text, recalls = table(files)
    print(text)
    if args.png:
        plot(recalls, args.png)
        print(f"plot: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
