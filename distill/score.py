"""`distill score`: a bundle's student over many nodes, offline, through the service's own code.

The bundle is opened with `serve.runtime.open_service` (verification, onnxruntime session, graph
store) and every number comes from its `Scorer`, so a score written here is the score the service
returns for that node:

- graph students: each target's k-hop block (`GraphStore.block`, what the service caches) packed
  block-diagonally by `Scorer.run_blocks`, at most `PACK_NODES` rows per onnxruntime call;
- the graph-free MLP: a node's block is its own input row, so packing n blocks is exactly
  `store.inputs(nodes)`; one onnxruntime call per chunk of rows, no per-node Python objects.

No second implementation of the model exists: full-graph propagation would need a sparse copy of
the student (the ONNX graph takes a dense [n, n] adj), so graph students are scored block by block.
Imports no torch: it needs bundle/, serve/, onnxruntime and numpy (tqdm for the progress bar).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bundle import ids as id_rules
from bundle import signing
from distill.errors import DistillError
from serve.errors import BundleError
from serve.model import softmax
from serve.runtime import Service, open_service
from serve.scoring import Scorer

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
FORMATS = ("npy", "csv", "parquet")
# Rows of one onnxruntime call for graph students: the service's default. Block-diagonal packing
# multiplies zeros (per target the dense adj costs O(pack rows)): packs of 1-512 rows all scored
# 9-15 k nodes/s of inference on Tolokers.
PACK_NODES = 128
# Rows per onnxruntime call for the graph-free MLP: 4096 measured 5-7 M nodes/s in process on a
# 200k-node synthetic graph (1024: ~5 M, 65536: 3-4 M, out of cache), one thread.
DEFAULT_BATCH_GRAPH_FREE = 4096
DEFAULT_BATCH_GRAPH = 1024  # targets per step for graph students (progress granularity; packs stay small)


class ScoreError(DistillError):
    """A bad bundle, nodes file, output path or format: exit code 2, one line."""


@dataclass(frozen=True)
class Options:
    """What `distill score` was asked: `nodes` is "all" or a file of external ids of the bundle's kind
    (.npy or text, one per line; read_nodes); `fmt` None = from the suffix of `out`; `batch` 0 = the
    default for the student kind."""

    bundle: Path
    out: Path
    nodes: str = "all"
    fmt: str | None = None
    batch: int = 0
    threads: int = 1
    progress: bool = False


@dataclass(frozen=True)
class Result:
    """node_ids [n] (external: int64, or <U{w} strings), labels int64 [n], probabilities float32 [n, C],
    and timings."""

    node_ids: npt.NDArray[np.generic]
    labels: I64
    probabilities: F32
    class_names: list[str]
    load_s: float
    score_s: float
    write_s: float = 0.0

    @property
    def nodes_per_s(self) -> float:
        return len(self.labels) / self.score_s if self.score_s > 0 else float("inf")


def output_format(out: Path, fmt: str | None) -> str:
    """The format to write: `fmt`, else the suffix of `out`. Parquet needs pyarrow (checked here,
    before any scoring)."""
    chosen = fmt or out.suffix.lstrip(".").lower()
    if chosen not in FORMATS:
        raise ScoreError(f"cannot tell the output format of {out}: pass --format {'|'.join(FORMATS)} "
                         "or name the file .npy / .csv / .parquet")
    if chosen == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ScoreError("--format parquet needs pyarrow, which is not installed: pip install pyarrow "
                             "(or use --format npy / csv)") from None
    if not out.parent.is_dir():
        raise ScoreError(f"--out {out}: directory {out.parent} does not exist")
    return chosen


def open_bundle(bundle: Path, threads: int) -> Service:
    """The service's own loader (signature checked under DISTILL_BUNDLE_KEY when set), with no block
    cache: a bulk pass touches each block once, so caching would only cost memory."""
    try:
        key = signing.key_from_env(signing.JOB_KEY_ENV)
    except ValueError as exc:
        raise ScoreError(str(exc)) from None
    try:
        return open_service(bundle, intra_op_threads=threads, cache_budget_bytes=0, pack_nodes=PACK_NODES, key=key)
    except BundleError as exc:
        raise ScoreError(f"bundle {bundle}: {exc.message}") from None


def read_nodes(spec: str, scorer: Scorer) -> I64:
    """"all" -> every internal index in bundle order; else a file of external ids of the bundle's kind
    -> their internal indices [n]. .npy: a 1-D integer array, or for a bundle of string ids a unicode
    one (`<U{w}`; object arrays are refused); anything else: text, one id per line (integers: surrounding
    blanks ignored; strings: each line is one id as written, only a CRLF's CR dropped; empty lines skipped)."""
    store = scorer.store
    if spec == "all":
        return np.arange(store.num_nodes, dtype=np.int64)
    ids = _read_ids(Path(spec)) if store.id_type == "int64" else _read_string_ids(Path(spec))
    internal, unknown = store.lookup(ids)
    if len(unknown):
        shown = ", ".join(str(i) for i in unknown[:5].tolist())
        raise ScoreError(f"--nodes {spec}: {len(unknown)} id(s) are not in the bundle's graph (e.g. {shown})")
    return internal


def _read_ids(path: Path) -> I64:
    ids: I64
    try:
        if path.suffix == ".npy":
            raw = np.load(path, allow_pickle=False)
            if raw.ndim != 1 or not np.issubdtype(raw.dtype, np.integer):
                raise ScoreError(f"--nodes {path}: expected a 1-D integer array, got {raw.dtype} {list(raw.shape)}")
            ids = raw.astype(np.int64)
        else:
            lines = [line.strip() for line in path.read_text().splitlines()]
            ids = np.array([int(line) for line in lines if line], dtype=np.int64)
    except (OSError, ValueError, OverflowError) as exc:
        raise ScoreError(f"--nodes {path}: not a readable list of integer node ids ({exc})") from None
    if ids.size == 0:
        raise ScoreError(f"--nodes {path}: no node ids in the file")
    return ids


def _read_string_ids(path: Path) -> npt.NDArray[np.str_]:
    """A file of string ids (bundle.ids rules: 1 to 256 characters, no control characters)."""
    try:
        if path.suffix == ".npy":
            raw = np.load(path, allow_pickle=False)
            if raw.ndim != 1 or raw.dtype.kind != "U":
                raise ScoreError(f"--nodes {path}: this bundle's node ids are strings: expected a 1-D unicode "
                                 f"array (numpy <U), got {raw.dtype} {list(raw.shape)}")
            keys: list[str] = raw.tolist()
        else:
            keys = [line.removesuffix("\r") for line in path.read_text(encoding="utf-8").split("\n")]
            keys = [key for key in keys if key]
        if not keys:
            raise ScoreError(f"--nodes {path}: no node ids in the file")
        return id_rules.to_array(keys, "string")
    except (OSError, ValueError) as exc:  # id_rules.IdError and UnicodeDecodeError are ValueErrors
        raise ScoreError(f"--nodes {path}: not a readable list of string node ids ({exc})") from None


def chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most `size` over range(n)."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def logits_of(scorer: Scorer, internal: I64) -> F32:
    """Served logits of existing internal nodes [n] -> float32 [n, C]. Graph-free: a node's block is
    its own input row, and packing concatenates rows, so this is one call on store.inputs. Else the
    service's block-diagonal packing over each node's block (built together, as the service's cache
    fill builds them, not cached)."""
    if scorer.model.graph_free:
        return scorer.model.logits(scorer.store.inputs(internal), None)
    return scorer.run_blocks(list(scorer.store.blocks(internal)))


def score_nodes(scorer: Scorer, internal: I64, batch: int, progress: bool = False) -> tuple[F32, I64]:
    """Probabilities float32 [n, C] and labels int64 [n] of internal nodes [n], `batch` per step."""
    probabilities = np.empty((len(internal), scorer.model.num_classes), dtype=np.float32)
    steps = list(chunks(len(internal), batch))
    bar = _progress(len(internal)) if progress and len(steps) > 1 else None
    for part in steps:
        logits = logits_of(scorer, internal[part])
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite rows are reported below
            probabilities[part] = softmax(logits)
        if bar is not None:
            bar.update(part.stop - part.start)
    if bar is not None:
        bar.close()
    bad = np.flatnonzero(~np.isfinite(probabilities).all(axis=1))
    if len(bad):
        ids = scorer.store.node_ids[internal[bad[:5]]].tolist()
        raise ScoreError(f"the model produced non-finite scores for {len(bad)} of {len(internal)} nodes "
                         f"(e.g. node ids {ids}); the bundle is unusable for them")
    return probabilities, probabilities.argmax(axis=1).astype(np.int64)


def _progress(total: int) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # the progress bar is a nicety; the distill extra ships tqdm
        return None
    return tqdm(total=total, unit="node", unit_scale=True, desc="scoring", leave=False)


def score(opts: Options) -> Result:
    """Open, score, write -> the result with its timings (score_s covers node resolution, blocks,
    onnxruntime and softmax; not the bundle's verification nor the write)."""
    if opts.batch < 0 or opts.threads < 1:
        raise ScoreError(f"--batch {opts.batch} must be >= 0 (0 = default) and --threads {opts.threads} >= 1")
    fmt = output_format(opts.out, opts.fmt)
    started = time.perf_counter()
    service = open_bundle(opts.bundle, opts.threads)
    scorer = service.scorer
    loaded = time.perf_counter()
    internal = read_nodes(opts.nodes, scorer)
    batch = opts.batch or (DEFAULT_BATCH_GRAPH_FREE if scorer.model.graph_free else DEFAULT_BATCH_GRAPH)
    probabilities, labels = score_nodes(scorer, internal, batch, opts.progress)
    scored = time.perf_counter()
    result = Result(scorer.store.node_ids[internal], labels, probabilities, service.bundle.class_names,
                    loaded - started, scored - loaded)
    write(opts.out, fmt, result)
    return dataclasses.replace(result, write_s=time.perf_counter() - scored)


def columns(result: Result) -> list[str]:
    """Output column names: node_id, label (class index; class_names[label] names it), prob_<class>."""
    return ["node_id", "label", *(f"prob_{name}" for name in result.class_names)]


def write(out: Path, fmt: str, result: Result) -> None:
    """Write `result` to `out` in `fmt`, through a temporary sibling renamed into place: a failed or
    interrupted write leaves no half file under the name a reader would trust."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        {"npy": _write_npy, "csv": _write_csv, "parquet": _write_parquet}[fmt](tmp, result)
        os.replace(tmp, out)
    except OSError as exc:
        raise ScoreError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _write_npy(path: Path, result: Result) -> None:
    """A structured array [n] with the columns' fields (np.load reads it with allow_pickle=False)."""
    names = columns(result)
    dtype = np.dtype([(names[0], result.node_ids.dtype), (names[1], np.int64), *((n, np.float32) for n in names[2:])])
    table = np.empty(len(result.labels), dtype=dtype)
    table[names[0]], table[names[1]] = result.node_ids, result.labels
    for c, name in enumerate(names[2:]):
        table[name] = result.probabilities[:, c]
    with path.open("wb") as fh:
        np.save(fh, table, allow_pickle=False)


def _write_csv(path: Path, result: Result) -> None:
    """Header, then one row per node; probabilities as %.9g, which round-trips float32 exactly. String
    ids go through csv quoting (one may hold a comma or a quote); integers need none."""
    probs = result.probabilities
    quoted = result.node_ids.dtype.kind == "U"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns(result))  # quotes a class name holding a comma
        for part in chunks(len(result.labels), 65536):
            ids, labels = result.node_ids[part].tolist(), result.labels[part].tolist()
            cells = np.char.mod("%.9g", probs[part]).tolist()
            if quoted:
                writer.writerows([i, y, *row] for i, y, row in zip(ids, labels, cells, strict=True))
            else:
                fh.writelines(f"{i},{y},{','.join(row)}\n" for i, y, row in zip(ids, labels, cells, strict=True))


def _write_parquet(path: Path, result: Result) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = columns(result)
    arrays = [pa.array(result.node_ids), pa.array(result.labels),
              *(pa.array(result.probabilities[:, c]) for c in range(len(names) - 2))]
    pq.write_table(pa.table(arrays, names=names), path)
