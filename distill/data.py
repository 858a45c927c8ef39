"""One entry point from a dataset spec to a PyG `Data` with masks and a record of its origin.

Specs: `synthetic[:key=value,...]`, `planetoid:PATH` (folder holding `raw/ind.<name>.*`),
`npz:PATH` (the heterophilous-graphs layout). Source folders are only read, never written.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Data
from torch_geometric.utils import coalesce

from distill import synthetic
from distill.errors import DatasetError

KINDS = ("synthetic", "planetoid", "npz")
NPZ_KEYS = ("node_features", "node_labels", "edges", "train_masks", "val_masks", "test_masks")
PLANETOID_PARTS = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")


@dataclass(frozen=True)
class Dataset:
    """A loaded graph. `data` has x [N, F], y [N], edge_index [2, E], train/val/test_mask [N]."""

    data: Data
    name: str
    class_names: tuple[str, ...]
    source: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_dataset(spec: str, split: int = 0) -> Dataset:
    """Load `spec`; `split` picks one of an npz file's fixed splits. Raises DatasetError."""
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        return _synthetic(spec, arg)
    if kind not in KINDS or not arg:
        raise DatasetError(
            f"dataset spec {spec!r}: expected one of 'synthetic[:key=value,...]', "
            "'planetoid:PATH' or 'npz:PATH'"
        )
    path = Path(arg)
    if not path.exists():
        raise DatasetError(f"dataset spec {spec!r}: {path} does not exist")
    loader = _planetoid if kind == "planetoid" else _npz
    ds = loader(spec, path, split)
    if ds.num_classes < 2:
        raise DatasetError(f"dataset spec {spec!r}: labels hold {ds.num_classes} class; a classifier needs at least 2")
    return ds


def _synthetic(spec: str, arg: str) -> Dataset:
    cfg = synthetic.SyntheticConfig.parse(arg)
    arrays = synthetic.generate(cfg)
    data = _to_data(arrays["x"], arrays["y"], arrays["edge_index"], arrays)
    source = {"kind": "synthetic", "spec": spec, "config": cfg.__dict__}
    return Dataset(data, "synthetic", synthetic.CLASS_NAMES, source)


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
        data = read_planetoid_data(str(raw), name)
    except (pickle.UnpicklingError, EOFError, ValueError, IndexError, KeyError, TypeError) as exc:
        raise DatasetError(
            f"dataset spec {spec!r}: malformed Planetoid files in {raw} ({type(exc).__name__}: {exc}); "
            "expected the raw ind.<name>.* pickles of kimiyoung/planetoid"
        ) from None
    data = Data(
        x=data.x, y=data.y, edge_index=data.edge_index,
        train_mask=data.train_mask, val_mask=data.val_mask, test_mask=data.test_mask,
    )
    classes = tuple(f"class_{i}" for i in range(int(data.y.max()) + 1))
    source = {"kind": "planetoid", "spec": spec, "name": name, "files": _hashes(files)}
    return Dataset(data, name, classes, source)


def _npz(spec: str, path: Path, split: int) -> Dataset:
    try:
        with np.load(path) as z:
            missing = [k for k in NPZ_KEYS if k not in z.files]
            if missing:
                raise DatasetError(f"dataset spec {spec!r}: npz lacks keys {missing}; expected {list(NPZ_KEYS)}")
            arrays = {k: z[k] for k in NPZ_KEYS}
    except DatasetError:
        raise
    except Exception as exc:  # zipfile/pickle/OS errors all mean "not a readable npz"
        raise DatasetError(
            f"dataset spec {spec!r}: cannot read {path} as npz ({type(exc).__name__}: {exc})"
        ) from None
    x, y, edges = arrays["node_features"], arrays["node_labels"], arrays["edges"]
    n = len(y)
    if x.ndim != 2 or x.shape[0] != n or edges.ndim != 2 or edges.shape[1] != 2:
        raise DatasetError(
            f"dataset spec {spec!r}: expected node_features [N, F], node_labels [N], edges [E, 2]; "
            f"got {x.shape}, {y.shape}, {edges.shape}"
        )
    if edges.size and (edges.min() < 0 or edges.max() >= n):
        raise DatasetError(f"dataset spec {spec!r}: edges reference nodes outside 0..{n - 1}")
    num_splits = arrays["train_masks"].shape[0]
    if not 0 <= split < num_splits:
        raise DatasetError(f"dataset spec {spec!r}: --split {split} out of range; the file has {num_splits} splits")
    both = np.concatenate([edges.T, edges.T[::-1]], axis=1)
    masks = {m: arrays[f"{m}_masks"][split] for m in ("train", "val", "test")}
    data = _to_data(x, y, both, masks)  # _to_data coalesces: duplicates from listing both directions go
    num_classes = int(y.max()) + 1
    classes = ("not_banned", "banned") if path.stem == "tolokers" else tuple(f"class_{i}" for i in range(num_classes))
    source = {"kind": "npz", "spec": spec, "split": split, "files": _hashes([path])}
    return Dataset(data, path.stem, classes, source)


def _to_data(x: np.ndarray, y: np.ndarray, edge_index: np.ndarray, masks: dict[str, np.ndarray]) -> Data:
    return Data(
        x=torch.as_tensor(np.asarray(x, dtype=np.float32)),
        y=torch.as_tensor(np.asarray(y, dtype=np.int64)),
        # Coalesced (sorted, no duplicate edges): the bundle's CSR of P then has one entry per edge.
        edge_index=coalesce(torch.as_tensor(np.asarray(edge_index, dtype=np.int64)), num_nodes=len(y)),
        train_mask=torch.as_tensor(masks["train"]),
        val_mask=torch.as_tensor(masks["val"]),
        test_mask=torch.as_tensor(masks["test"]),
    )


def _hashes(files: list[Path]) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
