"""docker-compose.yml and deploy/nginx.conf, statically (no engine runs here): the compose-spec schema, then
each reference against what it names: Dockerfile stages, volumes, services, SERVE_* settings, commands,
health-check routes, and the proxy's upstream."""

from __future__ import annotations

import copy
import json
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from distill.cli import parser as distill_parser
from serve.__main__ import parse_args as serve_args
from serve.settings import Settings
from tests.deploy.files import DIGEST_PINNED, NGINX_CONF, ROOT, read_compose, read_dockerfile
from tests.deploy.routes import served_paths

# The compose-spec JSON schema as check-jsonschema vendors it (`check-jsonschema --builtin-schema vendor.compose-spec`).
COMPOSE_SCHEMA = files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
URL = re.compile(r"http://([\w.-]+):(\d+)(/[\w/-]*)")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return read_compose()


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def schema_errors(document: dict[str, Any]) -> list[str]:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, f"{duration!r}: write durations in whole seconds"
    return float(match.group(1))


def test_compose_file_follows_the_compose_spec(compose: dict[str, Any]) -> None:
    assert schema_errors(compose) == []


def test_schema_check_catches_a_typo_and_a_wrong_type(compose: dict[str, Any]) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["serve"]["healthcheck"]["retry"] = 60
    broken["services"]["proxy"]["ports"] = "8000:8080"
    errors = schema_errors(broken)
    assert any(e.startswith("services/serve/healthcheck: 'retry'") for e in errors), errors
    assert any(e.startswith("services/proxy/ports: '8000:8080' is not of type 'array'") for e in errors), errors


def test_builds_target_dockerfile_stages_and_images_are_pinned(compose: dict[str, Any]) -> None:
    stages = {stage.name for stage in read_dockerfile().stages}
    for name, service in services(compose).items():
        assert ("build" in service) != ("image" in service), f"{name}: build an image or pull one"
        if "build" in service:
            assert service["build"]["context"] == "." and service["build"]["target"] in stages, name
        else:
            assert DIGEST_PINNED.fullmatch(service["image"]), f"{name}: pin {service['image']} by digest"


def test_volumes_and_dependencies_name_what_exists(compose: dict[str, Any]) -> None:
    used: set[str] = set()
    for name, service in services(compose).items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                used.add(source)
        assert set(service.get("depends_on", {})) <= set(services(compose)), name
    assert used == set(compose["volumes"])


def test_serve_environment_holds_valid_settings(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    environment: dict[str, str | None] = services(compose)["serve"]["environment"]
    fields = {f"SERVE_{name.upper()}" for name in Settings.model_fields}
    assert set(environment) <= fields, set(environment) - fields
    for name, value in environment.items():
        if value is not None:  # a bare name is taken from the shell that runs compose
            monkeypatch.setenv(name, value)
    Settings(bundle=Path("/bundles/current"))


def test_job_service_and_locust_share_one_bundle_path(compose: dict[str, Any]) -> None:
    found = services(compose)
    out = distill_parser().parse_args(found["distill"]["command"]).out
    serve_cmd = found["serve"]["command"]
    assert serve_cmd[:3] == ["python", "-m", "serve"]
    assert serve_args(serve_cmd[3:])["bundle"] == str(out) == found["locust"]["environment"]["BENCH_BUNDLE"]
    for name in ("distill", "serve", "locust"):
        mounts = [v.split(":")[1] for v in found[name]["volumes"]]
        assert any(out.is_relative_to(m) for m in mounts), f"{name} does not mount {out}"


def serve_port(compose: dict[str, Any]) -> int:
    serve = services(compose)["serve"]
    port = serve_args(serve["command"][3:])["port"]
    assert isinstance(port, int) and serve["expose"] == [str(port)]
    return port


def test_locust_runs_the_locustfile_against_the_service(compose: dict[str, Any]) -> None:
    locust = services(compose)["locust"]["command"]
    locustfile = ROOT / locust[locust.index("-f") + 1]
    url = URL.fullmatch(locust[locust.index("--host") + 1] + "/")
    assert url and url.group(1) in services(compose) and int(url.group(2)) == serve_port(compose)
    for name in services(compose)["locust"]["environment"]:
        assert f'"{name}"' in locustfile.read_text(), f"{locustfile.name} does not read {name}"


def nginx() -> str:
    return NGINX_CONF.read_text()


def test_healthchecks_probe_real_routes_on_the_right_ports(compose: dict[str, Any]) -> None:
    listen = re.search(r"^\s*listen (\d+);", nginx(), re.MULTILINE)
    assert listen
    for name, port in (("serve", serve_port(compose)), ("proxy", int(listen.group(1)))):
        url = URL.search(" ".join(services(compose)[name]["healthcheck"]["test"]))
        assert url and int(url.group(2)) == port and url.group(3) in served_paths(), name


def test_proxy_forwards_to_the_serve_service(compose: dict[str, Any]) -> None:
    proxy = services(compose)["proxy"]
    assert f"./{NGINX_CONF.relative_to(ROOT)}:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    upstream = re.search(r"upstream (\w+) \{[^}]*?server ([\w.-]+):(\d+);", nginx())
    assert upstream and re.search(rf"proxy_pass http://{upstream.group(1)};", nginx())
    assert upstream.group(2) in services(compose) and int(upstream.group(3)) == serve_port(compose)
    listen = re.search(r"^\s*listen (\d+);", nginx(), re.MULTILINE)
    assert listen and [p.split(":")[1] for p in proxy["ports"]] == [listen.group(1)]


def test_timeouts_nest_as_the_comments_say(compose: dict[str, Any]) -> None:
    serve = services(compose)["serve"]
    upstream_idle = re.search(r"upstream \w+ \{[^}]*?keepalive_timeout (\w+);", nginx())
    assert upstream_idle
    # nginx drops an idle upstream connection before the service does, so no request races a closing one.
    assert seconds(upstream_idle.group(1)) < float(serve["environment"]["SERVE_KEEP_ALIVE_SECONDS"])
    # Docker's SIGKILL comes only after the drain and the graceful timeout.
    shutdown = float(serve["environment"]["SERVE_DRAIN_SECONDS"]) + float(
        serve["environment"]["SERVE_GRACEFUL_TIMEOUT_SECONDS"])
    assert seconds(serve["stop_grace_period"]) > shutdown
