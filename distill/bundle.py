"""Writing a bundle (layout in docs/bundle.md): atomically, with the sha256 of every file."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from distill.errors import ConfigError

SCHEMA_VERSION = 1
GRAPH_FILES = ("features", "node_ids", "indptr", "indices", "weights")


def check_target(out: Path, force: bool) -> None:
    """Fail before any work when `out` cannot receive a bundle."""
    if out.exists() and not force:
        raise ConfigError(f"--out {out} already exists; choose a new directory or pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    # Missing parents are created when the bundle is written (after the work succeeded); the nearest
    # existing ancestor must be a writable directory.
    ancestor = out.resolve().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK):
        raise ConfigError(f"--out {out}: {ancestor} is not a writable directory")


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


def save_graph(root: Path, arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """Save the graph store as plain .npy files; returns {name: relative path}."""
    (root / "graph").mkdir()
    paths = {}
    for name in GRAPH_FILES:
        rel = f"graph/{name}.npy"
        np.save(root / rel, arrays[name], allow_pickle=False)
        paths[name] = rel
    return paths


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` except the manifest, keyed by relative path."""
    return {
        p.relative_to(root).as_posix(): sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import torch_geometric

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_geometric": torch_geometric.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=False, allow_nan=False) + "\n")
