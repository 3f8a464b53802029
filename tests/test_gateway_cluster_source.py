"""The hub's message source on a cluster (`ClusterSource`): sharded pub/sub at each channel's
slot owner, on a real local Valkey Cluster (three primaries, a replica each).

The source is driven directly with a recording `SourceEvents`; messages are SPUBLISHed through
redis-py's async `RedisCluster` (routed by slot). The failover test kills a primary, so it runs
last on the module's cluster; every node is stopped by its own pid when the module ends. First,
without Redis, what the hub does with `on_lost_channels`: only those channels' viewers replay."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisError

from tidings.embedded_cluster import EmbeddedCluster, EmbeddedNode
from tidings.keys import Keys
from tidings.log import LogInfo
from tidings.services.gateway.cluster_source import ClusterSource
from tidings.services.gateway.cursors import RunCursor
from tidings.services.gateway.fanout import Hub
from tidings.services.gateway.metrics import Stats
from tidings.services.gateway.source import SourceEvents
from tidings.services.gateway.viewer import Viewer, ViewerLimits
from tidings.settings import Settings
from tidings.sse import SSEParser
from tidings.streamid import StreamId

_WAIT_S = 30.0


class _Events:
    """Everything the source reports, in order."""

    def __init__(self) -> None:
        self.messages: dict[bytes, list[bytes]] = defaultdict(list)
        self.log: list[tuple[str, bytes]] = []

    def on_message(self, channel: bytes, data: bytes) -> None:
        self.messages[channel].append(data)

    def on_ready(self, channel: bytes) -> None:
        self.log.append(("ready", channel))

    def on_lost(self) -> None:
        self.log.append(("lost-all", b""))

    def on_lost_channels(self, channels: Collection[bytes]) -> None:
        self.log.extend(("lost", channel) for channel in channels)

    def ready(self, channel: bytes) -> bool:
        """Its last report says ready."""
        last = [kind for kind, name in self.log if name == channel]
        return bool(last) and last[-1] == "ready"

    def lost(self) -> set[bytes]:
        return {name for kind, name in self.log if kind.startswith("lost")}


async def _until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + _WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"waited in vain for {what}"
        await asyncio.sleep(0.02)


def _owner(cluster: EmbeddedCluster, channel: bytes) -> EmbeddedNode:
    return cluster.node_for_slot(key_slot(channel))


def _channels(cluster: EmbeddedCluster, prefix: str, per_node: int) -> dict[str, list[bytes]]:
    """`per_node` channels owned by each primary, by primary name."""
    found: dict[str, list[bytes]] = {node.name: [] for node in cluster.primaries()}
    i = 0
    while any(len(chs) < per_node for chs in found.values()):
        channel = f"t-cs:{prefix}:run-{i}:events".encode()
        owned = found[_owner(cluster, channel).name]
        if len(owned) < per_node:
            owned.append(channel)
        i += 1
    return found


def _event(run: str, n: int) -> bytes:
    return (
        f'{{"id":"{n}-0","seq":{n},"progress":0,"run_id":"{run}","type":"log",'
        f'"message":"event {n}","attempt":1}}'
    ).encode()


class _Logs:
    """Each run's log: events 1..n; counts the reads (replays) per run."""

    def __init__(self) -> None:
        self.length: dict[str, int] = {}
        self.reads: dict[str, int] = defaultdict(int)

    async def read_page(
        self, run: str, after: StreamId, *_: Any, seen: bool = False
    ) -> tuple[Any, LogInfo]:
        self.reads[run] += 1
        n = self.length[run]
        page = [((i, 0), _event(run, i)) for i in range(1, n + 1) if (i, 0) > after]
        found = (0, 0) < after <= (n, 0) if seen and after > (0, 0) else None
        info = LogInfo(
            n,
            (1, 0),
            (n, 0),
            n,
            run_status=b"running",
            run_last_event_id=b"%d-0" % n,
            cursor_found=found,
        )
        return page, info


class _HubSource:
    """Confirms every channel at once; what reaches the hub is up to the test."""

    connected = True

    def want(self, channel: bytes) -> None: ...

    def unwant(self, channel: bytes) -> None: ...

    def is_live(self, channel: bytes) -> bool:
        return True

    def count_channels(self) -> int:
        return 0

    def start(self, events: SourceEvents) -> None: ...

    async def close(self, timeout: float) -> None: ...


