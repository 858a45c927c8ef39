"""Damaging bundles on purpose, the one way every test does it.

`tamper(bundle, relpath, mutate)` rewrites one file of a bundle directory in place. By default the
manifest is left alone, so the file no longer matches its sha256 in `manifest.json`'s `files`;
`rehash=True` updates that entry (and the version, which names the digest of the served files) as
well, so that only the deeper checks (dtypes, shapes, the CSR, the model's signature) can catch it.
Plain files, hashlib and the torch-free contract package: usable by the serve and the distill tests
alike.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bundle import files
from bundle.manifest import Manifest

Mutation = Callable[[bytes], bytes] | bytes


def copy_bundle(src: Path, dst: Path) -> Path:
    """A copy of the bundle directory `src` at `dst` (which must not exist) -> `dst`."""
    return Path(shutil.copytree(src, dst))


def tamper(bundle: Path, relpath: str, mutate: Mutation, rehash: bool = False) -> Path:
    """Replace `bundle/relpath` by `mutate(old bytes)` (or by `mutate` itself when it is bytes) -> `bundle`.
    With `rehash`, `manifest.json`'s `files[relpath]` becomes the new content's sha256."""
    path = bundle / relpath
    data = mutate if isinstance(mutate, bytes) else mutate(path.read_bytes())
    path.write_bytes(data)
    if rehash:
        _rehash(bundle, relpath, hashlib.sha256(data).hexdigest())
    return bundle


def _rehash(bundle: Path, relpath: str, digest: str) -> None:
    """Set `files[relpath]` and follow it with the version (which names the digest of what is
    served, docs/bundle.md), so that only the deeper checks remain."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert relpath in manifest["files"], f"{relpath} is not listed in manifest.files"
    manifest["files"][relpath] = digest
    (bundle / "manifest.json").write_text(json.dumps(reversion(manifest), indent=2))


def reversion(manifest: dict[str, Any]) -> dict[str, Any]:
    """`manifest` (parsed JSON) with the version its served parts now digest to: an edit of the
    policy or the dataset record that only the deeper checks should catch."""
    parsed = Manifest.parse(json.dumps(manifest))
    manifest["version"], manifest["digest"] = files.version_of(parsed), files.served_digest(parsed)
    return manifest


def flip_last_byte(data: bytes) -> bytes:
    """One bit of the last byte flipped: the smallest change a sha256 must catch. In a float32 .npy
    that is the sign/exponent byte of the last value, so the value changes too."""
    return data[:-1] + bytes([data[-1] ^ 1])


def npy(array: Any, allow_pickle: bool = False) -> bytes:
    """`array` as the bytes of a .npy file (a mutation that replaces an array)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=allow_pickle)
    return buffer.getvalue()


def edit_json(edit: Callable[[dict[str, Any]], object]) -> Callable[[bytes], bytes]:
    """A mutation for a JSON file (manifest.json): `edit` changes the parsed object in place."""

    def mutate(data: bytes) -> bytes:
        obj = json.loads(data)
        edit(obj)
        return json.dumps(obj, indent=2).encode()

    return mutate
