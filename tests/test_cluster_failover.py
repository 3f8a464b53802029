"""Failover on a real local Valkey Cluster (3 primaries, 3 replicas) while a run streams.

- The primary that owns a streaming run's slot is killed: its replica is promoted, the gateway
  subscribes again on the new owner, and every viewer ends with exactly the run's log: nothing a
  viewer can see is lost or shown twice.
- A run executed by a worker while its primary fails over: the worker carries on (or is fenced
  and its run recovered, as after a crash), the run completes, and its viewers end with exactly
  its log.
- Replication is asynchronous, so a promoted replica may lack the last events a viewer already
  saw. That case is forced (the replica is cut off from its primary before the events are
  written): each viewer then gets an explicit `resync` and, after it, exactly the promoted log.

Each test forms its own cluster: a failover leaves the cluster one replica short.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import RedisError

from tests.conftest import Processes
from tests.engine_helpers import FAST_LEASES, start_workers
from tests.test_gateway_support import GatewayFactory, RawStream, SSEMessage, wait_for
from tidings.bus import Bus
from tidings.embedded_cluster import EmbeddedCluster, EmbeddedNode
from tidings.events import Event, EventType
from tidings.redis import connect
from tidings.runs import RunStore
from tidings.settings import Settings
from tidings.slots import key_slot

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(tmp_path / "cluster", primaries=3, replicas=1) as formed:
        yield formed


async def _publish_retrying(bus: Bus, run_id: str, type: EventType, message: str) -> Event:
    """Publish, retrying through the failover (the client finds the new owner by itself)."""
    for _ in range(400):
        try:
            return await bus.publish(run_id, type, message)
        except (RedisError, OSError):
            await asyncio.sleep(0.05)
    raise AssertionError(f"could not publish {message!r} within 20 s")


def _view(messages: list[SSEMessage]) -> tuple[list[int], list[dict[str, Any]]]:
    """What a viewer shows in the end: the seqs after its last `resync` (a resync replaces
    everything shown before it), and the resyncs it got."""
    shown: list[int] = []
    resyncs: list[dict[str, Any]] = []
    for msg in messages:
        if msg.event == "resync":
            shown = []
            resyncs.append(json.loads(msg.data))
        elif msg.data:
            body: dict[str, Any] = json.loads(msg.data)
            assert body["id"] == msg.id, (body, msg)
            shown.append(body["seq"])
    return shown, resyncs


def _offset(node: EmbeddedNode) -> int:
    """How far into its shard's replication stream `node` is (a primary: what it wrote)."""
    info = dict(
        line.split(":", 1) for line in node.call("INFO", "replication").splitlines() if ":" in line
    )
    return int(info.get("slave_repl_offset") or info["master_repl_offset"])


async def _streaming_run(
    cluster: EmbeddedCluster, gateway_factory: GatewayFactory, namespace: str
) -> tuple[Any, Bus, str, EmbeddedNode, list[RawStream]]:
    settings = Settings(redis_url=cluster.url, namespace=namespace, redis_cluster=True)
    keys = settings.keys()
    gw = await gateway_factory(redis_url=cluster.url, redis_cluster=True)
    redis = connect(cluster.url, cluster=True)
    bus, store = Bus(redis, keys), RunStore(redis, keys)
    run = await store.create("demo", None)
    await bus.publish(run.run_id, EventType.WORKFLOW_STARTED, "go")
    owner = cluster.node_for_slot(key_slot(keys.run(run.run_id)))
    viewers = [await gw.stream(f"/api/runs/{run.run_id}/events") for _ in range(3)]
    return redis, bus, run.run_id, owner, viewers


async def test_failover_of_the_owning_primary_loses_nothing_a_viewer_sees(
    cluster: EmbeddedCluster, gateway_factory: GatewayFactory, namespace: str
) -> None:
    redis, bus, run_id, owner, viewers = await _streaming_run(cluster, gateway_factory, namespace)
    try:
        readers = [asyncio.create_task(v.read_to_end()) for v in viewers]
        published = 0

        async def publisher(n: int) -> None:
            nonlocal published
            for i in range(n):
                await _publish_retrying(bus, run_id, EventType.LOG, f"m{i}")
                published += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(publisher(300))
        await wait_for(lambda: published >= 80, "events before the failover")
        promoted = await asyncio.to_thread(cluster.failover, owner)
        await task
        await _publish_retrying(bus, run_id, EventType.WORKFLOW_COMPLETED, "done")

        received = await asyncio.wait_for(asyncio.gather(*readers), timeout=60)
        logged = [e.seq for e in await bus.events(run_id, limit=10_000)]
        assert logged == list(range(1, len(logged) + 1)) and len(logged) >= 200
        assert cluster.node_for_slot(key_slot(bus.keys.run(run_id))) is promoted
        for messages in received:
            shown, _ = _view(messages)
            assert shown == logged
    finally:
        for viewer in viewers:
            viewer.close()
        await redis.aclose()


