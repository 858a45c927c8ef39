"""Settings: SERVE_* environment, validation, and the CLI's refusal of bad values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from serve.settings import Settings, available_cores, service_links
from tests.serve.conftest import ROOT


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in [k for k in os.environ if k.startswith("SERVE_")]:
        monkeypatch.delenv(key)


def test_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVE_BUNDLE", "/b")
    monkeypatch.setenv("SERVE_MAX_BATCH", "8")
    s = Settings()
    assert (s.bundle, s.max_batch, s.port, s.intra_op_threads, s.host) == (Path("/b"), 8, 8000, 1, "127.0.0.1")
    assert s.cache_budget_bytes == 256 << 20


def test_unknown_env_var_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVE_MAX_BACH", "8")
    with pytest.raises(ValidationError, match="SERVE_MAX_BACH"):
        Settings(bundle=Path("/b"))


def test_fault_injection_is_not_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    # The score delay of the drain / reload tests lives in tests/serve/slow_serve.py, not in production settings.
    monkeypatch.setenv("SERVE_DEBUG_SCORE_DELAY_MS", "1500")
    with pytest.raises(ValidationError, match="SERVE_DEBUG_SCORE_DELAY_MS"):
        Settings(bundle=Path("/b"))


def test_unknown_kwarg_is_refused() -> None:
    with pytest.raises(ValidationError, match="extra"):
        Settings(bundle=Path("/b"), nope=1)  # type: ignore[call-arg]


@pytest.mark.parametrize(("field", "value"), [
    ("port", 0), ("port", 70000), ("max_batch", 0), ("intra_op_threads", 0), ("max_body_bytes", 10),
    ("cache_budget_mb", -1), ("cache_budget_mb", float("inf")), ("cache_budget_mb", float("nan")),
    ("log_level", "loud"), ("pack_nodes", 0),
])
def test_out_of_range_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(bundle=Path("/b"), **{field: value})


def test_threads_must_fit_the_cores() -> None:
    with pytest.raises(ValidationError, match="exceeds the .* available cores"):
        Settings(bundle=Path("/b"), intra_op_threads=available_cores() + 1)


def test_bundle_is_required() -> None:
    with pytest.raises(ValidationError, match="bundle"):
        Settings()


def test_cli_exits_2_with_one_line_on_bad_settings() -> None:
    env = {"PATH": "/usr/bin:/bin", "SERVE_PORT": "not-a-port"}
    result = subprocess.run([sys.executable, "-m", "serve", "--bundle", "/nonexistent"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "invalid settings: port" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("token", [" " * 16, "a" * 32, "abababababababab", "valid-but has-a-space-0123"])
def test_an_admin_token_without_entropy_is_refused(token: str) -> None:
    with pytest.raises(ValidationError, match="admin_token must have no whitespace"):
        Settings(bundle=Path("/b"), admin_token=token)  # type: ignore[arg-type]


def test_a_generated_admin_token_is_accepted() -> None:
    import secrets

    settings = Settings(bundle=Path("/b"), admin_token=secrets.token_urlsafe(32))  # type: ignore[arg-type]
    assert settings.admin_token is not None


# -- HTTP limits (serve/http_limits.py) ---------------------------------------------------------------
def test_http_limit_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings(bundle=Path("/b"))
    assert (s.max_header_bytes, s.header_timeout_seconds, s.body_timeout_seconds, s.keep_alive_seconds,
            s.max_connections, s.max_in_flight) == (32768, 5.0, 10.0, 5, 1000, 64)
    monkeypatch.setenv("SERVE_MAX_CONNECTIONS", "50")  # below the default max_in_flight: the connection cap binds
    monkeypatch.setenv("SERVE_HEADER_TIMEOUT_SECONDS", "0.5")
    s = Settings(bundle=Path("/b"))
    assert (s.max_connections, s.max_in_flight, s.header_timeout_seconds) == (50, 64, 0.5)


@pytest.mark.parametrize(("field", "good", "bad"), [
    ("max_header_bytes", 4096, 100), ("max_header_bytes", 4096, 2 << 20),
    ("header_timeout_seconds", 0.5, 0), ("header_timeout_seconds", 0.5, float("inf")),
    ("header_timeout_seconds", 0.5, float("nan")), ("body_timeout_seconds", 30, -1),
    ("keep_alive_seconds", 2, 0), ("max_connections", 100, 1), ("max_in_flight", 8, 0),
])
def test_http_limits_out_of_range_are_refused(field: str, good: object, bad: object) -> None:
    assert getattr(Settings(bundle=Path("/b"), **{field: good}), field) == good
    with pytest.raises(ValidationError, match=field):
        Settings(bundle=Path("/b"), **{field: bad})


def test_max_in_flight_must_fit_max_connections() -> None:
    with pytest.raises(ValidationError, match="max_in_flight=200 exceeds max_connections=100"):
        Settings(bundle=Path("/b"), max_connections=100, max_in_flight=200)


# -- start-up opt-in and Kubernetes service links (issue 14) --------------------------------------------
def test_opting_in_to_wait_needs_the_reload_endpoint() -> None:
    # Waiting ends only with POST /admin/reload: without its token the process could never become ready.
    with pytest.raises(ValidationError, match="wait_for_bundle needs admin_token"):
        Settings(bundle=Path("/b"), wait_for_bundle=True)
    token = "test-admin-token-0123456789"
    assert Settings(bundle=Path("/b"), wait_for_bundle=True, admin_token=token).wait_for_bundle  # type: ignore[arg-type]
    assert Settings(bundle=Path("/b")).wait_for_bundle is False


# What the kubelet injects into every pod of a namespace holding a Service named `serve` (port 8000, named http).
SERVICE_LINKS = {
    "SERVE_SERVICE_HOST": "10.0.0.1", "SERVE_SERVICE_PORT": "8000", "SERVE_SERVICE_PORT_HTTP": "8000",
    "SERVE_PORT": "tcp://10.0.0.1:8000", "SERVE_PORT_8000_TCP": "tcp://10.0.0.1:8000",
    "SERVE_PORT_8000_TCP_PROTO": "tcp", "SERVE_PORT_8000_TCP_PORT": "8000", "SERVE_PORT_8000_TCP_ADDR": "10.0.0.1",
}


def test_kubernetes_service_links_are_skipped_not_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SERVICE_LINKS.items():
        monkeypatch.setenv(name, value)
    assert service_links(os.environ) == sorted(SERVICE_LINKS)
    assert Settings(bundle=Path("/b")).port == 8000  # SERVE_PORT=tcp://... is no port: the default stays
    assert Settings(bundle=Path("/b"), port=9000).port == 9000  # and --port still wins
    monkeypatch.setenv("SERVE_MAX_BACH", "8")  # typos are still caught beside the links
    with pytest.raises(ValidationError, match=r"\['SERVE_MAX_BACH'\]"):
        Settings(bundle=Path("/b"))


@pytest.mark.parametrize(("name", "value"), [
    ("SERVE_PORT", "9000"), ("SERVE_PORT", "tcp://10.0.0.1"), ("SERVE_PORT", "http://10.0.0.1:8000"),
    ("SERVE_PORT_HTTP", "8000"), ("SERVE_PORT_8000_TCP_HOST", "10.0.0.1"), ("SERVE_SERVICE_HOSTNAME", "x"),
    ("SERVE_PORTS_8000_TCP", "tcp://10.0.0.1:8000"),
])
def test_only_the_exact_link_patterns_are_skipped(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    assert service_links(os.environ) == []


def test_a_plain_serve_port_is_still_the_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVE_PORT", "9000")
    assert Settings(bundle=Path("/b")).port == 9000


@pytest.mark.slow
def test_a_service_link_port_does_not_crash_the_cli(tmp_path: Path) -> None:
    # The case through `python -m serve`: the links pass the settings (exit 4 for the missing
    # bundle, not 2 for the settings), and the log names them.
    env = {"PATH": "/usr/bin:/bin", **SERVICE_LINKS}
    result = subprocess.run([sys.executable, "-m", "serve", "--bundle", str(tmp_path / "none")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 4, result.stderr
    assert "invalid settings" not in result.stderr
    assert "ignoring Kubernetes service-link variables" in result.stderr and "listening on 8000" in result.stderr


def test_the_default_reload_root_is_never_the_filesystem_root() -> None:
    assert Settings(bundle=Path("/bundle")).allowed_roots == [Path("/bundle")]
    assert Settings(bundle=Path("/bundles/current")).allowed_roots == [Path("/bundles")]
    assert Settings(bundle=Path("/b"), reload_roots=[Path("/srv")]).allowed_roots == [Path("/srv")]


def test_the_console_script_is_the_same_command() -> None:
    script = Path(sys.executable).parent / "graph-distill-serve"  # installed by `pip install -e .` (make venv)
    result = subprocess.run([str(script), "--bundle", "/nonexistent"], cwd=ROOT, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "SERVE_PORT": "not-a-port"}, timeout=60)
    assert result.returncode == 2 and "invalid settings: port" in result.stderr
