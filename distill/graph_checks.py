"""What every loaded graph must satisfy before anything trains on it.

A file from an unseen source fails here, at load, with a message that names the dataset, the bad
value and the fix, instead of minutes later as a traceback or, worse, as a bundle trained on
nonsense (integer masks read as index arrays, a phantom class, a validation split on which AUROC is
undefined so early stopping never moves). Each function takes the arrays as a loader read them and
returns them in the one form the rest of the job assumes.
"""

from __future__ import annotations

import numpy as np

from distill.errors import DatasetError

SPLITS = ("train", "val", "test")


def features(spec: str, x: np.ndarray) -> np.ndarray:
    """Node features [N, F] (any real or boolean dtype) -> float32 [N, F], C order, all finite.
    C order because the bundle stores and the service maps the array as written (a MATLAB file
    loads column-major)."""
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise DatasetError(f"dataset spec {spec!r}: node features must be [N, F] with N, F >= 1; got {list(x.shape)}")
    if x.dtype.kind not in "biuf":
        raise DatasetError(f"dataset spec {spec!r}: node features must be numbers, not {x.dtype}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf, reported just below
        out = np.ascontiguousarray(x, dtype=np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise DatasetError(
            f"dataset spec {spec!r}: node features hold {int(bad.sum())} NaN or infinite values as float32 "
            f"(first: node {row}, column {col}, {float(x[row, col])!r}); fill or drop them, or rescale values "
            f"beyond ±3.4e38")
    return out


def edges(spec: str, e: np.ndarray, n: int) -> np.ndarray:
    """Edge endpoints (any shape; integer dtype, or floats holding integers) -> int64, each in 0..n-1."""
    if e.dtype.kind not in "iuf":
        raise DatasetError(f"dataset spec {spec!r}: edges must hold integer node indices, not {e.dtype}")
    if e.dtype.kind == "f" and not (np.isfinite(e).all() and (e == np.round(e)).all()):
        raise DatasetError(f"dataset spec {spec!r}: edges hold non-integer node indices; they must be 0..{n - 1}")
    if e.size and (e.min() < 0 or e.max() >= n):
        raise DatasetError(f"dataset spec {spec!r}: edges reference nodes outside 0..{n - 1}")
    return e.astype(np.int64)


def split_masks(spec: str, arrays: dict[str, np.ndarray], split: int, n: int) -> dict[str, np.ndarray]:
    """The `split`-th of an npz file's `train_masks`, `val_masks`, `test_masks`, each [K, N] (the
    heterophilous-graphs layout), [N, K] (PyG's) or [N] (one split, used with every split of the
    others), bool or 0/1 -> bool masks [N]."""
    stacked = {m: _splits(spec, f"{m}_masks", arrays[f"{m}_masks"], n) for m in SPLITS}
    # One fixed mask beside K-split ones (WikiCS: 20 train/val splits, one test set) serves every split.
    most = max(len(v) for v in stacked.values())
    stacked = {m: np.repeat(v, most, axis=0) if len(v) == 1 else v for m, v in stacked.items()}
    counts = {len(v) for v in stacked.values()}
    if len(counts) != 1:
        raise DatasetError(f"dataset spec {spec!r}: train/val/test masks hold different numbers of splits "
                           f"({', '.join(f'{m} {len(v)}' for m, v in stacked.items())}); give each the same K")
    num_splits = counts.pop()
    if not 0 <= split < num_splits:
        raise DatasetError(f"dataset spec {spec!r}: --split {split} out of range; the file has {num_splits} splits")
    return {m: v[split] for m, v in stacked.items()}


def _splits(spec: str, key: str, raw: np.ndarray, n: int) -> np.ndarray:
    """One mask array -> bool [K, N]."""
    if raw.ndim == 1 and len(raw) == n:
        raw = raw[None, :]
    elif raw.ndim == 2 and raw.shape[1] != n and raw.shape[0] == n:
        raw = raw.T
    if raw.ndim != 2 or raw.shape[1] != n:
        raise DatasetError(f"dataset spec {spec!r}: {key} must be [K, N], [N, K] or [N] with N = {n}; "
                           f"got {list(raw.shape)}")
    if raw.dtype != np.bool_ and (raw.dtype.kind not in "iuf" or not np.isin(raw, (0, 1)).all()):
        raise DatasetError(f"dataset spec {spec!r}: {key} must be boolean (or 0/1) masks over the nodes; "
                           f"got {raw.dtype} values beyond 0/1 (node index lists must be turned into masks)")
    return raw.astype(bool)


def labels(spec: str, y: np.ndarray, masks: dict[str, np.ndarray]) -> np.ndarray:
    """Node labels [N] -> int64 [N] in 0..C-1 on every node of the split, and -1 on nodes outside it
    whose label is missing or out of range (they are never read). Classes must be 0..C-1 and each
    must occur in the split: a class no node carries would be a phantom output."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DatasetError(f"dataset spec {spec!r}: labels must be one class index per node [N]; got "
                           f"{list(y.shape)} (one-hot labels: take their argmax)")
    if y.dtype.kind not in "biuf":
        raise DatasetError(f"dataset spec {spec!r}: labels must be integer class indices, not {y.dtype}")
    as_float = y.astype(np.float64)
    whole = np.isfinite(as_float) & (as_float == np.round(as_float)) & (as_float >= 0)
    labelled = masks["train"] | masks["val"] | masks["test"]
    values = as_float[labelled]
    if not whole[labelled].all():
        raise DatasetError(f"dataset spec {spec!r}: labels of the split's nodes must be integers >= 0 "
                           "(class indices 0..C-1); found negative, fractional or missing ones")
    num_classes = int(values.max()) + 1 if len(values) else 0
    unused = sorted(set(range(num_classes)) - set(values.astype(np.int64).tolist()))
    if unused:
        shown = unused[:10] + (["..."] if len(unused) > 10 else [])
        raise DatasetError(f"dataset spec {spec!r}: labels run to class {num_classes - 1} but no node of the split "
                           f"has class {shown}; renumber the classes as 0..K-1")
    out = np.full(len(y), -1, dtype=np.int64)
    known = whole & (as_float < num_classes)
    out[known] = as_float[known]
    return out


def splits(spec: str, y: np.ndarray, masks: dict[str, np.ndarray]) -> None:
    """The split can train, select and report: train, validation and test each non-empty and
    disjoint; training labels of at least two classes; with two classes, both in validation too
    (AUROC, the selection metric there, is undefined otherwise)."""
    for m in SPLITS:
        if not masks[m].any():
            raise DatasetError(f"dataset spec {spec!r}: the {m} split is empty; every split needs nodes")
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = int((masks[a] & masks[b]).sum())
        if both:
            raise DatasetError(f"dataset spec {spec!r}: {both} nodes are in both the {a} and the {b} split; "
                               "the splits must be disjoint")
    if len(np.unique(y[masks["train"]])) < 2:
        raise DatasetError(f"dataset spec {spec!r}: the training split holds labels of one class only; "
                           "label nodes of at least two classes")
    if int(y.max()) + 1 == 2 and len(np.unique(y[masks["val"]])) < 2:
        raise DatasetError(f"dataset spec {spec!r}: the validation split holds one class only; a binary task "
                           "is selected on validation AUROC, which needs nodes of both classes")
