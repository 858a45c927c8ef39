"""In-process latency of one scoring call (cache lookup + inference, no HTTP), per bundle.

    python bench/latency.py /tmp/cora /tmp/cora_mlp [--calls 2000] [--threads 1]

For each bundle: p50 / p99 of the cache stage, the inference stage and their total over `--calls`
single-node calls on random nodes (after the service's own warm-up), plus new-node calls and
8-node batches, and on a typed bundle (`graph.typed`) new nodes sent with typed links ("typed": 1-3
random nodes of each via type, expanded to meta-path neighbours inside the timed call); then each
bundle's median relative to the first. Imports serve only (no torch).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serve.runtime import build  # noqa: E402
from serve.scoring import NewNode, Scorer  # noqa: E402
from serve.settings import Settings  # noqa: E402


def timed(scorer: Scorer, calls: list[tuple[list[int], list[NewNode]]]) -> dict[str, np.ndarray]:
    """Wall seconds of each call [calls], and its cache / inference stages as the scorer reports them."""
    total, cache, infer = [], [], []
    for ids, new in calls:
        start = time.perf_counter()
        scores = scorer.score(ids, new)
        total.append(time.perf_counter() - start)
        cache.append(scores.cache_s)
        infer.append(scores.inference_s)
    return {"cache": np.array(cache), "inference": np.array(infer), "total": np.array(total)}


def workloads(scorer: Scorer, calls: int, seed: int) -> dict[str, list[tuple[list[int], list[NewNode]]]]:
    store = scorer.store
    rng = np.random.default_rng(seed)
    ids = store.node_ids[rng.integers(0, store.num_nodes, size=(calls, 8))]
    donors = rng.integers(0, store.num_nodes, size=calls)
    new = [[NewNode(np.asarray(store.features[d]).tolist(), ids[i, :3].tolist())] for i, d in enumerate(donors)]
    found = {
        "single": [([int(row[0])], []) for row in ids],
        "batch8": [(row.tolist(), []) for row in ids[: max(calls // 4, 100)]],
        "new": [([], n) for n in new[: max(calls // 4, 100)]],
    }
    if scorer.typed is not None:
        tables = scorer.typed.indexes
        found["typed"] = [([], [NewNode(n[0].features, [], {
            name: rng.choice(table.ids, size=min(int(rng.integers(1, 4)), len(table)), replace=False).tolist()
            for name, table in tables.items()})]) for n in new]
    return found


def bench(bundle: Path, calls: int, threads: int) -> list[dict[str, object]]:
    settings = Settings(bundle=bundle, intra_op_threads=threads)
    service = build(settings)
    scorer = service.scorer
    sizes = [scorer.cache.get(i).size for i in range(min(scorer.store.num_nodes, 2000))]
    rows = []
    for mode, work in workloads(scorer, calls, seed=1).items():
        t = timed(scorer, work)
        row: dict[str, object] = {"bundle": service.bundle.version, "mode": mode, "calls": len(work),
                                  "nodes/block": float(np.mean(sizes))}
        for stage, values in t.items():
            row[f"{stage} p50"] = float(np.percentile(values, 50) * 1e3)
            row[f"{stage} p99"] = float(np.percentile(values, 99) * 1e3)
        rows.append(row)
    return rows


def table(rows: list[dict[str, object]]) -> str:
    def cell(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    cols = list(rows[0])
    widths = [max(len(c), *(len(cell(r[c])) for r in rows)) for c in cols]
    lines = [" | ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("-|-".join("-" * w for w in widths))
    lines += [" | ".join(cell(r[c]).rjust(w) for c, w in zip(cols, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", nargs="+", type=Path, help="bundle directories")
    parser.add_argument("--calls", type=int, default=2000, help="single-node calls per bundle (>= 1000)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    args = parser.parse_args(argv)
    if args.calls < 1000:
        parser.error("--calls must be >= 1000 for a meaningful p99")
    rows = [row for bundle in args.bundles for row in bench(bundle, args.calls, args.threads)]
    print("latency in ms (in-process, no HTTP)\n")
    print(table(rows))
    base = {r["mode"]: float(r["total p50"]) for r in rows if r["bundle"] == rows[0]["bundle"]}  # type: ignore[arg-type]
    print(f"\nmedian total relative to {rows[0]['bundle']}:")
    for r in rows:
        print(f"  {r['bundle']:>40} {r['mode']:>7}: x{float(r['total p50']) / base[r['mode']]:.2f}")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
