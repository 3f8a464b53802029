"""Replay then live, with no duplicate: driven step by step, without Redis or timing.

A viewer subscribes first, replays the log, then goes live; live messages that arrive while the
replay is in flight are buffered, and those the replay also sent must be dropped. Here the hub
is fed by a fake `Source` and the run's log by a fake bus whose read waits for the test, so a
live copy of an event the replay page also holds is delivered exactly while the replay is in
flight, every time. Then, with the viewer quiet, live copies of events it already has arrive one
by one and in a batch (the direct-write paths). Each id must reach the viewer once, in order.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from tidings.bus import LogInfo
from tidings.keys import Keys
from tidings.services.gateway.cursors import RunCursor
from tidings.services.gateway.fanout import Hub
from tidings.services.gateway.metrics import Stats
from tidings.services.gateway.source import SourceEvents
from tidings.services.gateway.viewer import Viewer, ViewerLimits
from tidings.settings import Settings
from tidings.sse import SSEParser
from tidings.streamid import StreamId

RUN = "dedupe-run"


class _Source:
    """A `Source` whose channels are confirmed at once; messages come from the test."""

    def __init__(self) -> None:
        self.connected = True
        self.wanted: set[bytes] = set()

    def want(self, channel: bytes) -> None:
        self.wanted.add(channel)

    def unwant(self, channel: bytes) -> None:
        self.wanted.discard(channel)

    def is_live(self, channel: bytes) -> bool:
        return True

    def count_channels(self) -> int:
        return len(self.wanted)

    def start(self, events: SourceEvents) -> None:
        pass

    async def close(self, timeout: float) -> None:
        pass


def _event(n: int) -> bytes:
    return (
        f'{{"id":"{n}-0","seq":{n},"progress":0,"run_id":"{RUN}","type":"log",'
        f'"message":"event {n}","attempt":1}}'
    ).encode()


class _Log:
    """The run's log holds events 1..3; the first read waits until the test lets it answer."""

    def __init__(self) -> None:
        self.reading = asyncio.Event()
        self.answer = asyncio.Event()

    async def read_page(
        self, run_id: str, after: StreamId, *_: Any, seen: bool = False
    ) -> tuple[Any, LogInfo]:
        self.reading.set()
        await self.answer.wait()
        page = [((n, 0), _event(n)) for n in (1, 2, 3) if (n, 0) > after]
        info = LogInfo(3, (1, 0), (3, 0), 3, run_status=b"running", run_last_event_id=b"3-0")
        return page, info


class _Transport:
    """What the hub's direct writes see of a socket: always room, every write kept."""

    def __init__(self, out: list[bytes]) -> None:
        self.out = out

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, 1 << 20)

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        self.out.append(_dechunk(data))

    def abort(self) -> None:
        raise AssertionError("the viewer was aborted")


def _dechunk(data: bytes) -> bytes:
    body = b""
    while data:
        size, _, rest = data.partition(b"\r\n")
        n = int(size, 16)
        body, data = body + rest[:n], rest[n + 2 :]
    return body


async def _flushed() -> None:
    for _ in range(3):  # the hub writes what it received one loop iteration later
        await asyncio.sleep(0)


async def test_live_copies_of_replayed_events_reach_the_viewer_once_and_in_order() -> None:
    keys = Keys("dedupe")
    log = _Log()
    ctx: Any = SimpleNamespace(keys=keys, settings=Settings(), bus=log)
    limits = ViewerLimits(buffer_events=100, buffer_bytes=1 << 20, send_timeout=5, heartbeat=600)
    hub = Hub(_Source(), keys, limits=limits, stats=Stats())
    hub.start()
    out: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        out.append(message.get("body", b""))

    channel = keys.run_channel(RUN).encode()
    viewer = Viewer(hub, send, _Transport(out), [RunCursor(ctx, RUN, (0, 0), None)])  # type: ignore[arg-type]

    def received() -> list[str]:
        return [m.id for m in SSEParser().feed(b"".join(out))]

    try:
        with hub.attach(viewer):
            serving = asyncio.create_task(viewer.serve())
            await log.reading.wait()
            # The replay's read is in flight: 2 and 3 arrive live (the page holds them too),
            # and 4 (it does not).
            for n in (2, 3, 4):
                hub.on_message(channel, _event(n))
            await _flushed()
            assert received() == []  # buffered behind the replay
            log.answer.set()
            await serving
            assert received() == ["1-0", "2-0", "3-0", "4-0"]
            assert viewer.task is None  # quiet: live deliveries are written directly now

            hub.on_message(channel, _event(4))  # one at a time
            await _flushed()
            hub.on_message(channel, _event(5))
            await _flushed()
            for n in (5, 6, 7):  # several read at once
                hub.on_message(channel, _event(n))
            await _flushed()
            assert received() == [f"{n}-0" for n in range(1, 8)]
    finally:
        await hub.close(timeout=1)
