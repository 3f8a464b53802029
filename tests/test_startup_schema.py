"""A gateway or a worker refuses to start on a keyspace written by another schema version.

Real processes, as deployed (`python -m tidings.services.gateway`,
`python -m tidings.services.worker`), against a
namespace whose `<ns>:schema` holds a version this code does not speak: each must exit non-zero
with a message naming the problem and what to do (an older keyspace: `tidings migrate`; a newer
one: newer code), and must not have served anything first.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from tests.engine_helpers import TEST_WORKFLOWS
from tidings.embedded import free_port
from tidings.jobs import workers_listening
from tidings.keys import SCHEMA_VERSION, Keys

_NEWER = SCHEMA_VERSION + 98
_OLDER = SCHEMA_VERSION - 1
_ADVICE = {_NEWER: "written by a newer Tidings", _OLDER: "run `tidings migrate`"}
_WRONG = pytest.mark.parametrize("found", [_NEWER, _OLDER], ids=["newer", "older"])
_WAIT_S = 30.0


async def _refused(
    proc: subprocess.Popen[bytes], started: Callable[[], Any], processes: Any
) -> str:
    """Wait until `proc` exits (its output) or `started()` says it is serving (a failure)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _WAIT_S
    while proc.poll() is None:
        assert not await started(), f"started on a foreign keyspace:\n{processes.output(proc)}"
        assert loop.time() < deadline, f"neither refused nor started:\n{processes.output(proc)}"
        await asyncio.sleep(0.05)
    output: str = processes.output(proc)
    assert proc.returncode != 0, output
    return output


def _names_the_problem(output: str, keys: Keys, found: int) -> None:
    assert f"namespace {keys.ns!r} holds schema {found}" in output, output
    assert f"this code speaks {SCHEMA_VERSION}" in output, output
    assert _ADVICE[found] in output, output
    other = _ADVICE[_OLDER if found == _NEWER else _NEWER]
    assert other not in output, output


@_WRONG
async def test_a_gateway_refuses_to_start_on_a_keyspace_of_another_schema(
    redis: Redis,
    keys: Keys,
    processes: Any,
    settings_env: Callable[..., dict[str, str]],
    found: int,
) -> None:
    await redis.set(keys.schema, found)
    port = free_port()
    proc = processes.python("tidings.services.gateway", env=settings_env(port=port), name="gateway")

    async def ready() -> bool:
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                resp = await client.get(f"http://127.0.0.1:{port}/readyz")
        except httpx.TransportError:
            return False
        return resp.status_code == 200

    _names_the_problem(await _refused(proc, ready, processes), keys, found)
    assert int(await redis.get(keys.schema) or 0) == found  # left as found


@_WRONG
async def test_a_worker_refuses_to_start_on_a_keyspace_of_another_schema(
    redis: Redis,
    keys: Keys,
    processes: Any,
    settings_env: Callable[..., dict[str, str]],
    found: int,
) -> None:
    await redis.set(keys.schema, found)
    env = {**settings_env(), **TEST_WORKFLOWS}
    proc = processes.python("tidings.services.worker", env=env, name="worker")

    async def listening() -> bool:
        return await workers_listening(redis, keys) > 0

    _names_the_problem(await _refused(proc, listening, processes), keys, found)
    assert int(await redis.get(keys.schema) or 0) == found


async def test_both_start_on_a_keyspace_of_their_own_schema(
    redis: Redis, keys: Keys, gateway_factory: Any, workers: Any
) -> None:
    # The same start-up as above, with the version this code speaks: both serve.
    await redis.set(keys.schema, SCHEMA_VERSION)
    gateway = await gateway_factory()
    await workers(1)
    assert gateway.proc.poll() is None