class _Transport:
    def __init__(self, out: list[bytes]) -> None:
        self.out = out

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, 1 << 20)

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        while data:  # chunked framing off
            size, _, rest = data.partition(b"\r\n")
            n = int(size, 16)
            self.out.append(rest[:n])
            data = rest[n + 2 :]

    def abort(self) -> None:
        raise AssertionError("the viewer was aborted")


async def test_the_hub_replays_only_the_channels_reported_lost() -> None:
    keys = Keys("lost-channels")
    logs = _Logs()
    logs.length.update(a=1, b=1)
    ctx: Any = SimpleNamespace(keys=keys, settings=Settings(), bus=logs)
    limits = ViewerLimits(buffer_events=100, buffer_bytes=1 << 20, send_timeout=5, heartbeat=600)
    hub = Hub(_HubSource(), keys, limits=limits, stats=Stats())
    hub.start()
    outs: dict[str, list[bytes]] = {"a": [], "b": [], "late": []}

    def sender(name: str) -> Callable[[dict[str, Any]], Awaitable[None]]:
        async def send(message: dict[str, Any]) -> None:  # the catch-up writes
            outs[name].append(message.get("body", b""))

        return send

    def ids(name: str) -> list[str]:
        return [m.id for m in SSEParser().feed(b"".join(outs[name]))]

    def viewer(name: str, run: str) -> Viewer:
        cursor = RunCursor(ctx, run, (0, 0), None)  # type: ignore[arg-type]
        return Viewer(hub, sender(name), _Transport(outs[name]), [cursor])  # type: ignore[arg-type]

    channel_a, channel_b = keys.run_channel("a").encode(), keys.run_channel("b").encode()
    try:
        with contextlib.ExitStack() as attached:
            a = attached.enter_context(hub.attach(viewer("a", "a")))
            b = attached.enter_context(hub.attach(viewer("b", "b")))
            await a.serve()
            await b.serve()
            assert ids("a") == ids("b") == ["1-0"]
            # Run a's channel lost (its node went away): events 2 and 3 reach only its log.
            hub.on_lost_channels([channel_a])
            logs.length["a"] = 3
            # A viewer joining run a now cannot go live: its subscription is not confirmed.
            late = attached.enter_context(hub.attach(viewer("late", "a")))
            await late.serve()
            assert ids("late") == []
            # Run b's channel was not lost: its event arrives live, nothing is replayed.
            logs.length["b"] = 2
            hub.on_message(channel_b, _event("b", 2))
            await _until("b's live event", lambda: ids("b") == ["1-0", "2-0"])
            # Ready again: run a's viewers catch up from its log; then they are live again.
            hub.on_ready(channel_a)
            everything = ["1-0", "2-0", "3-0"]
            await _until("a's catch-up", lambda: ids("a") == ids("late") == everything)
            logs.length["a"] = 4
            hub.on_message(channel_a, _event("a", 4))
            await _until("a's live event", lambda: ids("a") == ids("late") == [*everything, "4-0"])
            assert logs.reads == {"a": 3, "b": 1}
            assert ids("b") == ["1-0", "2-0"]
    finally:
        await hub.close(timeout=1)


def _give_slot(cluster: EmbeddedCluster, slot: int, old: EmbeddedNode, new: EmbeddedNode) -> None:
    """The usual hand-over of a slot (pub/sub carries no keys: there is nothing to MIGRATE)."""
    new.call("CLUSTER", "SETSLOT", slot, "IMPORTING", old.node_id)
    old.call("CLUSTER", "SETSLOT", slot, "MIGRATING", new.node_id)
    new.call("CLUSTER", "SETSLOT", slot, "NODE", new.node_id)
    old.call("CLUSTER", "SETSLOT", slot, "NODE", new.node_id)
    for node in cluster.primaries():
        if node not in (old, new):
            node.call("CLUSTER", "SETSLOT", slot, "NODE", new.node_id)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(tmp_path_factory.mktemp("cluster"), primaries=3, replicas=1) as formed:
        yield formed


@pytest.fixture
async def client(cluster: EmbeddedCluster) -> AsyncIterator[RedisCluster]:
    nodes = [ClusterNode(host, port) for host, port in cluster.startup_nodes]
    redis = RedisCluster(startup_nodes=nodes)
    await redis.initialize()
    try:
        yield redis
    finally:
        await redis.aclose()


