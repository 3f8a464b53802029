"""One settings object per process, read from the environment once, at the edge.

Every variable is `TIDINGS_<FIELD>` (plus the conventional `REDIS_URL`). An unknown `TIDINGS_*`
variable is an error, not a silent no-op: a typo in a deployment should stop it from starting.
`TIDINGS_TEST_*` is reserved for the test suite and ignored here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["Settings"]

_PREFIX = "TIDINGS_"
_RESERVED_PREFIXES = ("TIDINGS_TEST_",)


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    redis_url: str | None = Field(
        None, description="Redis/Valkey to use; unset: `tidings up` starts an embedded Valkey."
    )
    namespace: str = Field(
        "tidings", pattern=r"^[A-Za-z0-9_.-]+$", description="Prefix of every key and channel."
    )
    data_dir: Path = Field(Path(".tidings"), description="Embedded Valkey's data directory.")
    host: str = Field("127.0.0.1", description="Gateway bind address.")
    port: int = Field(8000, ge=0, le=65535, description="Gateway port.")
    gateway_workers: int = Field(
        1, ge=1, le=64, description="Gateway processes sharing the port (SO_REUSEPORT)."
    )
    log_level: str = Field(
        "info",
        pattern=r"^(debug|info|warning|error)$",
        description="debug, info, warning or error.",
    )

    events_maxlen: int = Field(10_000, ge=10, description="Approximate length cap of a run's log.")
    sse_heartbeat_s: float = Field(15.0, gt=0, description="Comment heartbeat interval.")
    sse_retry_ms: int = Field(2_000, ge=0, description="`retry:` hint sent to EventSource.")
    viewer_buffer: int = Field(
        1_024, ge=1, description="Events buffered per viewer before it catches up from the log."
    )
    viewer_buffer_bytes: int = Field(
        1_048_576,
        ge=1_024,
        description="Bytes of events buffered per viewer before it catches up from the log.",
    )
    stream_max_runs: int = Field(
        64, ge=1, le=1_000, description="Runs one multiplexed stream (`/api/streams`) may carry."
    )
    send_timeout_s: float = Field(
        30.0, gt=0, description="A viewer that accepts no bytes for this long is disconnected."
    )
    replay_page: int = Field(500, ge=1, le=10_000, description="XRANGE page size when replaying.")
    max_body_bytes: int = Field(1_048_576, ge=1_024, description="Largest accepted request body.")

    lease_ttl_ms: int = Field(3_000, ge=200, description="A running run's heartbeat lease.")
    lease_refresh_ms: int = Field(1_000, ge=50, description="How often a worker renews its lease.")
    worker_max_jobs: int = Field(64, ge=1, description="Concurrent jobs per worker process.")
    worker_poll_s: float = Field(
        1.0, gt=0, description="Fallback queue poll; workers are woken by pub/sub first."
    )

    llm_provider: str = Field(
        "simulated",
        pattern=r"^(simulated|openai)$",
        description="`simulated` (offline, deterministic) or `openai` (any compatible endpoint).",
    )
    llm_base_url: str | None = Field(None, description="OpenAI-compatible endpoint (…/v1).")
    llm_model: str = Field("gpt-4o-mini", description="Model name sent to the endpoint.")
    llm_api_key: str | None = Field(
        None, description="Bearer key for the endpoint, if it needs one."
    )
    llm_token_delay_ms: float = Field(
        18.0, ge=0, description="Simulated model: mean delay between tokens."
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read settings from `env` (default `os.environ`); `overrides` win over the environment."""
        env = os.environ if env is None else env
        fields = cls.model_fields
        values: dict[str, Any] = {}
        unknown: list[str] = []
        for name, raw in env.items():
            if not name.startswith(_PREFIX) or name.startswith(_RESERVED_PREFIXES):
                continue
            field = name[len(_PREFIX) :].lower()
            if field not in fields:
                unknown.append(name)
            else:
                values[field] = raw
        if unknown:
            known = ", ".join(_PREFIX + f.upper() for f in fields)
            raise ValueError(f"unknown setting(s) {', '.join(sorted(unknown))}; known: {known}")
        if "redis_url" not in values and env.get("REDIS_URL"):
            values["redis_url"] = env["REDIS_URL"]
        values.update(overrides)
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ValueError(f"invalid settings: {exc}") from None

    @classmethod
    def env_help(cls) -> list[tuple[str, str, str]]:
        """(variable, default, description) for every setting: the README's table and `--help`."""
        rows = []
        for name, info in cls.model_fields.items():
            var = "REDIS_URL" if name == "redis_url" else _PREFIX + name.upper()
            default = "" if info.default is None else str(info.default)
            rows.append((var, default, info.description or ""))
        return rows
