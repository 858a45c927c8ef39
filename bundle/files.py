"""The bundle on disk: array specs, sha256 of every file, the version digest, and reading with
verification (publishing atomically is bundle.publish). Nothing read here is trusted: every file
used must be listed in the manifest with a matching sha256, paths must stay inside the bundle,
arrays must be plain .npy (no pickles) with the dtypes and shapes of the contract, and the version
must match its digest.

What the service computes with (the model and the graph arrays) is read into memory once, and the
sha256 is taken of exactly those bytes: an in-place edit of a served bundle after its load cannot
change a prediction (or kill the process with SIGBUS, as a truncated memory-mapped file did).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bundle import ids, signing, typed
from bundle.errors import BundleInvalid
from bundle.manifest import (
    GRAPH_FILES,
    OPTIONAL_GRAPH_FILES,
    SCHEMA_VERSION,
    TEMPORAL_GRAPH_FILES,
    Manifest,
    TemporalGraphFiles,
    TemporalRecent,
)
from bundle.policy import CSR
from bundle.temporal import TemporalStore

ARRAYS: dict[str, tuple[type[np.generic], int]] = {  # name -> (dtype, ndim)
    "features": (np.float32, 2),
    "node_ids": (np.int64, 1),  # or, in a bundle of string ids, <U{w} (bundle.ids)
    "indptr": (np.int64, 1),
    "indices": (np.int64, 1),
    "weights": (np.float32, 1),
    "in_degree": (np.int64, 1),
    "neighbour_mean": (np.float32, 2),
}
assert tuple(ARRAYS) == GRAPH_FILES + OPTIONAL_GRAPH_FILES
TEMPORAL_ARRAYS: dict[str, tuple[type[np.generic], int]] = {
    "node_ids": (np.int64, 1), "src": (np.int64, 1), "dst": (np.int64, 1), "time": (np.float64, 1),
    "rating": (np.float32, 1),
}
assert tuple(TEMPORAL_ARRAYS) == TEMPORAL_GRAPH_FILES


@dataclass(frozen=True)
class GraphArrays:
    """The graph store: features float32 [N, F], node_ids [N] (external id of internal node i: int64,
    or strings as <U{w}, bundle.ids), P as CSR, and for students with degree input in_degree int64 [N]
    (of the raw graph, before pruning; bundle.policy.in_degree), and with mean input neighbour_mean
    float32 [N, F] (bundle.policy.neighbour_mean). Loaded arrays are read-only, in memory."""

    features: npt.NDArray[np.float32]
    node_ids: npt.NDArray[Any]
    csr: CSR
    in_degree: npt.NDArray[np.int64] | None = None
    neighbour_mean: npt.NDArray[np.float32] | None = None

    @property
    def id_type(self) -> ids.IdType:
        """The kind of the node ids (what manifest.graph.id_type must say)."""
        return "string" if self.node_ids.dtype.kind == "U" else "int64"

    def as_dict(self) -> dict[str, npt.NDArray[Any]]:
        arrays: dict[str, npt.NDArray[Any]] = {"features": self.features, "node_ids": self.node_ids,
                                               "indptr": self.csr.indptr, "indices": self.csr.indices,
                                               "weights": self.csr.weights}
        optional = {"in_degree": self.in_degree, "neighbour_mean": self.neighbour_mean}
        return {**arrays, **{name: a for name, a in optional.items() if a is not None}}

    def check(self) -> None:
        n, f = self.features.shape
        if n < 1 or f < 1:
            raise BundleInvalid(f"features are [{n}, {f}]: a bundle needs at least one node and one feature")
        if self.node_ids.shape != (n,) or self.csr.indptr.shape != (n + 1,):
            raise BundleInvalid(f"node_ids {self.node_ids.shape} / indptr {self.csr.indptr.shape} do not fit {n} nodes")
        try:
            ids.check(self.node_ids)
        except ids.IdError as exc:
            raise BundleInvalid(f"graph/node_ids.npy: {exc}", {"file": "graph/node_ids.npy"}) from None
        if self.in_degree is not None and (self.in_degree.shape != (n,) or (self.in_degree < 0).any()):
            raise BundleInvalid(f"in_degree {self.in_degree.shape} must hold a count >= 0 for each of {n} nodes")
        if self.neighbour_mean is not None and self.neighbour_mean.shape != (n, f):
            raise BundleInvalid(f"neighbour_mean {self.neighbour_mean.shape} must be [{n}, {f}] like the features")
        # NaN / Inf would be served as garbage probabilities with a 200: refuse them at load.
        finite = (("features", self.features), ("weights", self.csr.weights), ("neighbour_mean", self.neighbour_mean))
        for name, values in finite:
            if values is not None and not np.isfinite(values).all():
                raise BundleInvalid(f"graph/{name} holds NaN or Inf values", {"file": f"graph/{name}.npy"})
        self.csr.check()


@dataclass(frozen=True)
class TemporalArrays:
    """A temporal bundle's edge store: node_ids [N] (int64 or <U{w}, bundle.ids), edges src -> dst
    int64 [E] (internal indices), time float64 [E] (unix seconds, non-decreasing: the job writes them
    in time order, and the check makes a hand-edited file fail loudly rather than serve), rating
    float32 [E]. Loaded arrays are read-only, in memory."""

    node_ids: npt.NDArray[Any]
    src: npt.NDArray[np.int64]
    dst: npt.NDArray[np.int64]
    time: npt.NDArray[np.float64]
    rating: npt.NDArray[np.float32]

    @property
    def id_type(self) -> ids.IdType:
        return "string" if self.node_ids.dtype.kind == "U" else "int64"

    def as_dict(self) -> dict[str, npt.NDArray[Any]]:
        return {"node_ids": self.node_ids, "src": self.src, "dst": self.dst, "time": self.time, "rating": self.rating}

    def store(self) -> TemporalStore:
        """The kernel's store over these edges (bundle.temporal)."""
        return TemporalStore.from_arrays(self.src, self.dst, self.time, self.rating, len(self.node_ids))

    def check(self, rating_range: tuple[float, float] | None = None) -> None:
        """Lengths, id ranges, finite values, time order and (given) the policy's rating range."""
        n, e = len(self.node_ids), len(self.src)
        if n < 1:
            raise BundleInvalid("graph/node_ids.npy is empty: a bundle needs at least one node")
        try:
            ids.check(self.node_ids)
        except ids.IdError as exc:
            raise BundleInvalid(f"graph/node_ids.npy: {exc}", {"file": "graph/node_ids.npy"}) from None
        if not len(self.dst) == len(self.time) == len(self.rating) == e:
            raise BundleInvalid(f"edge arrays differ in length: src {e}, dst {len(self.dst)}, time {len(self.time)}, "
                                f"rating {len(self.rating)}")
        for name, end in (("src", self.src), ("dst", self.dst)):
            if e and (end.min() < 0 or end.max() >= n):
                raise BundleInvalid(f"graph/{name}.npy holds indices outside 0..{n - 1}", {"file": f"graph/{name}.npy"})
        for name, values in (("time", self.time), ("rating", self.rating)):
            if not np.isfinite(values).all():
                raise BundleInvalid(f"graph/{name} holds NaN or Inf values", {"file": f"graph/{name}.npy"})
        if e and (np.diff(self.time) < 0).any():
            raise BundleInvalid("graph/time.npy is not sorted by time (non-decreasing)", {"file": "graph/time.npy"})
        if rating_range is not None and e:
            lo, hi = rating_range
            if self.rating.min() < lo or self.rating.max() > hi:
                raise BundleInvalid(f"graph/rating.npy holds ratings outside the policy's [{lo}, {hi}]",
                                    {"file": "graph/rating.npy"})


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


