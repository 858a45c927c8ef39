"""One entry point from a dataset spec to a PyG `Data` with masks and a record of its origin.

Specs: `synthetic[:key=value,...]`, `planetoid:PATH` (folder holding `raw/ind.<name>.*`),
`npz:PATH` (the heterophilous-graphs layout), `mat:PATH` (the graph-anomaly-detection MATLAB layout:
`Network`, `Attributes`, `Label`, e.g. Amazon review fraud; no fixed split, so `--split K` seeds a
stratified 40 / 20 / 40 % train / validation / test split), `acm:PATH` (heterogeneous ACM in HeCo's
layout, served through its paper-author-paper meta-path graph; `--split 0 | 1 | 2` = 20 / 40 / 60
labels per class; distill/hetero.py), `synthetic-hetero[:key=value,...]` (the built-in heterogeneous
fraud graph of users, transactions and devices, fraud on transactions, served through its
transaction-user-transaction and transaction-device-transaction meta-path graph;
distill/hetero_synthetic.py). Source files are only read, never written.

An `npz:` file may also hold `node_ids` [N] (strings or integers, unique; bundle.ids): the graph's
own external ids, written into the bundle and served. Without it, and for the other kinds, node i is
id i (`synthetic:ids=str` names them `acct-000017` instead).

`planetoid:` and `npz:` also take a name (`planetoid:Cora`, `npz:tolokers`): an existing path wins,
else distill/sources.py finds the named graph in the cache or downloads it there first.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Data, HeteroData
from torch_geometric.utils import coalesce

from bundle import ids
from distill import graph_checks as checks
from distill import hetero, hetero_synthetic, sources, synthetic
from distill.errors import DatasetError
from distill.safe_pickle import RestrictedPickle

KINDS = ("synthetic", "synthetic-hetero", "planetoid", "npz", "mat", "acm")
MAT_KEYS = ("Network", "Attributes", "Label")
SPLIT_SHARES = (0.4, 0.2)  # train, validation; the rest is test (as PC-GNN and others split these graphs)
NPZ_KEYS = ("node_features", "node_labels", "edges", "train_masks", "val_masks", "test_masks")
NPZ_IDS = "node_ids"  # optional: the graph's own external ids
PLANETOID_PARTS = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")


@dataclass(frozen=True)
class Dataset:
    """A loaded graph. `data` has x [N, F], y [N], edge_index [2, E], train/val/test_mask [N];
    `node_ids` [N] the external id of each node (int64 or <U{w} strings, bundle.ids), None = 0..N-1."""

    data: Data
    name: str
    class_names: tuple[str, ...]
    source: dict[str, Any]
    hetero: HeteroData | None = None  # the typed graph `data` was projected from (acm:), for type-aware models
    node_ids: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def external_ids(self) -> np.ndarray:
        """The external id of each node [N]: `node_ids`, or 0..N-1 (int64)."""
        return np.arange(self.data.num_nodes, dtype=np.int64) if self.node_ids is None else self.node_ids


def load_dataset(spec: str, split: int = 0) -> Dataset:
    """Load `spec`; `split` picks one of an npz file's fixed splits. Raises DatasetError."""
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        return _synthetic(spec, arg)
    if kind == "synthetic-hetero":
        return _synthetic_hetero(spec, arg)
    if kind not in KINDS or not arg:
        raise DatasetError(
            f"dataset spec {spec!r}: expected one of 'synthetic[:key=value,...]', 'synthetic-hetero[:key=value,...]', "
            "'planetoid:PATH|NAME', 'npz:PATH|NAME', 'mat:PATH', 'acm:PATH' or (distill run only) 'bitcoin-otc:PATH'"
        )
    path = sources.resolve(kind, arg, spec)
    loader = {"planetoid": _planetoid, "npz": _npz, "mat": _mat, "acm": _acm}[kind]
    ds = loader(spec, path, split)
    if ds.num_classes < 2:
        raise DatasetError(f"dataset spec {spec!r}: labels hold {ds.num_classes} class; a classifier needs at least 2")
    return ds


