"""An event whose JSON holds a raw line break is still framed as one valid SSE event.

Published events never contain one (the publish script writes compact JSON), but anything that
can write to Redis can put one in a run's log or on its channel (a pretty-printed event from a
script, say): the gateway must then split the data over several `data:` lines, which a client
joins back with `\\n`. Framed as one `data:` line, the client would take the rest of the event
for unknown fields and drop it.
"""

from __future__ import annotations

import json

import pytest
from redis.asyncio import Redis

from tests.test_gateway_support import GatewayFactory
from tidings.bus import splice_id
from tidings.keys import Keys
from tidings.publishing import announce
from tidings.runs import RunStore
from tidings.services.gateway.messages import event_message, frame
from tidings.sse import SSEParser


def _stored(run_id: str, seq: int, message: str, sep: str = "\n") -> bytes:
    """A log entry as the log keeps it (no `id`), pretty-printed with `sep` between fields."""
    fields = [
        f'"seq":{seq}',
        '"progress":0',
        f'"run_id":"{run_id}"',
        '"type":"log"',
        f'"message":"{message}"',
        '"attempt":1',
    ]
    return ("{" + f",{sep}".join(fields) + "}").encode()


@pytest.mark.parametrize("sep", ["\n", "\r\n", "\r", "\n\n"])
def test_frame_splits_data_with_line_breaks_into_one_event(sep: str) -> None:
    raw = splice_id(b"1700000000000-0", _stored("r1", 1, "two lines", sep))
    messages = SSEParser().feed(frame(b"1700000000000-0", b"log", raw))
    assert len(messages) == 1
    [msg] = messages
    assert (msg.id, msg.event) == ("1700000000000-0", "log")
    # SSE carries line breaks, not which ones: each comes back as "\n".
    assert msg.data == raw.decode().replace("\r\n", "\n").replace("\r", "\n")
    assert json.loads(msg.data)["message"] == "two lines"


@pytest.mark.parametrize("sep", ["\n", "\r\n", "\r"])
def test_a_live_message_with_a_line_break_is_framed_as_one_event(sep: str) -> None:
    raw = splice_id(b"1700000000000-1", _stored("r1", 2, "live", sep))
    message = event_message(raw)
    assert message is not None and message.id == (1700000000000, 1)
    [msg] = SSEParser().feed(message.sse)
    assert (msg.id, msg.event) == ("1700000000000-1", "log")
    assert msg.data == raw.decode().replace("\r\n", "\n").replace("\r", "\n")


async def test_events_with_line_breaks_reach_a_viewer_whole_from_the_log_and_live(
    gateway_factory: GatewayFactory, redis: Redis, keys: Keys, store: RunStore
) -> None:
    gw = await gateway_factory()
    run_id = (await store.create("demo", None)).run_id
    # In the log before the viewer connects: it comes by replay.
    logged = _stored(run_id, 1, "from the log")
    first = await redis.xadd(keys.events(run_id), {"e": logged})
    stream = await gw.stream(f"/api/runs/{run_id}/events")
    try:
        assert stream.status == 200
        [replayed] = await stream.take(1)
        assert (replayed.id, replayed.event) == (first.decode(), "log")
        assert replayed.data == splice_id(first, logged).decode()

        # On the channel only, after the replay: it comes live.
        ms, _ = first.decode().split("-")
        live_id = f"{int(ms) + 1}-0".encode()
        live = splice_id(live_id, _stored(run_id, 2, "live"))
        await announce(redis, keys, keys.run_channel(run_id), live)
        [received] = await stream.take(1)
        assert (received.id, received.event, received.data) == (
            live_id.decode(),
            "log",
            live.decode(),
        )
        assert json.loads(received.data)["message"] == "live"
    finally:
        stream.close()
