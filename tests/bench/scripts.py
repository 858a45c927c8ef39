"""Load a bench/ script as a module (bench/ is a folder of scripts, not a package)."""

import importlib.util
from pathlib import Path
from types import ModuleType


def load(name: str) -> ModuleType:
    """bench/<name>.py, imported under the name bench_<name>."""
    path = Path(__file__).resolve().parents[2] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
