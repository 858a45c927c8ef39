"""Service settings: every field is a `SERVE_*` environment variable (or a CLI flag of `python -m serve`).

Unknown `SERVE_*` variables are rejected rather than ignored, so a typo such as `SERVE_MAX_BACH`
fails at start-up instead of silently leaving the default in place.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bundle.signing import check_key

MIN_TOKEN_DISTINCT = 8


def available_cores() -> int:
    """Cores this process may run on (respects `taskset` / cgroup cpusets, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no sched_getaffinity
        return os.cpu_count() or 1


class Settings(BaseSettings):
    """Validated configuration of one service process."""

    model_config = SettingsConfigDict(env_prefix="SERVE_", extra="forbid", frozen=True)

    bundle: Path = Field(description="bundle directory written by `distill run`")
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

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_env(cls, data: object) -> object:
        # pydantic-settings' extra="forbid" only covers init kwargs and dotenv files: an unknown
        # SERVE_* environment variable would otherwise be dropped without a word.
        known = {f"SERVE_{name}".upper() for name in cls.model_fields}
        unknown = sorted(k for k in os.environ if k.upper().startswith("SERVE_") and k.upper() not in known)
        if unknown:
            raise ValueError(f"unknown environment variables {unknown}; known: {sorted(known)}")
        return data

    @model_validator(mode="after")
    def _token_has_entropy(self) -> Settings:
        # min_length alone let 16 spaces (or "aaaa...") guard the admin endpoint.
        if self.admin_token is not None:
            token = self.admin_token.get_secret_value()
            if any(c.isspace() for c in token) or len(set(token)) < MIN_TOKEN_DISTINCT:
                raise ValueError(f"admin_token must have no whitespace and at least {MIN_TOKEN_DISTINCT} distinct "
                                 "characters; generate one with `python -c 'import secrets; "
                                 "print(secrets.token_urlsafe(32))'`")
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
        """Resolved directories a reload may read from (default: the start-up bundle's parent)."""
        roots = self.reload_roots or [self.bundle.parent]
        return [root.resolve() for root in roots]

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