def _acm(spec: str, path: Path, split: int) -> Dataset:
    """ACM's papers over the paper-author-paper meta-path graph, the typed graph kept beside them."""
    graph = hetero.load_acm(spec, path, split)
    paper = graph["paper"]
    masks = {name: paper[f"{name}_mask"].numpy() for name in ("train", "val", "test")}
    data = _to_data(spec, paper.x.numpy(), paper.y.numpy(), hetero.metapath_edges(graph).numpy(), masks)
    classes = tuple(f"class_{i}" for i in range(int(data.y.max()) + 1))
    source = {"kind": "acm", "spec": spec, "split": split, "labels_per_class": hetero.ACM_LABELS[split],
              "view": "paper-author-paper", "files": _hashes(hetero.acm_files(spec, path, split))}
    return Dataset(data, "acm", classes, source, graph)


def _synthetic(spec: str, arg: str) -> Dataset:
    cfg = synthetic.SyntheticConfig.parse(arg)
    arrays = synthetic.generate(cfg)
    data = _to_data(spec, arrays["x"], arrays["y"], arrays["edge_index"], arrays)
    source = {"kind": "synthetic", "spec": spec, "config": cfg.record()}
    return Dataset(data, "synthetic", synthetic.CLASS_NAMES, source, node_ids=synthetic.node_ids(cfg))


def _synthetic_hetero(spec: str, arg: str) -> Dataset:
    """Transactions over the transaction-user-transaction and transaction-device-transaction meta-paths."""
    cfg = hetero_synthetic.HeteroSyntheticConfig.parse(arg)
    graph = hetero_synthetic.generate(cfg)
    tx = graph[hetero_synthetic.TARGET]
    edges = torch.cat([hetero.metapath_edges(graph, via, hetero_synthetic.TARGET) for via in ("user", "device")], 1)
    masks = {name: tx[f"{name}_mask"].numpy() for name in ("train", "val", "test")}
    data = _to_data(spec, tx.x.numpy(), tx.y.numpy(), edges.numpy(), masks)
    source = {"kind": "synthetic-hetero", "spec": spec, "config": cfg.record(),
              "view": "transaction-user-transaction + transaction-device-transaction"}
    return Dataset(data, "synthetic-hetero", hetero_synthetic.CLASS_NAMES, source, graph)


def _planetoid(spec: str, path: Path, split: int) -> Dataset:
    from torch_geometric.io import read_planetoid_data

    raw = path / "raw" if (path / "raw").is_dir() else path
    names = sorted(p.name[4:-2] for p in raw.glob("ind.*.x"))
    if len(names) != 1:
        raise DatasetError(
            f"dataset spec {spec!r}: expected exactly one raw/ind.<name>.x file in {path}, found {len(names)}"
        )
    name = names[0]
    files = [raw / f"ind.{name}.{part}" for part in PLANETOID_PARTS]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DatasetError(f"dataset spec {spec!r}: missing Planetoid files {missing} in {raw}")
    if split != 0:
        raise DatasetError(f"dataset spec {spec!r}: Planetoid has only the public split; got --split {split}")
    try:
        with _pickles_restricted():
            data = read_planetoid_data(str(raw), name)
    except (pickle.UnpicklingError, EOFError, ValueError, IndexError, KeyError, TypeError, RuntimeError) as exc:
        raise DatasetError(
            f"dataset spec {spec!r}: malformed Planetoid files in {raw} ({type(exc).__name__}: {exc}); "
            "expected the raw ind.<name>.* pickles of kimiyoung/planetoid"
        ) from None
    masks = {m: data[f"{m}_mask"].numpy() for m in checks.SPLITS}
    # PyG already removed duplicate edges; its order (by target) is kept, so numbers match earlier runs.
    data = _to_data(spec, data.x.numpy(), data.y.numpy(), data.edge_index.numpy(), masks, keep_edge_order=True)
    classes = tuple(f"class_{i}" for i in range(int(data.y.max()) + 1))
    source = {"kind": "planetoid", "spec": spec, "name": name, "files": _hashes(files)}
    return Dataset(data, name, classes, source)


@contextmanager
def _pickles_restricted() -> Iterator[None]:
    """PyG's read_planetoid_data with distill.safe_pickle's unpickler: the raw files are pickles,
    and a dataset path is user input (a bundle once named one)."""
    from torch_geometric.io import planetoid

    original = planetoid.pickle
    planetoid.pickle = RestrictedPickle  # type: ignore[assignment]
    try:
        yield
    finally:
        planetoid.pickle = original