# The manifest sections the service reads. `decision` (the default threshold) is optional: it enters
# the digest only when present, so bundles written before it existed keep their versions.
SERVED_SECTIONS = ("dataset", "model", "policy", "graph", "decision")


def served_digest(manifest: Manifest) -> str:
    """sha256 over what the service computes with: the [path, sha256] pairs of the served files and
    the manifest sections it reads (dataset, model, policy, graph, and decision when present). A new
    model, graph store, neighbourhood policy or decision threshold is a new version; a new report, or
    the same model trained again, is not."""
    sections = {name: getattr(manifest, name) for name in SERVED_SECTIONS}
    body = {"files": sorted([rel, manifest.files.get(rel, "")] for rel in manifest.served_files),
            **{name: section.model_dump(mode="json") for name, section in sections.items() if section is not None}}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def version_of(manifest: Manifest) -> str:
    """The version a manifest must carry: `<dataset>-<student>-<first 12 hex of served_digest>`,
    recomputed by every reader, so nothing can be served under another model's version."""
    return f"{manifest.dataset.name}-{manifest.model.student}-{served_digest(manifest)[:12]}"


def with_version(manifest: Manifest) -> Manifest:
    """`manifest` with its version and full digest recomputed (the writer's side of version_of)."""
    return manifest.model_copy(update={"version": version_of(manifest), "digest": served_digest(manifest)})


