from __future__ import annotations

from pathlib import Path

import pytest

from tidings.settings import Settings


def test_defaults_without_environment() -> None:
    s = Settings.from_env({})
    assert s.redis_url is None
    assert s.namespace == "tidings"
    assert s.events_maxlen == 10_000
    assert s.data_dir == Path(".tidings")


def test_reads_prefixed_variables_and_redis_url() -> None:
    s = Settings.from_env(
        {"REDIS_URL": "redis://h:1/0", "TIDINGS_PORT": "9001", "TIDINGS_SSE_HEARTBEAT_S": "2.5"}
    )
    assert (s.redis_url, s.port, s.sse_heartbeat_s) == ("redis://h:1/0", 9001, 2.5)


def test_tidings_redis_url_wins_over_redis_url() -> None:
    s = Settings.from_env({"REDIS_URL": "redis://a", "TIDINGS_REDIS_URL": "redis://b"})
    assert s.redis_url == "redis://b"


def test_unknown_setting_fails_loudly_and_names_it() -> None:
    with pytest.raises(ValueError, match="TIDINGS_PROT"):
        Settings.from_env({"TIDINGS_PROT": "9000"})


def test_test_variables_are_reserved_not_rejected() -> None:
    assert Settings.from_env({"TIDINGS_TEST_REDIS_URL": "redis://x"}).redis_url is None


@pytest.mark.parametrize(
    "env",
    [{"TIDINGS_PORT": "eighty"}, {"TIDINGS_PORT": "70000"}, {"TIDINGS_NAMESPACE": "a b"}],
)
def test_malformed_values_fail(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="invalid settings"):
        Settings.from_env(env)


def test_env_help_lists_every_field() -> None:
    names = [row[0] for row in Settings.env_help()]
    assert "REDIS_URL" in names and "TIDINGS_EVENTS_MAXLEN" in names
    assert len(names) == len(Settings.model_fields)


def test_an_empty_variable_means_unset() -> None:
    s = Settings.from_env({"TIDINGS_SECRET": "", "TIDINGS_PORT": "", "TIDINGS_AUTH_TOKENS": ""})
    assert (s.secret, s.port, s.auth_pairs) == (None, 8000, [])


@pytest.mark.parametrize(
    "tokens",
    ["admin", "root:0123456789abcdef", "admin:short", "viewer:0123456789 abcdef"],
)
def test_malformed_auth_tokens_fail_without_echoing_them(tokens: str) -> None:
    with pytest.raises(ValueError, match="TIDINGS_AUTH_TOKENS") as info:
        Settings.from_env({"TIDINGS_AUTH_TOKENS": tokens})
    assert tokens.partition(":")[2] not in str(info.value) or ":" not in tokens


def test_auth_tokens_parse_into_roles() -> None:
    s = Settings.from_env(
        {"TIDINGS_AUTH_TOKENS": "admin:0123456789abcdef, viewer:fedcba9876543210"}
    )
    assert s.auth_pairs == [("admin", "0123456789abcdef"), ("viewer", "fedcba9876543210")]


def test_trusted_proxies_must_be_addresses_or_cidrs() -> None:
    ok = Settings.from_env({"TIDINGS_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8,,::1"})
    assert ok.trusted_proxies.startswith("127.0.0.1")
    with pytest.raises(ValueError, match=r"TIDINGS_TRUSTED_PROXIES: .*entry 2"):
        Settings.from_env({"TIDINGS_TRUSTED_PROXIES": "127.0.0.1,nginx"})
