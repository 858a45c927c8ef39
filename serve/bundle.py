"""Reading a bundle for the service: the contract package verifies it (bundle.files.open_bundle),
this module turns a contract violation into the service's BundleError (HTTP 503 / reload 422, with
`detail={"file": relative path}` when one file is to blame)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bundle.errors import BundleInvalid
from bundle.files import GraphArrays, open_bundle
from bundle.manifest import Manifest, Policy
from serve.errors import BundleError


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its typed manifest and its memory-mapped graph store."""

    root: Path
    manifest: Manifest
    graph: GraphArrays

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
    def policy(self) -> Policy:
        return self.manifest.policy

    @property
    def inputs(self) -> list[str]:
        return list(self.manifest.model.inputs)


def load(root: Path) -> Bundle:
    """Read, verify and check the bundle at `root`; raises BundleError on any mismatch."""
    try:
        manifest, graph = open_bundle(root)
    except BundleInvalid as exc:
        raise BundleError(exc.message, exc.detail) from None
    return Bundle(root, manifest, graph)
