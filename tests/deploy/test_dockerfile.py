"""The Dockerfile, statically (no engine runs here): pinned base image, COPY sources that exist and reach the
build context, installs only from the hash-locked requirement files, commands and health check that exist."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from distill.cli import parser as distill_parser
from serve.__main__ import parse_args as serve_args
from serve.settings import Settings
from tests.deploy.files import (
    DIGEST_PINNED,
    DOCKERFILE,
    LOCKS,
    ROOT,
    Dockerfile,
    Stage,
    dockerignored,
    pip_installs,
    read_dockerfile,
    read_pyproject,
)
from tests.deploy.routes import served_paths

# Stage -> the lock it installs (requirements/<role>.txt).
LOCK_OF_STAGE = {"distill": "distill", "serve-build": "serve", "bench": "bench"}
IMAGES = ("distill", "bench", "serve")  # the stages a build targets (docker-compose.yml, the header comment)
PROJECT_INSTALL = ["--no-deps", "--no-build-isolation", "."]
LOCK_FLAGS = {"--no-deps", "--require-hashes", "--only-binary=:all:"}


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return read_dockerfile()


def words(stage: Stage, keyword: str) -> list[list[str]]:
    return [shlex.split(i.args) for i in stage.body if i.keyword == keyword]


def test_every_base_image_is_pinned_by_digest(dockerfile: Dockerfile) -> None:
    # The `# syntax=` parser directive names an image too: BuildKit pulls that frontend before anything else.
    directive = re.match(r"# syntax=(\S+)\n", DOCKERFILE.read_text())
    assert directive is None or DIGEST_PINNED.fullmatch(directive.group(1)), directive
    earlier: set[str] = set()
    for stage in dockerfile.stages:
        assert stage.base in earlier or DIGEST_PINNED.fullmatch(stage.base), f"FROM {stage.base}: pin by digest"
        earlier.add(stage.name)


def test_copy_sources_exist_and_reach_the_build_context(dockerfile: Dockerfile) -> None:
    sources = [src for stage in dockerfile.stages for copy in words(stage, "COPY")
               if not any(w.startswith("--from") for w in copy) for src in copy[:-1] if not src.startswith("--")]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
        assert not dockerignored(source), f"COPY {source}: .dockerignore leaves it out of the build context"


def test_build_context_leaves_out_local_state_and_keeps_the_code() -> None:
    for path in (".venv/bin/python", "out/demo/manifest.json", "runs/x", "tests/conftest.py",
                 "serve/__pycache__/app.cpython-311.pyc", "graph_distill.egg-info/PKG-INFO"):
        assert dockerignored(path), path
    code = [path.relative_to(ROOT).as_posix() for package in ("bundle", "serve", "distill")
            for path in (ROOT / package).rglob("*.py") if "__pycache__" not in path.parts]
    assert code and [p for p in code if dockerignored(p)] == []


def test_each_image_installs_only_its_lock_with_hashes(dockerfile: Dockerfile) -> None:
    for stage in dockerfile.stages:
        runs = [i for i in stage.body if i.keyword == "RUN"]
        installs = [install for run in runs for install in pip_installs(run.args)]
        lock_installs = [w for w in installs if w != PROJECT_INSTALL]
        if stage.name not in LOCK_OF_STAGE:
            assert lock_installs == [], f"{stage.name}: pip install outside a lock"
            continue
        (install,) = lock_installs
        lock = f"requirements/{LOCK_OF_STAGE[stage.name]}.txt"
        assert install[-2:] == ["-r", lock] and set(install) >= LOCK_FLAGS, install
        copied = [w[0] for w in words(stage, "COPY")[:1]]
        assert copied == [lock], f"{stage.name}: COPY {lock} first, so the deps layer outlives code changes"


def test_project_installs_without_deps_then_pip_check(dockerfile: Dockerfile) -> None:
    installing = [stage.name for stage in dockerfile.stages for run in stage.body if run.keyword == "RUN"
                  and PROJECT_INSTALL in pip_installs(run.args)]
    assert sorted(installing) == ["distill", "serve-build"]
    for name in installing:
        (run,) = [r for r in dockerfile.stage(name).body if r.keyword == "RUN" and "--no-build-isolation" in r.args]
        assert re.search(r"--no-build-isolation \. && \S*pip check", run.args), run.args


def test_only_the_job_image_reads_pytorchs_index(dockerfile: Dockerfile) -> None:
    index = re.search(r"^TORCH_INDEX=(\S+)$", (LOCKS / "lock.sh").read_text(), re.MULTILINE)
    assert index
    uses = {stage.name: w[w.index("--extra-index-url") + 1] for stage in dockerfile.stages
            for run in stage.body if run.keyword == "RUN"
            for w in pip_installs(run.args) if "--extra-index-url" in w}
    assert uses == {"distill": index.group(1)}


def test_images_run_as_the_numeric_app_user(dockerfile: Dockerfile) -> None:
    uid = re.search(r"useradd .*--uid (\d+)", dockerfile.stage("base").body[1].args)
    assert uid
    for name in IMAGES:
        assert words(dockerfile.stage(name), "USER")[-1] == [f"{uid.group(1)}:{uid.group(1)}"], name


def exec_form(stage: Stage, keyword: str) -> list[str]:
    """The last `keyword` (CMD, ENTRYPOINT) of `stage`, written in JSON (exec) form, as its words."""
    value = json.loads([i.args for i in stage.body if i.keyword == keyword][-1])
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), value
    return value


def test_default_commands_parse(dockerfile: Dockerfile) -> None:
    job = dockerfile.stage("distill")
    assert exec_form(job, "ENTRYPOINT") == ["distill"] and "distill" in read_pyproject()["project"]["scripts"]
    distill_parser().parse_args(exec_form(job, "CMD"))
    serve_cmd = exec_form(dockerfile.stage("serve"), "CMD")
    assert serve_cmd[:3] == ["python", "-m", "serve"]
    assert serve_args(serve_cmd[3:])["bundle"] == "/bundle"
    locust_cmd = exec_form(dockerfile.stage("bench"), "CMD")
    locustfile = locust_cmd[locust_cmd.index("-f") + 1]
    assert [locustfile, f"./{locustfile}"] in words(dockerfile.stage("bench"), "COPY")


def test_healthcheck_probes_a_real_route_on_the_exposed_port(dockerfile: Dockerfile) -> None:
    serve = dockerfile.stage("serve")
    (health,) = [i.args for i in serve.body if i.keyword == "HEALTHCHECK"]
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/\S*?)'", health)
    assert url and url.group(2) in served_paths()
    port = Settings.model_fields["port"].default
    assert int(url.group(1)) == port and words(serve, "EXPOSE") == [[str(port)]]