async def test_a_viewer_ahead_of_the_promoted_log_gets_a_resync_never_a_silent_gap(
    cluster: EmbeddedCluster, gateway_factory: GatewayFactory, namespace: str
) -> None:
    redis, bus, run_id, owner, viewers = await _streaming_run(cluster, gateway_factory, namespace)
    (replica,) = cluster.replicas_of(owner)
    assert replica.pid is not None
    try:
        readers = [asyncio.create_task(v.read_to_end()) for v in viewers]
        for i in range(20):
            await bus.publish(run_id, EventType.LOG, f"replicated {i}")
        await wait_for(lambda: _offset(replica) == _offset(owner), "the replica caught up")
        # Cut the replica off: stopped, and its link closed by the primary, so what follows is
        # written (and seen by the viewers) on the primary alone; then the primary dies.
        os.kill(replica.pid, signal.SIGSTOP)
        try:
            owner.call("CLIENT", "KILL", "TYPE", "replica")
            for i in range(5):
                await bus.publish(run_id, EventType.LOG, f"lost {i}")
            await asyncio.sleep(0.3)  # the viewers receive them live
            cluster.kill(owner)
        finally:
            os.kill(replica.pid, signal.SIGCONT)
        promoted = await asyncio.to_thread(cluster.failover, owner)
        assert promoted is replica
        assert replica.call("XLEN", bus.keys.events(run_id)) == 21  # the last 5 are gone

        for i in range(10):
            await _publish_retrying(bus, run_id, EventType.LOG, f"after {i}")
        await _publish_retrying(bus, run_id, EventType.WORKFLOW_COMPLETED, "done")
        received = await asyncio.wait_for(asyncio.gather(*readers), timeout=60)
        logged = [e.seq for e in await bus.events(run_id, limit=10_000)]
        assert logged == list(range(1, 33))  # 21 + 10 + completed: seqs 22..26 written anew
        for messages in received:
            shown, resyncs = _view(messages)
            assert resyncs, [m.event for m in messages]
            assert all(r["reason"] == "rolled_back" and r["after_seq"] == 0 for r in resyncs)
            assert shown == logged
    finally:
        for viewer in viewers:
            viewer.close()
        await redis.aclose()


async def test_a_worker_run_streams_through_a_failover_of_its_primary_to_completion(
    cluster: EmbeddedCluster,
    gateway_factory: GatewayFactory,
    processes: Processes,
    namespace: str,
) -> None:
    settings = Settings(redis_url=cluster.url, namespace=namespace, redis_cluster=True)
    keys = settings.keys()
    gw = await gateway_factory(redis_url=cluster.url, redis_cluster=True)
    redis = connect(cluster.url, cluster=True)

    def cluster_env(**extra: object) -> dict[str, str]:
        env = {"REDIS_URL": cluster.url, "TIDINGS_NAMESPACE": namespace}
        env["TIDINGS_REDIS_CLUSTER"] = "true"
        env.update({f"TIDINGS_{k.upper()}": str(v) for k, v in extra.items()})
        return env

    try:
        await start_workers(processes, cluster_env, redis, keys, 2, **FAST_LEASES)
        body = {"workflow": "monty", "input": {"min_sleep_s": 0.1, "max_sleep_s": 0.2}}
        async with gw.client() as http:
            started = await http.post("/api/runs", json=body)
            assert started.status_code == 201, started.text
            run_id = started.json()["run_id"]
        viewers = [await gw.stream(f"/api/runs/{run_id}/events") for _ in range(2)]
        readers = [asyncio.create_task(v.read_to_end()) for v in viewers]
        bus = Bus(redis, keys)

        async def logged(n: int) -> bool:
            return len(await bus.events(run_id, limit=10_000)) >= n

        await wait_for(lambda: logged(15), "the run well under way", timeout=30)
        owner = cluster.node_for_slot(key_slot(keys.run(run_id)))
        await asyncio.to_thread(cluster.failover, owner)
        await wait_for(lambda: logged(40), "the run going on after the failover", timeout=60)
        async with gw.client() as http:
            stopped = await http.post(f"/api/runs/{run_id}/signals/stop")
            assert stopped.status_code == 202, stopped.text

        received = await asyncio.wait_for(asyncio.gather(*readers), timeout=60)
        log = await bus.events(run_id, limit=10_000)
        assert [e.seq for e in log] == list(range(1, len(log) + 1))
        assert log[-1].type in (EventType.WORKFLOW_COMPLETED, EventType.WORKFLOW_CANCELLED)
        for messages in received:
            shown, _ = _view(messages)
            assert shown == [e.seq for e in log]
        for viewer in viewers:
            viewer.close()
    finally:
        await redis.aclose()
