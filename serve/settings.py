"""Service settings: every field is a `SERVE_*` environment variable (or a CLI flag of `python -m serve`).

Unknown `SERVE_*` variables are rejected rather than ignored, so a typo such as `SERVE_MAX_BACH`
fails at start-up instead of silently leaving the default in place. The one exception is the
variables Kubernetes injects for a Service named `serve` in the pod's namespace (service links:
`SERVE_SERVICE_HOST`, `SERVE_SERVICE_PORT[_NAME]`, `SERVE_PORT=tcp://10.0.0.1:8000`,
`SERVE_PORT_8000_TCP[_PROTO|_PORT|_ADDR]`): they are not settings, so they are skipped (neither read
nor refused) and `python -m serve` logs them; a pod must not crash because someone named a Service.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from bundle.signing import check_key

MIN_TOKEN_DISTINCT = 8
# Kubernetes' Docker-link-style variables for a Service named `serve` (port names upper-cased, `-` -> `_`).
# SERVE_PORT itself is a link only when its value is a link URL: SERVE_PORT=9000 stays the port setting.
SERVICE_LINK_NAME = re.compile(
    r"SERVE_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT_[0-9]+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)")
SERVICE_LINK_URL = re.compile(r"(tcp|udp|sctp)://\S+:[0-9]+", re.IGNORECASE)


def service_links(environ: Mapping[str, str]) -> list[str]:
    """Names in `environ` that are Kubernetes service-link variables of a Service named `serve`, sorted."""
    return sorted(name for name, value in environ.items()
                  if SERVICE_LINK_NAME.fullmatch(name.upper())
                  or (name.upper() == "SERVE_PORT" and SERVICE_LINK_URL.fullmatch(value.strip())))


def log_service_links(environ: Mapping[str, str], port: int) -> None:
    """One log line naming the service-link variables skipped, if any: a WARNING when SERVE_PORT was
    one (the operator may have meant it), INFO otherwise."""
    links = service_links(environ)
    if not links:
        return
    port_skipped = "SERVE_PORT" in {name.upper() for name in links}
    logging.getLogger("serve").log(
        logging.WARNING if port_skipped else logging.INFO,
        "ignoring Kubernetes service-link variables %s (a Service named `serve` in this namespace)%s; "
        "set `enableServiceLinks: false` in the pod spec to keep them out", links,
        f": SERVE_PORT is a link URL, not a port, so listening on {port} (--port or a plain SERVE_PORT sets it)"
        if port_skipped else "")


class _EnvWithoutServiceLinks(EnvSettingsSource):
    """The SERVE_* environment minus service links, so `SERVE_PORT=tcp://...` is never parsed as the port."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        links = {name.lower() for name in service_links(os.environ)}
        return {k: v for k, v in super()._load_env_vars().items() if k.lower() not in links}


