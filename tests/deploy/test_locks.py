"""The hash-locked requirement files (requirements/, `make lock`) against pyproject.toml: each image's lock
pins exactly its group's direct dependencies at versions pyproject allows, every pin hashed, torch as the CPU
build in the job's lock only, and the shared packages at one version across the images."""

from __future__ import annotations

import re

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.deploy.files import LOCKS, ROOT, normalise, read_lock, read_pyproject

# Image role -> the pyproject extras its lock adds to the [project] dependencies.
ROLES = {"serve": (), "distill": ("distill",), "bench": ("bench",)}
FROM_PROJECT = "graph-distill (pyproject.toml)"
FROM_BUILD = "-r requirements/build.in"
# The images' interpreter and platform (python:3.11-slim on linux/amd64), for pyproject's markers.
IMAGE_ENV = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
             "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
             "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def requirement_lines(name: str) -> list[str]:
    """The requirements of a requirements/ input file, comments dropped."""
    lines = (LOCKS / name).read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def build_requirements() -> list[str]:
    return requirement_lines("build.in")


def direct_requirements(role: str) -> list[Requirement]:
    """What `role`'s lock must pin at the top level: the [project] dependencies, its extras, the build backend."""
    project = read_pyproject()["project"]
    texts = list(project["dependencies"])
    for extra in ROLES[role]:
        texts += project["optional-dependencies"][extra]
    requirements = [Requirement(text) for text in texts + build_requirements()]
    return [r for r in requirements if r.marker is None or r.marker.evaluate(IMAGE_ENV)]


@pytest.mark.parametrize("role", sorted(ROLES))
def test_lock_pins_exactly_the_direct_dependencies(role: str) -> None:
    pins = read_lock(LOCKS / f"{role}.txt")
    wanted = direct_requirements(role)
    top_level = {pin.name for pin in pins.values() if FROM_PROJECT in pin.via or FROM_BUILD in pin.via}
    assert top_level == {normalise(r.name) for r in wanted}, "pyproject changed: run `make lock`"
    for requirement in wanted:
        version = pins[normalise(requirement.name)].version
        assert requirement.specifier.contains(version, prereleases=True), f"{requirement} vs {version}: make lock"


@pytest.mark.parametrize("role", sorted(ROLES))
def test_every_line_is_a_hashed_pin(role: str) -> None:
    text = (LOCKS / f"{role}.txt").read_text()
    heads = [line for line in text.splitlines() if line and not line[0].isspace() and not line.startswith("#")]
    assert heads and all(re.fullmatch(r"[A-Za-z0-9][\w.-]*==\S+ \\", line) for line in heads), heads
    pins = read_lock(LOCKS / f"{role}.txt")
    assert len(pins) == len(heads)
    assert [p.name for p in pins.values() if not p.hashes] == []


@pytest.mark.parametrize("role", ["distill", "bench"])
def test_shared_packages_pin_the_serve_versions(role: str) -> None:
    serve, other = read_lock(LOCKS / "serve.txt"), read_lock(LOCKS / f"{role}.txt")
    differing = {name: (serve[name].version, other[name].version)
                 for name in serve.keys() & other.keys() if serve[name].version != other[name].version}
    assert differing == {}
    # The bench image installs its lock over serve-build's venv: it must hold every serve pin.
    if role == "bench":
        assert serve.keys() <= other.keys()


def test_torch_is_the_cpu_build_and_only_in_the_job_lock() -> None:
    (override,) = map(Requirement, requirement_lines("torch-cpu.txt"))
    (pinned,) = override.specifier
    assert Version(pinned.version).local == "cpu"
    (project_pin,) = next(r for r in direct_requirements("distill") if r.name == "torch").specifier
    assert Version(pinned.version).public == project_pin.version, "torch-cpu.txt and pyproject's torch differ"
    assert read_lock(LOCKS / "distill.txt")["torch"].version == pinned.version
    assert "torch" not in read_lock(LOCKS / "serve.txt")
    assert "torch" not in read_lock(LOCKS / "bench.txt")
    assert not {name for name in read_lock(LOCKS / "distill.txt") if name.startswith(("nvidia-", "triton"))}


def test_build_lock_input_is_pyprojects_build_system() -> None:
    assert build_requirements() == read_pyproject()["build-system"]["requires"]


def test_locks_come_from_make_lock_with_a_pinned_tool() -> None:
    script = (LOCKS / "lock.sh").read_text()
    assert re.search(r"^UV_VERSION=\d+\.\d+\.\d+$", script, re.MULTILINE)
    assert '"uv==$UV_VERSION"' in script
    assert "--generate-hashes" in script and "--python-version 3.11" in script
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^lock:.*\n\t.*requirements/lock\.sh", makefile, re.MULTILINE)
    for role in ROLES:
        assert "#    make lock\n" in (LOCKS / f"{role}.txt").read_text()
