"""One settings object per process, read from the environment once, at the edge.

Every variable is `TIDINGS_<FIELD>` (plus the conventional `REDIS_URL`); an empty value means
unset. An unknown `TIDINGS_*` variable is an error, not a silent no-op: a typo in a deployment
should stop it from starting.
`TIDINGS_TEST_*` is reserved for the test suite and ignored here.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .keys import CLUSTER_BUCKETS, Keys

__all__ = ["ROLES", "Settings", "parse_auth_tokens", "parse_duration"]

_PREFIX = "TIDINGS_"
_RESERVED_PREFIXES = ("TIDINGS_TEST_",)

_DURATION_UNITS = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
_DURATION = re.compile(r"(?:\d+[wdhms])+|\d+")
_DURATION_PART = re.compile(r"(\d+)([wdhms])")


def parse_duration(value: str | int) -> int:
    """Seconds from `604800`, `7d`, `12h`, `90m`, `45s` or `1d12h`. ValueError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a duration is not negative")
        return value
    text = str(value).strip().lower()
    if not _DURATION.fullmatch(text):
        raise ValueError("a duration is seconds or a number with a unit: 7d, 12h, 30m, 45s")
    if text.isdigit():
        return int(text)
    return sum(int(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(text))


ROLES = ("admin", "viewer")
_MIN_TOKEN = 16


def parse_auth_tokens(value: str | None) -> list[tuple[str, str]]:
    """`admin:T1,viewer:T2` → [("admin", "T1"), ("viewer", "T2")]. ValueError naming the
    position of a bad pair, never its token."""
    pairs: list[tuple[str, str]] = []
    for n, item in enumerate((value or "").split(","), 1):
        item = item.strip()
        if not item:
            continue
        role, sep, token = item.partition(":")
        if not sep or role not in ROLES:
            raise ValueError(f"pair {n} must be `admin:TOKEN` or `viewer:TOKEN`")
        if len(token) < _MIN_TOKEN or not token.isascii() or not token.isprintable():
            raise ValueError(
                f"pair {n}: a token is at least {_MIN_TOKEN} printable ASCII characters"
            )
        if " " in token:
            raise ValueError(f"pair {n}: a token has no spaces")
        pairs.append((role, token))
    return pairs


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    redis_url: str | None = Field(
        None, description="Redis/Valkey to use; unset: `tidings up` starts an embedded Valkey."
    )
    redis_cluster: bool = Field(
        False,
        description="`REDIS_URL` is one node of a Redis/Valkey Cluster: the keyspace is "
        "bucketed so every script stays in one slot, and events go over sharded pub/sub.",
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
    retention: int = Field(
        604_800,
        ge=0,
        description="How long a finished run's keys stay in Redis: seconds, or `7d`, `12h`, "
        "`30m`; 0 keeps them forever.",
    )
    storage_full_wait_s: float = Field(
        10.0,
        ge=0,
        description="How long a running run retries a write Redis refuses as out of memory "
        "before it fails.",
    )
    valkey_maxmemory: str = Field(
        "512mb",
        pattern=r"(?i)^(0|[1-9][0-9]*(b|k|kb|m|mb|g|gb)?)$",
        description="Memory cap of the embedded Valkey (`maxmemory`; 0 = none). Past it, "
        "writes are refused, never evicted.",
    )
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
    max_header_bytes: int = Field(
        65_536,
        ge=4_096,
        description="Largest request line and headers; a bigger head is answered 431 and closed.",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A connection whose request head is not complete in this time is closed "
        "(408 if part of a request came).",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A request body that brings no bytes for this long is cut off (408).",
    )
    replay_page: int = Field(500, ge=1, le=10_000, description="XRANGE page size when replaying.")
    max_body_bytes: int = Field(1_048_576, ge=1_024, description="Largest accepted request body.")
    max_input_bytes: int = Field(
        65_536, ge=256, description="Largest run input or signal payload, as compact JSON."
    )
    max_event_bytes: int = Field(
        262_144,
        ge=4_096,
        description="Largest event in a run's log; bigger `data` is replaced by a marker.",
    )
    page_max_bytes: int = Field(
        1_048_576,
        ge=16_384,
        description="Bytes of events per replay or JSON page (a page holds at least one event).",
    )

    auth_tokens: str | None = Field(
        None,
        description="Comma-separated `role:token` pairs (roles `admin`, `viewer`); "
        "unset: open, loopback only.",
    )
    secret: str | None = Field(
        None,
        min_length=16,
        description="Key signing session cookies and share tokens; unset: derived from the tokens.",
    )
    insecure: bool = Field(
        False, description="Serve without tokens on a non-loopback address (open to anyone)."
    )
    allowed_hosts: str = Field(
        "localhost,127.0.0.1,::1",
        description="Host names the gateway answers to (comma-separated; `*` for any).",
    )
    cors_origins: str = Field(
        "", description="Origins allowed to call the API from a browser (comma-separated)."
    )
    trusted_proxies: str = Field(
        "",
        description="Addresses or CIDRs whose `X-Forwarded-For`/`-Proto` are believed.",
    )
    session_ttl_s: int = Field(43_200, ge=60, description="Lifetime of a dashboard session cookie.")
    share_ttl_s: int = Field(
        86_400, ge=60, description="Default and largest lifetime of a run's share token."
    )
    token: str | None = Field(None, description="Bearer token the CLI sends to the gateway.")

    runs_per_minute: int = Field(
        120, ge=1, description="Runs one client may start in any 60 s (429 past it)."
    )
    active_runs_per_client: int = Field(
        32, ge=1, description="Unfinished runs one client may have started (429 past it)."
    )
    viewers_per_client: int = Field(
        64,
        ge=1,
        description="Event streams one client may hold open at once, over all gateways (429 "
        "past it).",
    )
    viewer_lease_s: float = Field(
        15.0,
        ge=0.5,
        description="A viewer's lease in Redis; its gateway renews it every third of this.",
    )
    orphan_grace_s: float = Field(
        30.0,
        ge=0.1,
        description="A run started by `/monty/stream` is stopped this long after its last "
        "viewer left.",
    )
    stream_run_max_s: float = Field(
        3_600.0, ge=1, description="Longest a run started by `/monty/stream` may go on."
    )
    chat_idle_s: float = Field(
        900.0,
        ge=1,
        le=7 * 86_400,
        description="A chat started by `POST /chat` ends after this long without a message.",
    )

    workflows: str = Field(
        "tidings.services.workflows",
        description="Comma-separated modules a worker imports for its workflows, besides the "
        "`tidings.workflows` entry points; `tidings worker --workflows` overrides it.",
    )
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
    llm_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Model endpoint: longest wait to connect or for the next bytes of a reply.",
    )

    @field_validator("retention", mode="before")
    @classmethod
    def _parse_retention(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("auth_tokens")
    @classmethod
    def _check_tokens(cls, value: str | None) -> str | None:
        parse_auth_tokens(value)
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: str) -> str:
        for n, item in enumerate(value.split(","), 1):
            if item.strip():
                try:
                    ipaddress.ip_network(item.strip(), strict=False)
                except ValueError:
                    raise ValueError(f"entry {n} is not an address or a CIDR") from None
        return value

    def keys(self) -> Keys:
        """The namespace's key names: a cluster's keyspace is bucketed (`Keys`)."""
        return Keys(self.namespace, buckets=CLUSTER_BUCKETS if self.redis_cluster else 0)

    @property
    def auth_pairs(self) -> list[tuple[str, str]]:
        """The configured (role, token) pairs; empty when the gateway runs open."""
        return parse_auth_tokens(self.auth_tokens)

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
            elif raw != "":  # empty means unset (`VAR: "${VAR:-}"` in compose files)
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
            # Never echo the values: some are secrets (tokens, keys, URLs with passwords).
            problems = "; ".join(
                f"{_PREFIX + '.'.join(map(str, e['loc'])).upper() or 'settings'}: {e['msg']}"
                for e in exc.errors(include_input=False, include_url=False)
            )
            raise ValueError(f"invalid settings: {problems}") from None

    @classmethod
    def env_help(cls) -> list[tuple[str, str, str]]:
        """(variable, default, description) for every setting: the README's table and `--help`."""
        rows = []
        for name, info in cls.model_fields.items():
            var = "REDIS_URL" if name == "redis_url" else _PREFIX + name.upper()
            default = "" if info.default is None else str(info.default)
            rows.append((var, default, info.description or ""))
        return rows