def _npz(spec: str, path: Path, split: int) -> Dataset:
    try:
        loaded = np.load(path)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DatasetError(f"dataset spec {spec!r}: {path} holds one array, not an npz archive of "
                               f"{list(NPZ_KEYS)} (numpy.savez writes one)")
        with loaded as z:
            missing = [k for k in NPZ_KEYS if k not in z.files]
            if missing:
                raise DatasetError(f"dataset spec {spec!r}: npz lacks keys {missing}; expected {list(NPZ_KEYS)}")
            arrays = {k: z[k] for k in (*NPZ_KEYS, NPZ_IDS) if k in z.files}
    except DatasetError:
        raise
    except Exception as exc:  # zipfile/pickle/OS errors all mean "not a readable npz"
        raise DatasetError(
            f"dataset spec {spec!r}: cannot read {path} as npz ({type(exc).__name__}: {exc})"
        ) from None
    x, y, edges = arrays["node_features"], arrays["node_labels"], arrays["edges"]
    n = len(x)
    if edges.ndim == 2 and edges.shape[0] == 2 and edges.shape[1] != 2:
        edges = edges.T  # PyG's edge_index layout [2, E]
    if x.ndim != 2 or y.shape != (n,) or edges.ndim != 2 or edges.shape[1] != 2:
        raise DatasetError(
            f"dataset spec {spec!r}: expected node_features [N, F], node_labels [N], edges [E, 2] or [2, E]; "
            f"got {x.shape}, {y.shape}, {edges.shape}"
        )
    masks = checks.split_masks(spec, arrays, split, n)
    both = np.concatenate([edges.T, edges.T[::-1]], axis=1)
    # _to_data checks the edges and coalesces: duplicates from listing both directions go.
    data = _to_data(spec, x, y, both, masks)
    num_classes = int(data.y.max()) + 1
    classes = ("not_banned", "banned") if path.stem == "tolokers" else tuple(f"class_{i}" for i in range(num_classes))
    source = {"kind": "npz", "spec": spec, "split": split, "files": _hashes([path])}
    node_ids = _npz_ids(spec, arrays[NPZ_IDS], n) if NPZ_IDS in arrays else None
    return Dataset(data, path.stem, classes, source, node_ids=node_ids)


def _npz_ids(spec: str, raw: np.ndarray, n: int) -> np.ndarray:
    """An npz file's `node_ids` [N] -> int64 or <U{w} (bundle.ids), checked; DatasetError otherwise."""
    if raw.ndim != 1 or len(raw) != n:
        raise DatasetError(f"dataset spec {spec!r}: node_ids must be [N] = [{n}], got {list(raw.shape)}")
    if raw.dtype.kind not in "iuUS":
        raise DatasetError(f"dataset spec {spec!r}: node_ids must hold integers or strings, not {raw.dtype}")
    if raw.dtype.kind == "u" and len(raw) and int(raw.max()) > np.iinfo(np.int64).max:
        raise DatasetError(f"dataset spec {spec!r}: node_ids hold {int(raw.max())}, beyond the int64 ids a bundle "
                           "stores; store such ids as strings")
    converted = raw.astype(np.int64) if raw.dtype.kind in "iu" else _text_ids(spec, raw)
    try:
        ids.check(converted)
    except ids.IdError as exc:
        raise DatasetError(f"dataset spec {spec!r}: node_ids: {exc}") from None
    return converted


def _text_ids(spec: str, raw: np.ndarray) -> np.ndarray:
    """Unicode or bytes (taken as UTF-8) ids -> <U{w}, the narrowest little-endian width: what the bundle stores."""
    try:
        text = np.char.decode(raw, "utf-8") if raw.dtype.kind == "S" else raw
    except UnicodeDecodeError as exc:
        raise DatasetError(f"dataset spec {spec!r}: node_ids are bytes that are not UTF-8 ({exc})") from None
    width = int(np.char.str_len(text).max(initial=1))
    if width > ids.MAX_CHARS:
        raise DatasetError(f"dataset spec {spec!r}: node_ids: an id has {width} characters; at most "
                           f"{ids.MAX_CHARS} are allowed")
    return text.astype(f"<U{width}")


