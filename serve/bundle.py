"""Reading a bundle (docs/bundle.md): manifest, schema version, sha256 of every file, graph arrays.

Nothing here trusts the directory: every file the service reads must be listed in
`manifest.files` and match its sha256, paths must stay inside the bundle, and the arrays must
have the dtypes and shapes the contract names. Any violation raises BundleError with the reason
(and `detail={"file": relative path}` when one file is to blame).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from serve.errors import BundleError

SCHEMA_VERSIONS = (1,)
GRAPH_ARRAYS = {  # name -> (dtype, ndim)
    "features": (np.float32, 2),
    "node_ids": (np.int64, 1),
    "indptr": (np.int64, 1),
    "indices": (np.int64, 1),
    "weights": (np.float32, 1),
}
PROPAGATIONS = ("gcn", "mean", "attention", "none")


@dataclass(frozen=True)
class Bundle:
    """A verified bundle. Arrays: features float32 [N, F], node_ids int64 [N], indptr int64 [N+1],
    indices int64 [nnz], weights float32 [nnz]."""

    root: Path
    manifest: dict[str, Any]
    arrays: dict[str, npt.NDArray[Any]]

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def model_path(self) -> Path:
        return self.root / str(self.manifest["model"]["file"])

    @property
    def class_names(self) -> list[str]:
        return [str(c) for c in self.manifest["dataset"]["class_names"]]

    @property
    def policy(self) -> dict[str, Any]:
        return dict(self.manifest["policy"])

    @property
    def inputs(self) -> list[str]:
        return [str(i) for i in self.manifest["model"]["inputs"]]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(root: Path) -> dict[str, Any]:
    """Parse manifest.json and check its schema version and the keys the service needs."""
    path = root / "manifest.json"
    if not path.is_file():
        raise BundleError(f"{root} is not a bundle: {path.name} is missing", {"file": path.name})
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is not readable JSON: {exc}", {"file": path.name}) from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path} must hold a JSON object", {"file": path.name})
    version = manifest.get("schema_version")
    if version not in SCHEMA_VERSIONS:
        raise BundleError(f"unknown bundle schema_version {version!r}; this service reads {list(SCHEMA_VERSIONS)}",
                          {"file": path.name})
    missing = [k for k in ("version", "dataset", "model", "policy", "graph", "files") if k not in manifest]
    if missing:
        raise BundleError(f"{path} lacks keys {missing}", {"file": path.name})
    return manifest


def _inside(root: Path, rel: str) -> Path:
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise BundleError(f"manifest path {rel!r} points outside the bundle")
    return path


def verify_files(root: Path, manifest: dict[str, Any]) -> None:
    """Every listed file must exist and match its sha256; every file the service reads must be listed."""
    files = manifest["files"]
    if not isinstance(files, dict):
        raise BundleError("manifest.files must map relative paths to sha256 hex digests")
    needed = [manifest["model"].get("file", ""), *(manifest["graph"].get(n, "") for n in GRAPH_ARRAYS)]
    unlisted = [rel for rel in needed if rel not in files]
    if unlisted:
        raise BundleError(f"files {unlisted} are read by the service but not listed in manifest.files")
    for rel, expected in sorted(files.items()):
        path = _inside(root, rel)
        if not path.is_file():
            raise BundleError(f"{rel} is listed in manifest.files but missing", {"file": rel})
        actual = sha256(path)
        if actual != expected:
            raise BundleError(f"{rel}: sha256 {actual[:12]}... does not match the manifest's {str(expected)[:12]}...",
                              {"file": rel})


def _load_array(root: Path, name: str, rel: str) -> npt.NDArray[Any]:
    dtype, ndim = GRAPH_ARRAYS[name]
    try:
        # mmap: the OS pages arrays in on demand and shares them between processes.
        array: npt.NDArray[Any] = np.load(_inside(root, rel), allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise BundleError(f"{rel} is not a plain .npy array: {exc}", {"file": rel}) from None
    if array.dtype != dtype or array.ndim != ndim:
        raise BundleError(f"{rel}: expected {np.dtype(dtype).name} with {ndim} dims, got {array.dtype} {array.shape}",
                          {"file": rel})
    return array


def _check_graph(manifest: dict[str, Any], a: dict[str, npt.NDArray[Any]]) -> None:
    n, f = a["features"].shape
    if n < 1 or f < 1:
        raise BundleError(f"features are [{n}, {f}]: a bundle needs at least one node and one feature")
    ds = manifest["dataset"]
    if (n, f) != (ds.get("num_nodes"), ds.get("num_features")):
        raise BundleError(f"features are [{n}, {f}] but the manifest says [{ds.get('num_nodes')}, "
                          f"{ds.get('num_features')}]")
    if len(ds.get("class_names", [])) != ds.get("num_classes"):
        raise BundleError("dataset.class_names does not have num_classes entries")
    indptr = a["indptr"]
    if a["node_ids"].shape != (n,) or indptr.shape != (n + 1,):
        raise BundleError(f"node_ids {a['node_ids'].shape} / indptr {indptr.shape} do not fit {n} nodes")
    if len(np.unique(a["node_ids"])) != n:
        raise BundleError("graph/node_ids are not unique")
    nnz = len(a["indices"])
    if indptr[0] != 0 or indptr[-1] != nnz or np.any(np.diff(indptr) < 0) or len(a["weights"]) != nnz:
        raise BundleError("graph CSR is inconsistent (indptr / indices / weights)")
    if nnz and (a["indices"].min() < 0 or a["indices"].max() >= n):
        raise BundleError("graph/indices reference nodes outside 0..N-1")


def _check_policy(manifest: dict[str, Any]) -> None:
    p = manifest["policy"]
    try:
        fanout, k_hops, seed, prop = int(p["fanout"]), int(p["k_hops"]), int(p["seed"]), p["propagation"]
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"manifest.policy is incomplete: {exc!r}") from None
    if prop not in PROPAGATIONS or fanout < 1 or k_hops < 0 or not 0 <= seed < 1 << 64:
        raise BundleError(f"manifest.policy is not understood: {p}")
    graph_free = prop == "none"
    if graph_free != (manifest["model"].get("inputs") == ["x"]) or graph_free != (k_hops == 0):
        raise BundleError("manifest.model.inputs, policy.propagation and policy.k_hops disagree")


def load(root: Path) -> Bundle:
    """Read, verify and check the bundle at `root`; raises BundleError on any mismatch."""
    if not root.is_dir():
        raise BundleError(f"bundle directory {root} does not exist")
    manifest = read_manifest(root)
    verify_files(root, manifest)
    _check_policy(manifest)
    arrays = {name: _load_array(root, name, str(manifest["graph"][name])) for name in GRAPH_ARRAYS}
    _check_graph(manifest, arrays)
    return Bundle(root, manifest, arrays)
