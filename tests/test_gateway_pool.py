"""`tidings gateway --workers N`: processes sharing one port, each with its own hub."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable

import psutil  # type: ignore[import-untyped]

from tests.conftest import Processes
from tests.test_gateway_support import GatewayFactory, events_of, wait_for
from tidings.bus import Bus
from tidings.events import EventType
from tidings.runs import RunStore


def _listening(parent: psutil.Process, port: int) -> int:
    return sum(
        any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns)
        for conns in (child.net_connections(kind="tcp") for child in parent.children())
    )


def _serving(parent: psutil.Process, port: int) -> dict[int, int]:
    """Established connections on `port`, per child process."""
    counts: dict[int, int] = {}
    for child in parent.children():
        conns = child.net_connections(kind="tcp")
        counts[child.pid] = sum(
            1 for c in conns if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
        )
    return counts


async def test_two_processes_share_the_port_and_every_viewer_gets_every_event(
    gateway_factory: GatewayFactory, bus: Bus, store: RunStore
) -> None:
    gw = await gateway_factory(gateway_workers=2)
    parent = psutil.Process(gw.proc.pid)
    await wait_for(lambda: _listening(parent, gw.port) == 2, "two processes listening")
    run = await store.create("demo", None)
    await bus.publish(run.run_id, EventType.WORKFLOW_STARTED, "go")
    streams = [await gw.stream(f"/api/runs/{run.run_id}/events") for _ in range(40)]
    for s in streams:
        await s.take(1)
    # The kernel spread the connections: both processes hold viewers.
    per_child = _serving(parent, gw.port)
    assert sorted(per_child.values())[0] >= 1, per_child
    assert sum(per_child.values()) >= 40

    readers = [asyncio.create_task(s.read_to_end()) for s in streams]
    for i in range(30):
        await bus.publish(run.run_id, EventType.TASK_PROGRESS, f"step {i}", progress=i)
    await bus.publish(run.run_id, EventType.WORKFLOW_COMPLETED, "done")
    for messages in await asyncio.wait_for(asyncio.gather(*readers), 30):
        assert [e["seq"] for e in events_of(messages)] == list(range(2, 33))
    for s in streams:
        s.close()

    # SIGTERM to the parent stops every process cleanly.
    children = parent.children()
    gw.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(gw.proc.wait, 30) == 0
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive
    assert "Traceback" not in gw.log()


async def test_a_pool_on_a_port_already_taken_exits_1_with_a_clear_error(
    processes: Processes, settings_env: Callable[..., dict[str, str]]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = settings_env(port=port, gateway_workers=2)
        proc = processes.python("tidings.services.gateway", env=env, name="gateway")
        assert await asyncio.to_thread(proc.wait, 30) == 1
    out = processes.output(proc)
    assert f"cannot listen on 127.0.0.1:{port}" in out and "Traceback" not in out