def save_graph(root: Path, arrays: GraphArrays | TemporalArrays) -> dict[str, str]:
    """Save the graph store as plain .npy files under root/graph -> {name: relative path}."""
    (root / "graph").mkdir()
    paths = {}
    specs = TEMPORAL_ARRAYS if isinstance(arrays, TemporalArrays) else ARRAYS
    for name, array in arrays.as_dict().items():
        dtype, ndim = specs[name]
        if not _fits(name, array.dtype, dtype, arrays.id_type) or array.ndim != ndim:
            want = np.dtype(dtype).name if name != "node_ids" else f"int64 or {ids.expected('string')}"
            raise BundleInvalid(f"{name}: the contract wants {want} with {ndim} dims, "
                                f"got {array.dtype} {array.shape}")
        paths[name] = f"graph/{name}.npy"
        np.save(root / paths[name], array, allow_pickle=False)
    return paths


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
    """Parse root/manifest.json -> (the typed manifest, its raw bytes). The manifest may not be a
    link out of the bundle."""
    path = inside(root, "manifest.json")
    if not path.is_file():
        raise BundleInvalid(f"{root} is not a bundle: manifest.json is missing", {"file": "manifest.json"})
    raw = path.read_bytes()
    try:
        version = json.loads(raw).get("schema_version")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise BundleInvalid(f"{path} is not a JSON object: {exc}", {"file": "manifest.json"}) from None
    if type(version) is not int or version != SCHEMA_VERSION:  # 2.0 and true compare equal to an int
        raise BundleInvalid(f"unknown bundle schema_version {version!r}; this reader reads [{SCHEMA_VERSION}]: "
                            "rebuild the bundle with this release's `distill run`", {"file": "manifest.json"})
    return Manifest.parse(raw), raw


def _listed(root: Path, manifest: Manifest, rel: str) -> Path:
    path = inside(root, rel)
    if not path.is_file():
        raise BundleInvalid(f"{rel} is listed in manifest.files but missing", {"file": rel})
    return path


def _check_hash(rel: str, actual: str, expected: str) -> None:
    if actual != expected:
        raise BundleInvalid(f"{rel}: sha256 {actual[:12]}... does not match the manifest's {expected[:12]}...",
                            {"file": rel})


def read_verified(root: Path, manifest: Manifest) -> dict[str, bytearray]:
    """Check every listed file against its sha256 and the version against its digest -> the bytes
    of the served files, read once: the hash covers exactly the bytes the caller computes with."""
    unlisted = [rel for rel in manifest.served_files if rel not in manifest.files]
    if unlisted:
        raise BundleInvalid(f"files {unlisted} are read by the service but not listed in manifest.files")
    served: dict[str, bytearray] = {}
    for rel, expected in sorted(manifest.files.items()):
        path = _listed(root, manifest, rel)
        if rel in manifest.served_files:
            served[rel] = _read_all(path, rel)
            _check_hash(rel, hashlib.sha256(served[rel]).hexdigest(), expected)
        else:
            _check_hash(rel, sha256(path), expected)
    expected_version = version_of(manifest)
    # All 256 bits, not just the 48 the version string shows: matching 12 hex digits of another
    # bundle's digest is a search of hours on one GPU.
    if manifest.version != expected_version or manifest.digest != served_digest(manifest):
        raise BundleInvalid(f"version {manifest.version!r} is not the digest of what is served "
                            f"({expected_version!r}): the model, graph or policy changed after it was written",
                            {"file": "manifest.json"})
    return served


def _read_all(path: Path, rel: str) -> bytearray:
    with path.open("rb") as fh:
        buf = bytearray(os.fstat(fh.fileno()).st_size)  # one allocation: the array will live in it
        if fh.readinto(buf) != len(buf):
            raise BundleInvalid(f"{rel} changed size while it was read", {"file": rel})
    return buf


def _fits(name: str, found: np.dtype[Any], dtype: type[np.generic], id_type: ids.IdType) -> bool:
    return ids.dtype_fits(found, id_type) if name == "node_ids" else found == dtype