@pytest.fixture
async def source(cluster: EmbeddedCluster) -> AsyncIterator[tuple[ClusterSource, _Events]]:
    # One startup node: the source finds the others in the slot map.
    host, port = cluster.startup_nodes[0]
    src = ClusterSource([(host, port)], Stats(), ping_interval=0.5, max_backoff=0.5)
    events = _Events()
    src.start(events)
    try:
        yield src, events
    finally:
        await src.close(5.0)


async def _publish(client: RedisCluster, channel: bytes, data: bytes) -> int:
    """SPUBLISH through the cluster client, retried while it learns a changed layout."""
    deadline = time.monotonic() + _WAIT_S
    while True:
        try:
            count: int = await client.execute_command("SPUBLISH", channel, data)
            return count
        except RedisError:
            assert time.monotonic() < deadline, f"SPUBLISH {channel!r} kept failing"
            await asyncio.sleep(0.1)


async def _ready(src: ClusterSource, events: _Events, channels: list[bytes]) -> None:
    """Want `channels` and wait until each was reported ready since."""
    mark = len(events.log)
    for channel in channels:
        src.want(channel)

    def ready() -> bool:
        since = {name for kind, name in events.log[mark:] if kind == "ready"}
        return since >= set(channels)

    await _until("every channel ready", ready)
    assert all(src.is_live(c) for c in channels)


async def _deliver(
    client: RedisCluster, events: _Events, sent: dict[bytes, list[bytes]], tag: str, n: int
) -> None:
    """`n` messages on each channel of `sent` (interleaved), then an end marker on each; waits
    for the markers, so anything delivered twice or out of order is there to be seen."""
    for i in range(n):
        for channel, log in sent.items():
            data = f"{tag}-{i}".encode()
            assert await _publish(client, channel, data) == 1  # our subscriber, at the owner
            log.append(data)
    for channel, log in sent.items():
        await _publish(client, channel, f"{tag}-end".encode())
        log.append(f"{tag}-end".encode())
    await _until(
        f"the {tag} end markers",
        lambda: all(events.messages[c][-1:] == [f"{tag}-end".encode()] for c in sent),
    )
    for channel, log in sent.items():
        assert events.messages[channel] == log, channel


@pytest.mark.slow
async def test_channels_on_every_shard_get_each_message_once_in_order_until_unwanted(
    cluster: EmbeddedCluster, client: RedisCluster, source: tuple[ClusterSource, _Events]
) -> None:
    src, events = source
    by_node = _channels(cluster, "spread", 3)
    channels = [c for chs in by_node.values() for c in chs]
    await _ready(src, events, channels)
    assert src.connected and src.count_channels() == 9
    assert src.connections() == sorted(node.address for node in cluster.primaries())

    sent: dict[bytes, list[bytes]] = {c: [] for c in channels}
    await _deliver(client, events, sent, "a", 20)

    # One channel per shard released: the node drops it, nothing more reaches us for it.
    dropped = [chs[0] for chs in by_node.values()]
    for channel in dropped:
        src.unwant(channel)
    for channel in dropped:
        await _until("the release sent", lambda c=channel: not src.is_live(c))
        await _until(
            "the node to drop the channel",
            lambda c=channel: _owner(cluster, c).call("PUBSUB", "SHARDNUMSUB", c)[1] == 0,
        )
        assert await _publish(client, channel, b"unheard") == 0
    kept = {c: log for c, log in sent.items() if c not in dropped}
    await _deliver(client, events, kept, "b", 5)
    for channel in dropped:
        assert events.messages[channel] == sent[channel]
    assert src.count_channels() == 6

    # Wanted again at once after release: subscribed again, confirmed again, messages flow.
    await _ready(src, events, dropped[:1])
    await _deliver(client, events, {dropped[0]: sent[dropped[0]]}, "c", 3)

    # Released and wanted again before the release was sent (a stream's last viewer left and
    # a new one came at once): still subscribed at the node, so live at once, as the hub asks
    # before it wants; nothing is sent for it and messages flow on. Regression: routing forgot
    # the channel on release, so it read as not live, and the hub waited for a confirmation
    # that no command would bring.
    again = dropped[0]
    src.unwant(again)
    assert src.is_live(again)
    src.want(again)
    await _deliver(client, events, {again: sent[again]}, "d", 3)
    assert src.is_live(again)

    # Every channel of one shard released: that node's connection closes when idle.
    (name, last), *_ = ((n, chs) for n, chs in by_node.items() if dropped[0] not in chs)
    address = next(node.address for node in cluster.nodes if node.name == name)
    for channel in last:
        src.unwant(channel)
    await _until("the idle node's connection to close", lambda: address not in src.connections())
    assert len(src.connections()) == 2 and src.connected
    assert not events.lost()  # nothing was ever at risk


