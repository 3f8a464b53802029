"""Fixtures shared by every test.

Redis: one embedded Valkey per session (or `TIDINGS_TEST_REDIS_URL`). Each test gets its own
namespace, so tests never see each other's keys and nothing is ever flushed wholesale; the
namespace's keys are deleted when the test ends.

`TIDINGS_TEST_CLUSTER=1` runs the same fixtures on a local Valkey Cluster instead (three
primaries with a replica each, of the embedded binary, one per session): settings, keys,
clients and the processes tests start are then in cluster mode (`make test` runs the
end-to-end core so, see Makefile).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis, RedisCluster

from tidings.bus import Bus
from tidings.catalog import RegistryWorkflows
from tidings.control import Control
from tidings.embedded import EmbeddedValkey
from tidings.embedded_cluster import EmbeddedCluster
from tidings.keys import Keys
from tidings.redis import connect
from tidings.runs import RunStore
from tidings.sdk import registry
from tidings.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


CLUSTER = os.environ.get("TIDINGS_TEST_CLUSTER", "") not in ("", "0")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if CLUSTER:
        with (
            tempfile.TemporaryDirectory(prefix="tidings-test-cluster-") as tmp,
            EmbeddedCluster(tmp, primaries=3, replicas=1) as cluster,
        ):
            yield cluster.url
        return
    url = os.environ.get("TIDINGS_TEST_REDIS_URL")
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="tidings-test-valkey-") as tmp:
        server = EmbeddedValkey(tmp, persistent=False)
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(redis_url: str, namespace: str) -> Settings:
    return Settings(redis_url=redis_url, namespace=namespace, redis_cluster=CLUSTER)


@pytest.fixture
def keys(settings: Settings) -> Keys:
    return settings.keys()


@pytest.fixture
async def redis(redis_url: str, namespace: str) -> AsyncIterator[Redis]:
    client = connect(redis_url, cluster=CLUSTER)
    try:
        yield client
    finally:
        await delete_namespace(client, namespace)
        await client.aclose()


async def delete_namespace(client: Redis, namespace: str) -> None:
    """Delete every key of `namespace`, on each primary of a cluster."""
    nodes: list[Redis] = []
    if isinstance(client, RedisCluster):
        nodes = [Redis(host=node.host, port=node.port) for node in client.get_primaries()]
    else:
        nodes = [client]
    try:
        for node in nodes:
            async for key in node.scan_iter(match=f"{namespace}:*", count=1000):
                await node.delete(key)
    finally:
        for node in nodes:
            if node is not client:
                await node.aclose()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    """A Valkey Cluster of three primaries for a module's tests (its own, whatever the session
    runs on). Modules that need replicas or damage it override this fixture."""
    with EmbeddedCluster(tmp_path_factory.mktemp("cluster"), primaries=3, replicas=0) as formed:
        yield formed


@pytest.fixture
def cluster_settings(cluster: EmbeddedCluster) -> Settings:
    """Settings of a fresh namespace on `cluster`, in cluster mode."""
    namespace = f"c{uuid.uuid4().hex[:10]}"
    return Settings(redis_url=cluster.url, namespace=namespace, redis_cluster=True)


@pytest.fixture
def own_valkey(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    """A Valkey of the test's own, for tests that fill, restart or reshape a whole server.
    Tests that need it to persist across a restart override this fixture."""
    server = EmbeddedValkey(tmp_path / "valkey", persistent=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def own_redis(own_valkey: EmbeddedValkey) -> AsyncIterator[Redis]:
    client = connect(own_valkey.url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def bus(redis: Redis, keys: Keys) -> Bus:
    return Bus(redis, keys)


@pytest.fixture
def store(redis: Redis, keys: Keys) -> RunStore:
    return RunStore(redis, keys)


class Processes:
    """Child processes a test starts; the live ones are ended by their own pid at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        name: str = "proc",
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}-{len(self.procs)}.log", "wb")  # noqa: SIM115
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with log:  # the child holds its own copy of the descriptor
            proc = subprocess.Popen(
                args, env=full_env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd or ROOT
            )
        proc.log_path = log.name  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def python(
        self, module: str, *args: str, env: dict[str, str] | None = None, name: str = "proc"
    ) -> subprocess.Popen[bytes]:
        return self.start([sys.executable, "-m", module, *args], env=env, name=name)

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        return Path(proc.log_path).read_text(errors="replace")  # type: ignore[attr-defined]

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture
def settings_env(settings: Settings) -> Callable[..., dict[str, str]]:
    """Environment for a child process that should use this test's Redis and namespace."""

    def make(**extra: object) -> dict[str, str]:
        env = {"REDIS_URL": settings.redis_url or "", "TIDINGS_NAMESPACE": settings.namespace}
        if settings.redis_cluster:
            env["TIDINGS_REDIS_CLUSTER"] = "true"
        env.update({f"TIDINGS_{k.upper()}": str(v) for k, v in extra.items()})
        return env

    return make


@pytest.fixture
def control(redis: Redis, keys: Keys, bus: Bus, settings: Settings) -> Control:
    """Validates with the workflows registered in this process (a test imports the modules it
    starts runs of), so a run can be started before any worker has published the catalog."""
    return Control(redis, keys, bus, settings, RegistryWorkflows(registry))


@pytest.fixture
def workers(
    processes: Processes, settings_env: Callable[..., dict[str, str]], redis: Redis, keys: Keys
) -> Callable[..., Any]:
    """`await workers(n, **settings)`: n worker processes on this test's namespace, listening."""
    from tests.engine_helpers import FAST_LEASES, start_workers

    async def start(n: int = 1, **settings: object) -> Any:
        return await start_workers(
            processes, settings_env, redis, keys, n, **{**FAST_LEASES, **settings}
        )

    return start


@pytest.fixture
def gateway_factory(processes: Processes, settings_env: Callable[..., dict[str, str]]) -> Any:
    """`await gateway_factory(**settings)`: a gateway process on a free port, once ready."""
    from tests.test_gateway_support import start_gateway

    return partial(start_gateway, processes, settings_env)
