"""deploy/nginx.conf with the real nginx in front of two real gateways.

The project's config, rendered the way README "Deploy" says to on a host (the gateways' line, as
envsubst fills it) plus what a test needs of its own (free ports, a temporary prefix, pid, logs
and temp dirs, a self-signed certificate made here with the `openssl` CLI), runs under Debian's
nginx (1.22) in front of two gateway processes on loopback. Checked: an event goes through
unbuffered and uncompressed at once; viewers of a gateway that stops resume on the other with no
gap and no duplicate, never meeting a 502; eight Chromium tabs over HTTP/2 stay live at once.

Needs /usr/sbin/nginx (`apt-get install nginx`): without it these tests skip, except under
`CI=true`, where a missing nginx is a failure. The browser test needs Chromium likewise.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, Processes
from tests.test_gateway_support import Gateway, RawStream, wait_for
from tidings.bus import Bus
from tidings.control import Control
from tidings.embedded import free_port
from tidings.events import EventType

NGINX = Path("/usr/sbin/nginx")
if not NGINX.exists():
    if os.environ.get("CI") == "true":
        raise RuntimeError("CI needs /usr/sbin/nginx for the deploy tests (apt-get install nginx)")
    pytest.skip("no /usr/sbin/nginx on this machine", allow_module_level=True)

pytestmark = pytest.mark.slow

CONF = ROOT / "deploy" / "nginx.conf"
PROMPT_S = 5.0  # a bound well under the gateway's 15 s heartbeat, which would flush any buffer
QUIET = {"min_sleep_s": 60, "max_sleep_s": 60}  # a run no worker takes: the test publishes


def render(tmp: Path, http_port: int, tls_port: int, gateways: list[int]) -> str:
    """deploy/nginx.conf as a host renders it (README "Deploy"), on this test's ports and paths.
    Each replaced piece must be there exactly once (or as often as said): a config that changed
    shape fails here rather than being half rendered."""
    text = CONF.read_text()

    def once(old: str, new: str, count: int = 1) -> None:
        nonlocal text
        assert text.count(old) == count, f"{old!r} appears {text.count(old)} times in {CONF}"
        text = text.replace(old, new)

    # What `envsubst '$NGINX_GATEWAYS'` does: that one variable, nginx's own `$name`s untouched.
    once("${NGINX_GATEWAYS}", " ".join(f"server 127.0.0.1:{port};" for port in gateways))
    once("listen 8080;", f"listen 127.0.0.1:{http_port};")
    once("listen 8443 ssl http2;", f"listen 127.0.0.1:{tls_port} ssl http2;")
    once("pid /run/nginx.pid;", f"pid {tmp}/nginx.pid;")
    once("/etc/nginx/certs/", f"{tmp}/certs/", count=2)
    temp = "".join(
        f"    {kind}_temp_path {tmp}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    once("http {\n", "http {\n" + temp)
    return text


def make_cert(tmp: Path) -> None:
    certs = tmp / "certs"
    certs.mkdir()
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
            *("-keyout", str(certs / "tls.key"), "-out", str(certs / "tls.crt")),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


@dataclass
class Front:
    """nginx on `http_port` (HTTP/1.1) and `tls_port` (HTTP/2 over TLS) before `gateways`."""

    http_port: int
    tls_port: int
    gateways: list[Gateway]
    proc: subprocess.Popen[bytes]
    processes: Processes

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    def log(self) -> str:
        return self.processes.output(self.proc)


@pytest.fixture
async def front(
    gateway_factory: Callable[..., Any], processes: Processes, tmp_path: Path
) -> AsyncIterator[Front]:
    gateways = [await gateway_factory(trusted_proxies="127.0.0.1") for _ in range(2)]
    http_port, tls_port = free_port(), free_port()
    make_cert(tmp_path)
    conf = tmp_path / "nginx.conf"
    conf.write_text(render(tmp_path, http_port, tls_port, [gw.port for gw in gateways]))
    command = [str(NGINX), "-p", f"{tmp_path}/", "-c", str(conf), "-e", f"{tmp_path}/error.log"]
    tested = await asyncio.create_subprocess_exec(
        *command, "-t", stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output, _ = await tested.communicate()
    assert tested.returncode == 0, output.decode()
    proc = processes.start([*command, "-g", "daemon off;"], name="nginx")
    front = Front(http_port, tls_port, gateways, proc, processes)

    async def ready() -> bool:
        assert proc.poll() is None, (tmp_path / "error.log").read_text()
        try:
            async with httpx.AsyncClient(verify=False, timeout=5) as client:
                return (await client.get(f"{front.https}/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    await wait_for(ready, "nginx serving")
    yield front


async def _viewers(gw: Gateway) -> float:
    return (await gw.metrics()).get("tidings_gateway_viewers", 0.0)


async def test_an_event_goes_through_nginx_unbuffered_and_uncompressed(
    front: Front, control: Control, bus: Bus
) -> None:
    rec = await control.start("monty", QUIET)
    path = f"/api/runs/{rec.run_id}/events"
    stream = await RawStream.open(front.http_port, path, headers={"Accept-Encoding": "gzip"})
    try:
        assert stream.status == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in stream.headers

        async def arrives(message: str) -> None:
            while True:
                for msg in await stream.recv():
                    if msg.data and json.loads(msg.data)["message"] == message:
                        return
                assert not stream.ended, "the stream ended"

        # The first event proves the stream is live end to end; the second, one small event
        # among nothing else, must come through alone, at once.
        await bus.publish(rec.run_id, EventType.LOG, "first")
        await asyncio.wait_for(arrives("first"), PROMPT_S)
        await bus.publish(rec.run_id, EventType.LOG, "second")
        await asyncio.wait_for(arrives("second"), PROMPT_S)
    finally:
        stream.close()

    # The access log has paths without their query strings: a share token never lands there.
    line = '"GET /healthz HTTP/1.1" 200'
    before = front.log().count(line)
    async with httpx.AsyncClient(verify=False, timeout=10) as client:
        resp = await client.get(f"{front.https}/healthz?token=not-for-the-log-0123456789")
    assert resp.status_code == 200
    await wait_for(lambda: front.log().count(line) > before, "the access log line")
    assert "not-for-the-log" not in front.log()


@dataclass
class Viewer:
    """A client that behaves like EventSource: on an ended stream it reconnects with
    Last-Event-ID; on an error status it gives up for good, as a browser does."""

    port: int
    path: str
    seqs: list[int] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    last_id: str = ""

    async def run(self) -> None:
        while True:
            headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
            try:
                stream = await RawStream.open(self.port, self.path, headers=headers)
            except ConnectionError:
                continue  # nginx closed before answering: reconnect, as EventSource does
            self.statuses.append(stream.status)
            if stream.status != 200:
                stream.close()
                return
            try:
                async for msg in stream.messages():
                    if msg.data and msg.event != "resync":
                        self.seqs.append(json.loads(msg.data)["seq"])
                        self.last_id = msg.id
            finally:
                stream.close()


async def test_viewers_of_a_stopped_gateway_resume_on_the_other(
    front: Front, control: Control, bus: Bus
) -> None:
    rec = await control.start("monty", QUIET)
    viewers = [Viewer(front.http_port, f"/api/runs/{rec.run_id}/events") for _ in range(8)]
    tasks = [asyncio.create_task(v.run()) for v in viewers]
    try:
        # nginx spreads the streams over both gateways.
        async def both_serve() -> bool:
            counts = [await _viewers(gw) for gw in front.gateways]
            return sum(counts) == len(viewers) and all(counts)

        await wait_for(both_serve, "viewers on both gateways")

        async def publish(n: int) -> list[int]:
            for i in range(n):
                await bus.publish(rec.run_id, EventType.LOG, f"event {i}")
            return [e.seq for e in await bus.events(rec.run_id, limit=1000)]

        def caught_up(log: list[int]) -> Callable[[], bool]:
            def check() -> bool:
                for viewer, task in zip(viewers, tasks, strict=True):
                    assert not task.done(), f"a viewer gave up: {viewer.statuses}"
                return all(v.seqs[-1:] == log[-1:] for v in viewers)

            return check

        log = await publish(20)
        await wait_for(caught_up(log), "every viewer has the first 20 events")
        stopping = front.gateways[0]
        stopping.proc.send_signal(signal.SIGTERM)
        # Events go on while the gateway stops and its viewers come back through nginx.
        log = await publish(10)
        # uvicorn stops gracefully, then dies of the signal it caught (so a parent sees it).
        assert stopping.proc.wait(15) in (0, -signal.SIGTERM)
        log = await publish(10)
        await wait_for(caught_up(log), "every viewer has all 40 events", timeout=30)
        for viewer in viewers:
            assert viewer.seqs == log, viewer  # no gap, no duplicate
            assert set(viewer.statuses) == {200}, viewer.statuses  # never a 502
        assert sum(len(v.statuses) > 1 for v in viewers) >= 1  # some did resume
        assert await _viewers(front.gateways[1]) == len(viewers)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# Each tab follows its own run with an EventSource of its own: over HTTP/1.1 a browser holds at
# most six connections per origin and the seventh stream would wait; over HTTP/2 they all share
# one connection.
FOLLOW = """(run) => {
  window.got = [];
  const source = new EventSource(`/api/runs/${run}/events`);
  source.addEventListener("log", (e) => window.got.push(JSON.parse(e.data).seq));
  return performance.getEntriesByType("navigation")[0].nextHopProtocol;
}"""


async def test_eight_chromium_tabs_stay_live_over_http2(
    front: Front, control: Control, bus: Bus
) -> None:
    # Chromium from the dashboard tests' support module (which skips without it, but not in CI).
    from playwright.async_api import async_playwright

    from tests.test_dashboard_support import CHROMIUM, FLAGS

    runs = [(await control.start("monty", QUIET)).run_id for _ in range(8)]
    stop = asyncio.Event()

    async def publish() -> None:  # every run publishes an event every 100 ms
        i = 0
        while not stop.is_set():
            for run in runs:
                await bus.publish(run, EventType.LOG, f"tick {i}")
            i += 1
            await asyncio.sleep(0.1)

    publisher = asyncio.create_task(publish())
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            context = await browser.new_context(ignore_https_errors=True)
            tabs = []
            for run in runs:
                page = await context.new_page()
                await page.goto(f"{front.https}/")
                assert await page.evaluate(FOLLOW, run) == "h2"
                tabs.append(page)
            # All eight live at the same time: each gets three more events after the last opened.
            counts = [await tab.evaluate("() => window.got.length") for tab in tabs]
            for tab, count in zip(tabs, counts, strict=True):
                await tab.wait_for_function(
                    "(n) => window.got.length >= n", arg=count + 3, timeout=30_000
                )
            for tab in tabs:
                got = await tab.evaluate("() => window.got")
                assert got == list(range(got[0], got[0] + len(got))), got  # in order, no gap
            await context.close()
        finally:
            await browser.close()
            stop.set()
            await publisher
    assert '"GET / HTTP/2.0" 200' in front.log()