def _mat(spec: str, path: Path, split: int) -> Dataset:
    import scipy.io
    import scipy.sparse as sp

    try:
        raw = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises several types for a file that is not MATLAB v5
        raise DatasetError(f"dataset spec {spec!r}: cannot read {path} as a MATLAB file ({exc})") from None
    missing = [k for k in MAT_KEYS if k not in raw]
    if missing:
        raise DatasetError(f"dataset spec {spec!r}: the file lacks keys {missing}; expected {list(MAT_KEYS)}")
    y = np.asarray(raw["Label"]).reshape(-1)
    x = raw["Attributes"].toarray() if sp.issparse(raw["Attributes"]) else np.asarray(raw["Attributes"])
    adj = sp.coo_matrix(raw["Network"])
    adj.eliminate_zeros()  # a stored 0 is not an edge
    n = len(y)
    if x.ndim != 2 or x.shape[0] != n or adj.shape != (n, n):
        raise DatasetError(f"dataset spec {spec!r}: expected Attributes [N, F], Network [N, N] and Label [N]; "
                           f"got {x.shape}, {adj.shape}, {y.shape}")
    if y.dtype.kind not in "biuf" or not (np.isfinite(y.astype(np.float64)).all() and (y == np.round(y)).all()):
        raise DatasetError(f"dataset spec {spec!r}: Label must hold integer class indices; got {y.dtype} "
                           "values that are not")
    edges = np.stack([adj.row, adj.col]).astype(np.int64)
    both = np.concatenate([edges, edges[::-1]], axis=1)  # symmetric by format; listed both ways to be sure
    data = _to_data(spec, x, y, both, stratified_split(y.astype(np.int64), split))
    top = int(data.y.max())
    names = ("normal", "anomaly") if top == 1 else tuple(f"class_{i}" for i in range(top + 1))
    source = {"kind": "mat", "spec": spec, "split_seed": split, "split_shares": list(SPLIT_SHARES),
              "files": _hashes([path])}
    return Dataset(data, path.stem.lower(), names, source)


def stratified_split(y: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Seeded split of every class into SPLIT_SHARES train / validation and the rest test -> bool masks [N]."""
    if seed < 0:
        raise DatasetError(f"--split {seed} must be >= 0 (it seeds the stratified split)")
    rng = np.random.default_rng(seed)
    masks = {m: np.zeros(len(y), dtype=bool) for m in ("train", "val", "test")}
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        a = int(round(SPLIT_SHARES[0] * len(idx)))
        b = a + int(round(SPLIT_SHARES[1] * len(idx)))
        masks["train"][idx[:a]], masks["val"][idx[a:b]], masks["test"][idx[b:]] = True, True, True
    return masks


def _to_data(spec: str, x: np.ndarray, y: np.ndarray, edge_index: np.ndarray, masks: dict[str, np.ndarray],
             keep_edge_order: bool = False) -> Data:
    """The checked graph (distill.graph_checks): features float32 [N, F], labels int64 [N], masks bool [N],
    edge_index int64 [2, E] coalesced unless `keep_edge_order` (a reader that already dropped duplicates)."""
    x = checks.features(spec, np.asarray(x))
    masks = {m: np.asarray(masks[m], dtype=bool) for m in checks.SPLITS}
    y = checks.labels(spec, np.asarray(y), masks)
    checks.splits(spec, y, masks)
    edge_index_t = torch.from_numpy(checks.edges(spec, np.asarray(edge_index), len(y)))
    return Data(
        x=torch.from_numpy(x),
        y=torch.from_numpy(y),
        # Coalesced (sorted, no duplicate edges): the bundle's CSR of P then has one entry per edge.
        edge_index=edge_index_t if keep_edge_order else coalesce(edge_index_t, num_nodes=len(y)),
        train_mask=torch.as_tensor(masks["train"]),
        val_mask=torch.as_tensor(masks["val"]),
        test_mask=torch.as_tensor(masks["test"]),
    )


def _hashes(files: list[Path]) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def bag_of_words(x: torch.Tensor) -> bool:
    """Non-negative and mostly zeros (Planetoid, ACM): standardising such columns with statistics of
    a few labelled rows divides rare words by a near-zero std (ACM at 20 labels per class: 60 rows
    for 1,902 words), so these are row-normalised instead."""
    return bool((x >= 0).all()) and float((x == 0).float().mean()) > 0.5
