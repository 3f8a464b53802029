"""The gateway's own pub/sub connection (`pubsub_wire.py`) connects as its Redis client does:
a password, an ACL user, a unix socket; named like the gateway's other connections."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.conftest import CLUSTER
from tests.test_gateway_support import GatewayFactory, events_of, wait_for
from tidings.bus import Bus
from tidings.embedded import EmbeddedValkey
from tidings.events import EventType
from tidings.keys import Keys
from tidings.redis import connect
from tidings.runs import RunStore
from tidings.services.gateway.pubsub_wire import encode_command, open_wire

pytestmark = pytest.mark.skipif(CLUSTER, reason="a single Valkey of its own, with credentials")


@pytest.fixture
def own_valkey(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    """A Valkey also listening on a unix socket (in a short path: sun_path holds 107 bytes)."""
    server = EmbeddedValkey(
        tmp_path / "valkey",
        persistent=False,
        extra_config={"unixsocket": "valkey.sock", "unixsocketperm": "700"},
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_commands_are_resp_arrays_of_bulk_strings() -> None:
    assert encode_command(("PING",)) == b"*1\r\n$4\r\nPING\r\n"
    assert encode_command(("SUBSCRIBE", b"a:\xff", "é")) == (
        b"*3\r\n$9\r\nSUBSCRIBE\r\n$3\r\na:\xff\r\n$2\r\n\xc3\xa9\r\n"
    )


async def test_a_gateway_streams_live_over_a_password_an_acl_user_and_a_unix_socket(
    gateway_factory: GatewayFactory, own_valkey: EmbeddedValkey, keys: Keys
) -> None:
    admin = connect(own_valkey.url)
    await admin.execute_command("ACL", "SETUSER", "viewer", "on", ">pw2", "~*", "&*", "+@all")
    await admin.config_set("requirepass", "pw1")  # the default user's password from now on
    await admin.aclose()
    host, port = own_valkey.host, own_valkey.port
    socket = own_valkey.data_dir / "valkey.sock"
    urls = {
        "password": f"redis://:pw1@{host}:{port}/0",
        "acl user": f"redis://viewer:pw2@{host}:{port}/0",
        "unix socket": f"unix://{socket}?db=0&password=pw1",
    }
    redis = connect(urls["password"])
    try:
        bus, store = Bus(redis, keys), RunStore(redis, keys)
        for how, url in urls.items():
            gw = await gateway_factory(redis_url=url, catalog=False)
            run = await store.create("demo", None)
            await bus.publish(run.run_id, EventType.WORKFLOW_STARTED, "go")
            stream = await gw.stream(f"/api/runs/{run.run_id}/events")
            reading = asyncio.create_task(stream.read_to_end())

            async def subscribed(name: str = f"tidings-gateway:{gw.proc.pid}") -> bool:
                clients = await redis.client_list()
                return any(c["name"] == name and c["cmd"] == "subscribe" for c in clients)

            # Its subscriber is named like its other connections (ops find it in CLIENT LIST).
            await wait_for(subscribed, f"the gateway's subscriber over the {how}")
            for i in range(5):  # live: published after the viewer subscribed
                await bus.publish(run.run_id, EventType.LOG, f"m{i}")
            await bus.publish(run.run_id, EventType.WORKFLOW_COMPLETED, "done")
            try:
                events = events_of(await asyncio.wait_for(reading, 20))
            finally:
                stream.close()
            assert [e["seq"] for e in events] == list(range(1, 8)), how
            assert events[-1]["type"] == "workflow_completed", how
            gw.proc.terminate()
            gw.proc.wait(10)
    finally:
        await redis.aclose()


async def test_wrong_credentials_fail_the_handshake_and_a_reply_handler_bug_ends_the_session(
    own_valkey: EmbeddedValkey,
) -> None:
    admin = connect(own_valkey.url)
    await admin.config_set("requirepass", "right")
    try:
        kwargs = {"host": own_valkey.host, "port": own_valkey.port, "client_name": "t"}
        with pytest.raises(AuthenticationError, match="AUTH"):
            await open_wire(Connection, {**kwargs, "password": "wrong"}, 5)
        with pytest.raises(AuthenticationError, match="AUTH"):  # none given: NOAUTH on SETNAME
            await open_wire(Connection, kwargs, 5)

        wire = await open_wire(Connection, {**kwargs, "password": "right"}, 5)

        def buggy(reply: object) -> None:
            raise LookupError("a bug in the hub")

        wire.on_reply = buggy
        wire.send("SUBSCRIBE", "ch")
        # Not taken for a Redis outage: the source logs it with its traceback, then reconnects.
        with pytest.raises(LookupError, match="a bug in the hub"):
            await asyncio.wait_for(wire.closed, 10)
        with pytest.raises(RedisConnectionError):
            wire.send("PING")
    finally:
        await admin.execute_command("AUTH", "right")
        await admin.aclose()


async def test_a_server_that_never_answers_times_the_handshake_out() -> None:
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append((reader, writer))  # accepts, answers nothing

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        kwargs = {"host": "127.0.0.1", "port": port, "client_name": "t"}
        with pytest.raises(TimeoutError):
            await open_wire(Connection, kwargs, 0.3)
        # What it sent, then its end of the connection: nothing is left open behind the error.
        ((reader, _),) = held
        sent = await asyncio.wait_for(reader.read(), 5)
        assert sent == encode_command(("CLIENT", "SETNAME", "t"))
    finally:
        for _, writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
