"""The bundle on disk: array specs, sha256 of every file, the version digest, atomic staging, and
reading with verification. Nothing read here is trusted: every file used must be listed in the
manifest with a matching sha256, paths must stay inside the bundle, arrays must be plain .npy
(no pickles) with the dtypes and shapes of the contract, and the version must match its digest."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bundle.errors import BundleInvalid
from bundle.manifest import GRAPH_FILES, OPTIONAL_GRAPH_FILES, SCHEMA_VERSION, Manifest
from bundle.policy import CSR

ARRAYS: dict[str, tuple[type[np.generic], int]] = {  # name -> (dtype, ndim)
    "features": (np.float32, 2),
    "node_ids": (np.int64, 1),
    "indptr": (np.int64, 1),
    "indices": (np.int64, 1),
    "weights": (np.float32, 1),
    "in_degree": (np.int64, 1),
}
assert tuple(ARRAYS) == GRAPH_FILES + OPTIONAL_GRAPH_FILES


@dataclass(frozen=True)
class GraphArrays:
    """The graph store: features float32 [N, F], node_ids int64 [N] (external id of internal node i),
    P as CSR, and for students with degree input in_degree int64 [N] (of the raw graph, before
    pruning; bundle.policy.in_degree). Loaded arrays are memory-mapped read-only."""

    features: npt.NDArray[np.float32]
    node_ids: npt.NDArray[np.int64]
    csr: CSR
    in_degree: npt.NDArray[np.int64] | None = None

    def as_dict(self) -> dict[str, npt.NDArray[Any]]:
        arrays: dict[str, npt.NDArray[Any]] = {"features": self.features, "node_ids": self.node_ids,
                                               "indptr": self.csr.indptr, "indices": self.csr.indices,
                                               "weights": self.csr.weights}
        return arrays if self.in_degree is None else {**arrays, "in_degree": self.in_degree}

    def check(self) -> None:
        n, f = self.features.shape
        if n < 1 or f < 1:
            raise BundleInvalid(f"features are [{n}, {f}]: a bundle needs at least one node and one feature")
        if self.node_ids.shape != (n,) or self.csr.indptr.shape != (n + 1,):
            raise BundleInvalid(f"node_ids {self.node_ids.shape} / indptr {self.csr.indptr.shape} do not fit {n} nodes")
        if len(np.unique(self.node_ids)) != n:
            raise BundleInvalid("graph/node_ids are not unique")
        if self.in_degree is not None and (self.in_degree.shape != (n,) or (self.in_degree < 0).any()):
            raise BundleInvalid(f"in_degree {self.in_degree.shape} must hold a count >= 0 for each of {n} nodes")
        self.csr.check()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` except the manifest, keyed by relative POSIX path."""
    return {p.relative_to(root).as_posix(): sha256(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).as_posix() != "manifest.json"}


def served_digest(files: dict[str, str], served: list[str]) -> str:
    """sha256 over the sorted [path, sha256] pairs of what the service computes with: a new model
    or a new graph store (new nodes, new edges) is a new version; a new report is not."""
    pairs = sorted([rel, files[rel]] for rel in served)
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()


def version_string(dataset: str, student: str, digest: str) -> str:
    return f"{dataset}-{student}-{digest[:12]}"


def save_graph(root: Path, arrays: GraphArrays) -> dict[str, str]:
    """Save the graph store as plain .npy files under root/graph -> {name: relative path}."""
    (root / "graph").mkdir()
    paths = {}
    for name, array in arrays.as_dict().items():
        dtype, ndim = ARRAYS[name]
        if array.dtype != dtype or array.ndim != ndim:
            raise BundleInvalid(f"{name}: the contract wants {np.dtype(dtype).name} with {ndim} dims, "
                                f"got {array.dtype} {array.shape}")
        paths[name] = f"graph/{name}.npy"
        np.save(root / paths[name], array, allow_pickle=False)
    return paths


@contextmanager
def staging(out: Path, force: bool) -> Iterator[Path]:
    """Yield a temp dir next to `out`; on success rename it to `out`, on any error delete it."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the service may run as another user
        if out.exists() and force:
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Strict JSON (NaN is refused: a reader in another language could not parse it)."""
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")


def write_manifest(root: Path, manifest: Manifest) -> None:
    (root / "manifest.json").write_text(manifest.to_json())