def available_cores() -> int:
    """Cores this process may run on (respects `taskset` / cgroup cpusets, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no sched_getaffinity
        return os.cpu_count() or 1


def _check_entropy(secret: SecretStr, name: str) -> None:
    token = secret.get_secret_value()
    if any(c.isspace() for c in token) or len(set(token)) < MIN_TOKEN_DISTINCT:
        raise ValueError(f"{name} must have no whitespace and at least {MIN_TOKEN_DISTINCT} distinct "
                         "characters; generate one with `python -c 'import secrets; "
                         "print(secrets.token_urlsafe(32))'`")


class Settings(BaseSettings):
    """Validated configuration of one service process."""

    model_config = SettingsConfigDict(env_prefix="SERVE_", extra="forbid", frozen=True)

    bundle: Path = Field(description="bundle directory written by `distill run`")
    wait_for_bundle: bool = Field(
        False, description="a bundle refused at start-up leaves the process up and unready (/readyz 503 with the "
                           "reason) until POST /admin/reload loads a good one; default: exit 4 at once",
    )
    host: str = Field("127.0.0.1", description="interface to bind")
    port: int = Field(8000, ge=1, le=65535)
    intra_op_threads: int = Field(
        1, ge=1, le=64,
        description="onnxruntime intra-op threads; 1 is fastest for neighbourhood-sized matrices",
    )
    max_batch: int = Field(64, ge=1, le=10_000, description="node_ids + new_nodes allowed in one request")
    max_body_bytes: int = Field(1 << 20, ge=1024, le=64 << 20, description="request body size cap")
    cache_budget_mb: float = Field(
        256.0, ge=0.0, le=1 << 20, allow_inf_nan=False,
        description="memory for cached neighbourhoods; filled at start-up, then LRU",
    )
    pack_nodes: int = Field(
        128, ge=1, le=8192,
        description="max rows of one block-diagonal ONNX call when scoring a batch",
    )
    warmup_runs: int = Field(50, ge=0, le=100_000, description="inference calls before becoming ready")
    log_level: str = Field("info", pattern="^(critical|error|warning|info|debug)$")
    admin_token: SecretStr | None = Field(
        None, min_length=16,
        description="bearer token for POST /admin/reload; unset = the admin endpoint does not exist",
    )
    reload_roots: list[Path] = Field(
        default_factory=list,
        description="directories POST /admin/reload may load bundles from (JSON list in the environment); "
                    "empty = the directory holding the start-up bundle",
    )
    bundle_key: SecretStr | None = Field(
        None, description="HMAC key: when set, only bundles signed with it (manifest.sig, written by a job run "
                          "with DISTILL_BUNDLE_KEY) are served or reloaded",
    )
    drain_seconds: float = Field(
        0.0, ge=0.0, le=300.0,
        description="after SIGTERM: keep serving with /readyz 503 this long before closing the listener",
    )
    graceful_timeout_seconds: int = Field(  # int: uvicorn's timeout_graceful_shutdown is one
        10, ge=1, le=600,
        description="after the drain: wait this long for in-flight requests, then cancel them and exit",
    )
    # HTTP limits (serve/http_limits.py): what a client may hold of the one event loop.
    max_header_bytes: int = Field(
        32 << 10, ge=1024, le=1 << 20,
        description="request line + headers of one request; more -> 431 and the connection closes",
    )
    header_timeout_seconds: float = Field(
        5.0, gt=0.0, le=300.0, allow_inf_nan=False,
        description="a request head must arrive within this long of the connection opening (or of its first "
                    "byte on a kept-alive connection); else 408 / close (slowloris)",
    )
    body_timeout_seconds: float = Field(
        10.0, gt=0.0, le=600.0, allow_inf_nan=False,
        description="a request body must arrive within this long of its head; else 408 and close",
    )
    keep_alive_seconds: int = Field(  # int: uvicorn's timeout_keep_alive is one
        5, ge=1, le=300,
        description="an idle kept-alive connection closes after this long without a new request",
    )
    max_connections: int = Field(
        1000, ge=2, le=1_000_000,
        description="open connections; a new one over the cap closes the oldest idle one (503 when none is idle)",
    )
    max_in_flight: int = Field(
        64, ge=1, le=100_000,
        description="requests being handled at once (body received, answer pending); more -> 503 at once "
                    "(/livez, /readyz and /metrics neither counted nor refused)",
    )
    access_log: bool = Field(
        True, description="one access line per request (id, status, latency, model version); /livez, /readyz "
                          "and /metrics only when they fail",
    )
    log_format: Literal["json", "text"] = Field("json", description="every log line as a JSON object, or as text")
    # Graph writes (POST /v1/edges, serve/writes.py): off unless a log path is given.
    edge_log: Path | None = Field(
        None, description="append-only log of graph writes (POST /v1/edges), fsynced before each answer and "
                          "replayed at start; bound to the bundle's digest. Unset = writes disabled (404)",
    )
    write_token: SecretStr | None = Field(
        None, min_length=16, description="bearer token for POST /v1/edges; unset = the admin token is the write token",
    )
    edges_monotonic: bool = Field(False, description="refuse (409) an edge whose time is before the last logged one")
    edges_undirected: bool = Field(
        True, description="default of a write's `undirected`: log each edge in both directions (how bundles of "
                          "undirected graphs store them)",
    )
    edge_weight_min: float | None = Field(None, allow_inf_nan=False, description="smallest edge weight / rating")
    edge_weight_max: float | None = Field(None, allow_inf_nan=False, description="largest edge weight / rating")
    max_write_items: int = Field(1000, ge=1, le=100_000, description="nodes + edges in one POST /v1/edges")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _EnvWithoutServiceLinks(settings_cls), dotenv_settings, file_secret_settings

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_env(cls, data: object) -> object:
        # pydantic-settings' extra="forbid" only covers init kwargs and dotenv files: an unknown
        # SERVE_* environment variable would otherwise be dropped without a word. Service links are
        # not typos: they are skipped by the env source and logged by `python -m serve`.
        known = {f"SERVE_{name}".upper() for name in cls.model_fields}
        links = set(service_links(os.environ))
        unknown = sorted(k for k in os.environ
                         if k.upper().startswith("SERVE_") and k.upper() not in known and k not in links)
        if unknown:
            raise ValueError(f"unknown environment variables {unknown}; known: {sorted(known)}")
        return data

    @model_validator(mode="after")
    def _token_has_entropy(self) -> Settings:
        # min_length alone let 16 spaces (or "aaaa...") guard the admin endpoint.
        if self.admin_token is not None:
            _check_entropy(self.admin_token, "admin_token")
        return self

    @model_validator(mode="after")
    def _writes_need_a_token(self) -> Settings:
        if self.write_token is not None:
            _check_entropy(self.write_token, "write_token")
        if self.edge_log is not None and self.write_token is None and self.admin_token is None:
            raise ValueError("edge_log needs write_token (or admin_token): graph writes are never open to anyone")
        if None not in (self.edge_weight_min, self.edge_weight_max) \
                and self.edge_weight_min > self.edge_weight_max:  # type: ignore[operator]
            raise ValueError("edge_weight_min must not exceed edge_weight_max")
        return self

    @model_validator(mode="after")
    def _waiting_needs_reload(self) -> Settings:
        # Waiting ends only with POST /admin/reload: without the endpoint, a refused bundle would
        # leave a process that is up and never ready, the failure fail-fast exists to prevent.
        if self.wait_for_bundle and self.admin_token is None:
            raise ValueError("wait_for_bundle needs admin_token: only POST /admin/reload can load a bundle after a "
                             "refused start")
        return self

    @model_validator(mode="after")
    def _key_is_a_key(self) -> Settings:
        if self.bundle_key is not None:
            check_key(self.bundle_key.get_secret_value().encode(), "bundle_key")
        return self

    @property
    def key(self) -> bytes | None:
        """The bundle signing key as bytes, or None when bundles are not required to be signed."""
        return None if self.bundle_key is None else self.bundle_key.get_secret_value().encode()

    @property
    def allowed_roots(self) -> list[Path]:
        """Resolved directories a reload may read from. Default: the start-up bundle's parent, or
        the bundle itself when that parent is the filesystem root (the image's `--bundle /bundle`
        would otherwise allow every path)."""
        if self.reload_roots:
            return [root.resolve() for root in self.reload_roots]
        parent = self.bundle.resolve().parent
        return [self.bundle.resolve() if parent == parent.parent else parent]

    @model_validator(mode="after")
    def _threads_fit_cores(self) -> Settings:
        cores = available_cores()
        # One uvicorn worker (the cache is built once per process), so workers x threads = threads.
        if self.intra_op_threads > cores:
            raise ValueError(
                f"intra_op_threads={self.intra_op_threads} exceeds the {cores} available cores "
                "(1 worker x threads must fit the cores; oversubscribed threads only add latency)"
            )
        return self

    @model_validator(mode="after")
    def _in_flight_fits_connections(self) -> Settings:
        # Each connection carries at most one request in progress (pipelined ones wait), so a cap set above
        # max_connections could never be reached: a misconfiguration. (The default 64 with a smaller
        # max_connections is left alone: the connection cap then binds first.)
        if "max_in_flight" in self.model_fields_set and self.max_in_flight > self.max_connections:
            raise ValueError(f"max_in_flight={self.max_in_flight} exceeds max_connections={self.max_connections}")
        return self

    @property
    def cache_budget_bytes(self) -> int:
        return int(self.cache_budget_mb * (1 << 20))