@pytest.mark.slow
async def test_a_channel_owned_by_a_node_not_connected_yet_opens_that_node_connection(
    cluster: EmbeddedCluster, client: RedisCluster, source: tuple[ClusterSource, _Events]
) -> None:
    src, events = source
    by_node = _channels(cluster, "open", 1)
    first, second, *_ = cluster.primaries()
    await _ready(src, events, by_node[first.name])
    assert src.connections() == [first.address]

    await _ready(src, events, by_node[second.name])
    assert src.connections() == sorted([first.address, second.address])
    both = by_node[first.name] + by_node[second.name]
    await _deliver(client, events, {c: [] for c in both}, "x", 5)
    assert not events.lost()


@pytest.mark.slow
async def test_a_slot_given_to_another_primary_moves_its_channel_there(
    cluster: EmbeddedCluster, client: RedisCluster, source: tuple[ClusterSource, _Events]
) -> None:
    src, events = source
    by_node = _channels(cluster, "move", 2)
    channels = [c for chs in by_node.values() for c in chs]
    await _ready(src, events, channels)
    sent: dict[bytes, list[bytes]] = {c: [] for c in channels}
    await _deliver(client, events, sent, "before", 3)

    moving = channels[0]
    slot = key_slot(moving)
    old = _owner(cluster, moving)
    new = next(node for node in cluster.primaries() if node is not old)
    _give_slot(cluster, slot, old, new)
    assert _owner(cluster, moving) is new

    # The old owner unsubscribes us by itself; the source reports the channel lost, subscribes
    # at the new owner and reports it ready once that node confirmed.
    await _until("the moved channel lost", lambda: moving in events.lost())
    await _until("the moved channel ready again", lambda: events.ready(moving))
    assert events.lost() == {moving}  # every other channel stayed live
    assert new.call("PUBSUB", "SHARDNUMSUB", moving)[1] == 1
    assert old.call("PUBSUB", "SHARDNUMSUB", moving)[1] == 0
    assert src.connected
    await _deliver(client, events, sent, "after", 3)

    # A slot that moved while none of its channels was wanted: the source's map is stale, so it
    # asks the old owner, whose MOVED reply sends it to the new one (reported lost, then ready).
    late = next(
        c
        for i in range(1000)
        if key_slot(c := f"t-cs:late:{i}".encode()) != slot and _owner(cluster, c) is old
    )
    _give_slot(cluster, key_slot(late), old, new)
    await _ready(src, events, [late])
    assert [kind for kind, name in events.log if name == late] == ["lost", "ready"]
    assert new.call("PUBSUB", "SHARDNUMSUB", late)[1] == 1
    await _deliver(client, events, {late: []}, "late", 3)


@pytest.mark.slow
async def test_a_killed_primary_loses_only_its_channels_which_come_back_on_the_promoted_replica(
    cluster: EmbeddedCluster, client: RedisCluster, source: tuple[ClusterSource, _Events]
) -> None:
    src, events = source
    by_node = _channels(cluster, "failover", 2)
    channels = [c for chs in by_node.values() for c in chs]
    await _ready(src, events, channels)
    sent: dict[bytes, list[bytes]] = {c: [] for c in channels}
    await _deliver(client, events, sent, "before", 3)

    victim = cluster.primaries()[0]
    doomed = by_node[victim.name]
    others = {c: log for c, log in sent.items() if c not in doomed}
    cluster.kill(victim)
    await _until("the dead node's channels reported lost", lambda: events.lost() == set(doomed))
    assert not any(src.is_live(c) for c in doomed)
    # The other shards go on meanwhile, without a gap.
    await _deliver(client, events, others, "during", 5)

    promoted = await asyncio.to_thread(cluster.failover, victim)
    await _until("the dead node's channels ready again", lambda: all(map(events.ready, doomed)))
    assert events.lost() == set(doomed)
    await _until(
        "the dead node's connection to go", lambda: victim.address not in src.connections()
    )
    assert promoted.address in src.connections()
    await _until("the source to say it is connected", lambda: src.connected)
    await _deliver(client, events, sent, "after", 5)
