"""The local Valkey Cluster harness: `EmbeddedCluster`, `tidings up --cluster` (the services on
it), and compose's `cluster` profile and override (their shape: no Docker here).

Real clusters of real `valkey-server` processes, formed over redis-py; every process a test
starts is stopped by its own pid when it ends."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml
from redis.asyncio import Connection, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import ResponseError

from tests.conftest import ROOT, Processes
from tidings.embedded_cluster import ClusterError, EmbeddedCluster, EmbeddedNode
from tidings.keys import CLUSTER_BUCKETS, Keys
from tidings.slots import SLOTS, slot_ranges

CLI = [sys.executable, "-m", "tidings.services.cli"]


def _slot(key: str) -> int:
    return int(key_slot(key.encode()))


async def _client(cluster: EmbeddedCluster) -> RedisCluster:
    nodes = [ClusterNode(host, port) for host, port in cluster.startup_nodes]
    client = RedisCluster(startup_nodes=nodes, decode_responses=True)
    await client.initialize()
    return client


async def _subscribe(node: EmbeddedNode, channel: str) -> Connection:
    """A connection to `node` alone, SSUBSCRIBEd to `channel` (redis-py's asyncio client has
    no sharded pub/sub of its own, so the raw connection speaks it)."""
    conn = Connection(host=node.host, port=node.port, decode_responses=True)
    await conn.connect()
    await conn.send_command("SSUBSCRIBE", channel)
    assert await conn.read_response(timeout=5) == ["ssubscribe", channel, 1]
    return conn


def _cluster_ok(node: EmbeddedNode) -> bool:
    return "cluster_state:ok" in node.call("CLUSTER", "INFO").splitlines()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    """Three primaries with a replica each, shared by the tests that leave it as it is."""
    with EmbeddedCluster(tmp_path_factory.mktemp("cluster"), primaries=3, replicas=1) as formed:
        yield formed


@pytest.fixture
async def client(cluster: EmbeddedCluster) -> AsyncIterator[RedisCluster]:
    redis = await _client(cluster)
    try:
        yield redis
    finally:
        await redis.aclose()


def test_slot_ranges_split_every_slot_once_evenly() -> None:
    for primaries in (1, 2, 3, 5, 7):
        ranges = slot_ranges(primaries)
        covered = [slot for low, high in ranges for slot in range(low, high + 1)]
        assert covered == list(range(SLOTS))
        sizes = {high - low + 1 for low, high in ranges}
        assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError):
        slot_ranges(0)


def test_a_cluster_that_does_not_form_in_time_names_the_node_and_stops_everything(
    tmp_path: Path,
) -> None:
    cluster = EmbeddedCluster(tmp_path / "cluster", primaries=3, replicas=0)
    # Nodes start regardless; the deadline then passes before their handshakes (cluster cron
    # ticks every 100 ms) can have completed.
    with pytest.raises(ClusterError) as failed:
        cluster.start(timeout=0.01)
    message = str(failed.value)
    assert message.startswith("waited in vain for every node to know every other: node-")
    assert re.search(r"--- node-\d \(127\.0\.0\.1:\d+, pid \d+\) log ---", message), message
    assert len(cluster.nodes) == 3 and not any(node.running for node in cluster.nodes)


@pytest.mark.slow
def test_every_slot_is_served_and_every_node_says_ok(cluster: EmbeddedCluster) -> None:
    assert len(cluster.nodes) == 6
    primaries = cluster.primaries()
    assert len(primaries) == 3
    for node in cluster.nodes:
        assert _cluster_ok(node), node
        info = node.call("CLUSTER", "INFO")
        assert f"cluster_slots_ok:{SLOTS}" in info and "cluster_known_nodes:6" in info
    for primary in primaries:
        (replica,) = cluster.replicas_of(primary)
        assert replica not in primaries
    # The slots were split evenly and in order, one range per primary.
    owners = []
    for low, high in slot_ranges(3):
        owners.append(cluster.node_for_slot(low))
        assert cluster.node_for_slot(high) is owners[-1]
    assert owners == primaries
    for slot in (0, 5460, 5461, 10922, 16383):
        owner = cluster.node_for_slot(slot)
        assert owner in primaries
        assert owner.call("CLUSTER", "COUNTKEYSINSLOT", slot) == 0  # served, and empty
    # What `up` prints.
    lines = cluster.describe()
    assert sum("primary, slots" in line for line in lines) == 3
    assert sum("replica of" in line for line in lines) == 3


@pytest.mark.slow
async def test_keys_in_every_shard_are_written_and_read_through_a_cluster_client(
    cluster: EmbeddedCluster, client: RedisCluster
) -> None:
    keys = [f"t-local:{i}" for i in range(120)]
    owners = {cluster.node_for_slot(_slot(key)).name for key in keys}
    assert len(owners) == 3  # the keys are spread over every primary
    for key in keys:
        await client.set(key, key.upper())
    assert [await client.get(key) for key in keys] == [key.upper() for key in keys]
    # Each key lives on the primary that owns its slot, and only there.
    key = keys[0]
    owner = cluster.node_for_slot(_slot(key))
    assert owner.call("GET", key) == key.upper()
    other = next(node for node in cluster.primaries() if node is not owner)
    with pytest.raises(ResponseError, match=rf"MOVED {_slot(key)} {owner.address}"):
        other.call("GET", key)
    # Keys sharing a hash tag share a slot, so one node takes a multi-key command on them.
    tagged = ["{run-7}:events", "{run-7}:state"]
    assert _slot(tagged[0]) == _slot(tagged[1])
    await client.mset({tagged[0]: "e", tagged[1]: "s"})
    assert await client.mget(tagged) == ["e", "s"]
    await client.delete(*keys, *tagged)


@pytest.mark.slow
async def test_sharded_pubsub_goes_through_the_node_that_owns_the_channel_slot(
    cluster: EmbeddedCluster, client: RedisCluster
) -> None:
    channel = "t-local:run:abc:events"
    owner = cluster.node_for_slot(_slot(channel))
    subscriber = await _subscribe(owner, channel)
    (replica,) = cluster.replicas_of(owner)
    on_replica = await _subscribe(replica, channel)  # the shard's replicas get it too
    try:
        # SPUBLISH through the cluster client is routed by the channel's slot; its count is the
        # subscribers of the node that ran it, not of the shard.
        assert await client.execute_command("SPUBLISH", channel, "hello") == 1
        message = ["smessage", channel, "hello"]
        assert await subscriber.read_response(timeout=5) == message
        assert await on_replica.read_response(timeout=5) == message
        # A primary of another shard sends the subscriber to the owner.
        other = next(node for node in cluster.primaries() if node is not owner)
        elsewhere = Connection(host=other.host, port=other.port, decode_responses=True)
        await elsewhere.connect()
        try:
            await elsewhere.send_command("SSUBSCRIBE", channel)
            with pytest.raises(ResponseError, match=rf"MOVED {_slot(channel)} {owner.address}"):
                await elsewhere.read_response(timeout=5)
        finally:
            await elsewhere.disconnect()
    finally:
        await subscriber.disconnect()
        await on_replica.disconnect()


@pytest.mark.slow
async def test_a_killed_primary_fails_over_to_its_replica_keeping_a_replicated_write(
    tmp_path: Path,
) -> None:
    cluster = EmbeddedCluster(tmp_path / "cluster", primaries=3, replicas=1).start()
    pids = [node.pid for node in cluster.nodes]
    try:
        client = await _client(cluster)
        try:
            key = "t-local:before-failover"
            owner = cluster.node_for_slot(_slot(key))
            (replica,) = cluster.replicas_of(owner)
            # The write and WAIT on one connection: WAIT counts that connection's writes.
            direct = Redis(
                host=owner.host,
                port=owner.port,
                single_connection_client=True,
                decode_responses=True,
            )
            try:
                await direct.set(key, "kept")
                assert await direct.execute_command("WAIT", 1, 0) == 1
            finally:
                await direct.aclose()

            promoted = await asyncio.to_thread(cluster.failover, owner)

            assert promoted is replica
            assert not owner.running and owner.pid is None
            assert cluster.node_for_slot(_slot(key)) is promoted
            assert promoted.call("GET", key) == "kept"
            live = [node for node in cluster.nodes if node.running]
            assert len(live) == 5 and all(_cluster_ok(node) for node in live)
            assert len(cluster.primaries()) == 3 and promoted in cluster.primaries()
            assert cluster.replicas_of(promoted) == []  # until the old primary comes back
            # The client that knew the old layout finds the new primary, reads and writes.
            assert await client.get(key) == "kept"
            await client.set(key, "after")
            # Sharded pub/sub on the promoted node: subscribe again at the slot's owner.
            channel = "{t-local:before-failover}:events"
            subscriber = await _subscribe(cluster.node_for_slot(_slot(channel)), channel)
            try:
                assert await client.execute_command("SPUBLISH", channel, "again") == 1
                assert await subscriber.read_response(timeout=5) == ["smessage", channel, "again"]
            finally:
                await subscriber.disconnect()
        finally:
            await client.aclose()
    finally:
        cluster.stop()
    assert len(cluster.nodes) == 6 and not any(node.running for node in cluster.nodes)
    assert not any(pid is not None and psutil.pid_exists(pid) for pid in pids)


def _wait_for(
    proc: subprocess.Popen[bytes], procs: Processes, text: str, timeout: float = 60
) -> str:
    deadline = time.monotonic() + timeout
    while text not in (output := procs.output(proc)):
        assert proc.poll() is None, output
        assert time.monotonic() < deadline, output
        time.sleep(0.05)
    return output


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_tidings_up_cluster_runs_the_services_on_it_and_leaves_nothing_behind(
    processes: Processes, tmp_path: Path
) -> None:
    env = {"REDIS_URL": "", "TIDINGS_DATA_DIR": str(tmp_path / "data"), "TIDINGS_PORT": "0"}
    up = processes.start([*CLI, "up", "--cluster", "3", "--workers", "1"], env=env, name="up")
    banner = _wait_for(up, processes, "press Ctrl-C", timeout=120)
    assert "Tidings is up" in banner and "TIDINGS_REDIS_CLUSTER=true" in banner
    url = re.search(r"REDIS_URL=(redis://\S+)", banner)
    gateway = re.search(r"dashboard and API at (http://\S+)/", banner)
    assert url and gateway, banner
    node_pids = [int(pid) for pid in re.findall(r"\(pid (\d+)\): (?:primary|replica)", banner)]
    assert len(node_pids) == 6, banner
    children = {p.pid for p in psutil.Process(up.pid).children()}
    assert set(node_pids) < children and len(children) == 6 + 2  # nodes, gateway, worker

    # A run goes through the gateway and the worker, over the cluster, to the end.
    async with httpx.AsyncClient(base_url=gateway.group(1), timeout=10) as http:
        quick = {"min_sleep_s": 0.01, "max_sleep_s": 0.05, "max_iterations": 2}
        body = {"workflow": "monty", "input": quick}
        started = await http.post("/api/runs", json=body)
        assert started.status_code == 201, started.text
        run_id = started.json()["run_id"]
        deadline = time.monotonic() + 60
        while (run := (await http.get(f"/api/runs/{run_id}")).json())["status"] != "completed":
            assert run["status"] not in ("failed", "cancelled") and time.monotonic() < deadline
            await asyncio.sleep(0.1)

    client = RedisCluster.from_url(url.group(1), decode_responses=True)
    try:
        await client.initialize()
        assert len(client.get_primaries()) == 3 and len(client.get_replicas()) == 3
        info = await client.execute_command("CLUSTER INFO", target_nodes=RedisCluster.ALL_NODES)
        assert all(reply["cluster_state"] == "ok" for reply in info.values())
        keys = Keys("tidings", buckets=CLUSTER_BUCKETS)
        assert await client.hget(keys.run(run_id), "status") == "completed"
    finally:
        await client.aclose()
    assert not (tmp_path / "data" / "redis.url").exists()  # not a single server to find

    up.terminate()
    assert up.wait(60) == 0, processes.output(up)
    assert "stopping the cluster's 6 node(s)" in processes.output(up)
    for pid in children:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    return data


def test_compose_cluster_override_points_the_services_at_the_cluster_once_formed() -> None:
    base = _compose()["services"]
    override = yaml.safe_load((ROOT / "deploy" / "docker-compose.cluster.yml").read_text())
    assert set(override["services"]) == {"gateway", "worker"}
    for name, service in override["services"].items():
        env = service["environment"]
        host = env["REDIS_URL"].removeprefix("redis://").partition(":")[0]
        assert host in base and base[host]["profiles"] == ["cluster"], name
        assert env["TIDINGS_REDIS_CLUSTER"] == "true"
        assert service["depends_on"] == {
            "cluster-init": {"condition": "service_completed_successfully"}
        }
        # Merged over the base file: everything else of the service is kept from there.
        assert set(service) == {"environment", "depends_on"} and name in base


def test_compose_cluster_profile_has_six_nodes_and_a_one_shot_init() -> None:
    services = _compose()["services"]
    nodes = [f"valkey-node-{i}" for i in range(1, 7)]
    for name in nodes:
        node = services[name]
        assert node["profiles"] == ["cluster"]
        assert node["image"].startswith("valkey/valkey:")
        command = node["command"]
        assert command[0] == "valkey-server"
        flags = dict(zip(command[1::2], command[2::2], strict=True))
        assert flags["--cluster-enabled"] == "yes"
        assert flags["--cluster-config-file"] == "nodes.conf"
        assert flags["--appendonly"] == "yes"
        assert node["volumes"] == [f"{name}:/data"]  # each node its own nodes.conf and AOF
        assert "valkey-cli" in node["healthcheck"]["test"]
        assert "ports" not in node
    assert set(_compose()["volumes"]) >= set(nodes)

    init = services["cluster-init"]
    assert init["profiles"] == ["cluster"] and init["restart"] == "no"
    assert init["image"].startswith("valkey/valkey:")  # valkey-cli comes with the image
    assert init["depends_on"] == {name: {"condition": "service_healthy"} for name in nodes}
    script = init["command"][-1]
    assert init["command"][:2] == ["sh", "-c"]
    create = script[script.index("valkey-cli --cluster create") :].split()
    assert create[3:9] == [f"{name}:6379" for name in nodes]
    assert create[9:] == ["--cluster-replicas", "1", "--cluster-yes"]
    # Started again, it leaves a formed cluster alone; and the script is valid shell.
    assert "cluster_state:ok" in script and "exit 0" in script
    subprocess.run(["sh", "-n", "-c", script.replace("$$", "$")], check=True)

    # A plain `docker compose up` starts what it did before: no profile on those services.
    for name in ("redis", "gateway", "worker", "certs", "nginx"):
        assert "profiles" not in services[name]