def inside(root: Path, rel: str) -> Path:
    try:
        path = (root / rel).resolve()
    except (OSError, ValueError) as exc:  # e.g. a NUL byte, a loop of links
        raise BundleInvalid(f"manifest path {rel!r} is not a usable path: {exc}", {"file": rel}) from None
    if not path.is_relative_to(root.resolve()):
        raise BundleInvalid(f"manifest path {rel!r} points outside the bundle", {"file": rel})
    return path


def read_manifest(root: Path) -> tuple[Manifest, bytes]:
    """Parse root/manifest.json -> (the typed manifest, its raw bytes)."""
    path = root / "manifest.json"
    if not path.is_file():
        raise BundleInvalid(f"{root} is not a bundle: {path.name} is missing", {"file": path.name})
    raw = path.read_bytes()
    try:
        version = json.loads(raw).get("schema_version")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise BundleInvalid(f"{path} is not a JSON object: {exc}", {"file": path.name}) from None
    if type(version) is not int or version != SCHEMA_VERSION:  # 2.0 and true compare equal to an int
        raise BundleInvalid(f"unknown bundle schema_version {version!r}; this reader reads [{SCHEMA_VERSION}]: "
                            "rebuild the bundle with this release's `distill run`", {"file": path.name})
    return Manifest.parse(raw), raw


def verify_files(root: Path, manifest: Manifest) -> None:
    """Every listed file exists and matches its sha256, every served file is listed, and the
    version names the digest of the served files (a swapped model cannot keep an old version)."""
    unlisted = [rel for rel in manifest.served_files if rel not in manifest.files]
    if unlisted:
        raise BundleInvalid(f"files {unlisted} are read by the service but not listed in manifest.files")
    for rel, expected in sorted(manifest.files.items()):
        path = inside(root, rel)
        if not path.is_file():
            raise BundleInvalid(f"{rel} is listed in manifest.files but missing", {"file": rel})
        actual = sha256(path)
        if actual != expected:
            raise BundleInvalid(f"{rel}: sha256 {actual[:12]}... does not match the manifest's {expected[:12]}...",
                                {"file": rel})
    digest = served_digest(manifest.files, manifest.served_files)
    if not manifest.version.endswith("-" + digest[:12]):
        raise BundleInvalid(f"version {manifest.version!r} does not name the served files' digest {digest[:12]}",
                            {"file": "manifest.json"})


def _load_array(root: Path, name: str, rel: str) -> npt.NDArray[Any]:
    dtype, ndim = ARRAYS[name]
    try:
        # mmap: the OS pages arrays in on demand and shares them between processes.
        array: npt.NDArray[Any] = np.load(inside(root, rel), allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise BundleInvalid(f"{rel} is not a plain .npy array: {exc}", {"file": rel}) from None
    if array.dtype != dtype or array.ndim != ndim:
        raise BundleInvalid(f"{rel}: expected {np.dtype(dtype).name} with {ndim} dims, got {array.dtype} "
                            f"{array.shape}", {"file": rel})
    return array


def load_graph(root: Path, manifest: Manifest) -> GraphArrays:
    """The verified graph store of a bundle whose files were verified."""
    a = {name: _load_array(root, name, getattr(manifest.graph, name)) for name in GRAPH_FILES}
    degree = manifest.graph.in_degree
    graph = GraphArrays(a["features"].view(np.ndarray), np.ascontiguousarray(a["node_ids"]),
                        CSR(np.ascontiguousarray(a["indptr"]), np.ascontiguousarray(a["indices"]),
                            np.ascontiguousarray(a["weights"])),
                        None if degree is None else np.ascontiguousarray(_load_array(root, "in_degree", degree)))
    graph.check()
    ds = manifest.dataset
    if graph.features.shape != (ds.num_nodes, ds.num_features):
        raise BundleInvalid(f"features are {list(graph.features.shape)} but the manifest says "
                            f"[{ds.num_nodes}, {ds.num_features}]", {"file": manifest.graph.features})
    return graph


def open_bundle(root: Path) -> tuple[Manifest, GraphArrays]:
    """Read, verify and check the bundle at `root`; raises BundleInvalid on any mismatch."""
    if not root.is_dir():
        raise BundleInvalid(f"bundle directory {root} does not exist")
    manifest, _ = read_manifest(root)
    verify_files(root, manifest)
    return manifest, load_graph(root, manifest)
