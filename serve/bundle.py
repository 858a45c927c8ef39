"""Reading a bundle for the service: the contract package verifies it (bundle.files.open_bundle),
this module turns a contract violation into the service's BundleError (HTTP 503 / reload 422, with
`detail={"file": relative path}` when one file is to blame). The model and the graph arrays are
held in memory as verified, so later edits to the files on disk change nothing served."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bundle import typed as typed_rules
from bundle.errors import BundleInvalid
from bundle.files import GraphArrays, TemporalArrays, open_bundle
from bundle.manifest import Manifest, Policy, TemporalRecent
from serve.errors import BundleError


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its typed manifest, its graph store and its ONNX model's bytes."""

    root: Path
    manifest: Manifest
    graph: GraphArrays | TemporalArrays  # TemporalArrays for a temporal bundle (serve/temporal_store.py)
    model: bytes = field(repr=False)
    raw_manifest: bytes = field(repr=False)  # the verified manifest's bytes (lineage hashes)
    typed: typed_rules.TypedArrays | None = field(default=None, repr=False)  # meta-path bundles (bundle.typed)

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def model_path(self) -> Path:
        return self.root / self.manifest.model.file

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest.dataset.class_names)

    @property
    def policy(self) -> Policy | TemporalRecent:
        return self.manifest.policy

    @property
    def inputs(self) -> list[str]:
        return list(self.manifest.model.inputs)


def load(root: Path, key: bytes | None = None) -> Bundle:
    """Read, verify and check the bundle at `root` (signed under `key`, when given); raises
    BundleError on any mismatch."""
    try:
        opened = open_bundle(root, key)
    except BundleInvalid as exc:
        raise BundleError(exc.message, exc.detail) from None
    return Bundle(root, opened.manifest, opened.graph, opened.model, opened.raw_manifest, opened.typed)
