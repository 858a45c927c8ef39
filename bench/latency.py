"""In-process latency of one scoring call (cache lookup + inference, no HTTP), per bundle.

    python bench/latency.py /tmp/cora /tmp/cora_mlp [--calls 2000] [--threads 1]

For each bundle: p50 / p99 of the cache stage, the inference stage and their total over `--calls`
single-node calls on random nodes (after the service's own warm-up), plus new-node calls and
8-node batches, and on a typed bundle (`graph.typed`) new nodes sent with typed links ("typed": 1-3
random nodes of each via type, expanded to meta-path neighbours inside the timed call); then each
bundle's median relative to the first. Imports serve only (no torch).

Last, two rows that time the machine, not a bundle ("machine reference"): a no-op onnxruntime call
(an Identity model, the service's session options) and a float32 [64, 64] @ [64, 64] numpy product.
A table from another machine or session is comparable only beside these: a bundle that got slower
while they did not is a regression; one that got slower with them is the machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serve.model import session_options  # noqa: E402
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


REFERENCE = "(machine reference)"


def reference(calls: int, threads: int) -> list[dict[str, object]]:
    """Rows for the machine's own speed (module docstring): `calls` no-op onnxruntime calls and
    `calls` [64, 64] float32 matrix products, p50 / p99 in ms in the total columns."""
    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1]) for name in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "noop", io[:1], io[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what every onnxruntime release since 1.10 reads
    session = ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                   providers=["CPUExecutionProvider"])
    one = np.zeros(1, dtype=np.float32)
    a = np.random.default_rng(0).random((64, 64), dtype=np.float32)
    rows = []
    for mode, call in (("onnx no-op", lambda: session.run(None, {"x": one})), ("matmul 64", lambda: a @ a)):
        for _ in range(200):  # warm-up, as the bundles get the service's
            call()
        seconds = []
        for _ in range(calls):
            start = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - start)
        row: dict[str, object] = {"bundle": REFERENCE, "mode": mode, "calls": calls, "nodes/block": ""}
        row.update({f"{stage} p{q}": "" for stage in ("cache", "inference") for q in (50, 99)})
        row.update({f"total p{q}": float(np.percentile(seconds, q) * 1e3) for q in (50, 99)})
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
    rows += reference(args.calls, args.threads)
    print("latency in ms (in-process, no HTTP)\n")
    print(table(rows))
    base = {r["mode"]: float(r["total p50"]) for r in rows if r["bundle"] == rows[0]["bundle"]}  # type: ignore[arg-type]
    print(f"\nmedian total relative to {rows[0]['bundle']}:")
    for r in rows:
        if r["bundle"] == REFERENCE:
            continue
        print(f"  {r['bundle']:>40} {r['mode']:>7}: x{float(r['total p50']) / base[r['mode']]:.2f}")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