def _array(buf: bytearray, name: str, rel: str, id_type: ids.IdType,
           specs: dict[str, tuple[type[np.generic], int]] = ARRAYS) -> npt.NDArray[Any]:
    """Parse one .npy file held in `buf` without copying it -> a read-only array over `buf`."""
    dtype, ndim = specs[name]
    head = io.BytesIO(bytes(buf[: (1 << 16) + 16]))  # a v1 header is at most 64 KiB
    try:
        major, _ = np.lib.format.read_magic(head)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, found = read_header(head)
    except (ValueError, OSError, TypeError, SyntaxError) as exc:  # the header is a Python literal numpy parses
        raise BundleInvalid(f"{rel} is not a plain .npy array: {exc}", {"file": rel}) from None
    if found.hasobject:
        raise BundleInvalid(f"{rel} is not a plain .npy array: it holds pickled objects", {"file": rel})
    if not _fits(name, found, dtype, id_type) or len(shape) != ndim or fortran or any(d < 0 for d in shape):
        want = ids.expected(id_type) if name == "node_ids" else np.dtype(dtype).name
        raise BundleInvalid(f"{rel}: expected {want} with {ndim} dims (C order), got {found} {shape}", {"file": rel})
    count = int(np.prod(shape))
    if len(buf) != head.tell() + count * found.itemsize:
        raise BundleInvalid(f"{rel}: {len(buf)} bytes do not hold a {shape} {found} array", {"file": rel})
    array = np.frombuffer(buf, dtype=found, count=count, offset=head.tell()).reshape(shape)
    array.flags.writeable = False
    return array


def load_temporal(served: dict[str, bytearray], manifest: Manifest) -> TemporalArrays:
    """A temporal bundle's edge store parsed from the verified bytes of its files (read_verified)."""
    graph, policy = manifest.graph, manifest.policy
    assert isinstance(graph, TemporalGraphFiles) and isinstance(policy, TemporalRecent)  # Manifest checks the pair
    a = {name: _array(served[rel], name, rel, graph.id_type, TEMPORAL_ARRAYS)
         for name, rel in zip(TEMPORAL_GRAPH_FILES, graph.paths(), strict=True)}
    arrays = TemporalArrays(a["node_ids"], a["src"], a["dst"], a["time"], a["rating"])
    arrays.check((policy.rating_min, policy.rating_max))
    if len(arrays.node_ids) != manifest.dataset.num_nodes:
        raise BundleInvalid(f"node_ids holds {len(arrays.node_ids)} nodes but the manifest says "
                            f"{manifest.dataset.num_nodes}", {"file": graph.node_ids})
    return arrays


def load_graph(served: dict[str, bytearray], manifest: Manifest) -> GraphArrays:
    """The graph store parsed from the verified bytes of its files (read_verified)."""
    assert not isinstance(manifest.graph, TemporalGraphFiles)  # load_temporal reads those
    a = {name: _array(served[rel], name, rel, manifest.graph.id_type)
         for name, rel in zip(GRAPH_FILES + OPTIONAL_GRAPH_FILES, _graph_paths(manifest), strict=True) if rel}
    graph = GraphArrays(a["features"], a["node_ids"], CSR(a["indptr"], a["indices"], a["weights"]),
                        a.get("in_degree"), a.get("neighbour_mean"))
    graph.check()
    ds = manifest.dataset
    if graph.features.shape != (ds.num_nodes, ds.num_features):
        raise BundleInvalid(f"features are {list(graph.features.shape)} but the manifest says "
                            f"[{ds.num_nodes}, {ds.num_features}]", {"file": manifest.graph.features})
    return graph


def _graph_paths(manifest: Manifest) -> list[str | None]:
    return [getattr(manifest.graph, name) for name in GRAPH_FILES + OPTIONAL_GRAPH_FILES]


@dataclass(frozen=True)
class Opened:
    """A verified bundle: its manifest and raw manifest bytes, the graph store and the model bytes
    (in memory, hashed as read: onnxruntime gets bytes, so it can read no other file)."""

    manifest: Manifest
    raw_manifest: bytes
    graph: GraphArrays | TemporalArrays  # TemporalArrays exactly when manifest.temporal
    model: bytes
    typed: typed.TypedArrays | None = None  # exactly when manifest.typed (meta-path bundles, bundle.typed)


def open_bundle(root: Path, key: bytes | None = None) -> Opened:
    """Read, verify and check the bundle at `root`; with `key`, its manifest must carry a valid
    signature (bundle.signing). Raises BundleInvalid on any mismatch."""
    if not root.is_dir():
        raise BundleInvalid(f"bundle directory {root} does not exist")
    manifest, raw = read_manifest(root)
    if key is not None:
        signing.verify(root, raw, key)
    served = read_verified(root, manifest)
    graph = load_temporal(served, manifest) if manifest.temporal else load_graph(served, manifest)
    section = manifest.typed
    arrays = None if section is None else typed.load(
        section, lambda rel, name, kind: _array(served[rel], name, rel, kind), manifest.dataset.num_nodes)
    return Opened(manifest, raw, graph, bytes(served.pop(manifest.model.file)), arrays)
