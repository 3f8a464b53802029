"""Viewers as browsers and scripts hold them, recording every event they are given.

Kinds:
- `native`: `GET /api/runs/{id}/events`, resumed with `Last-Event-ID`.
- `mux`: `GET /api/streams?run=A/CURSOR&run=B…` (some with `feed=runs`), resumed with each
  unfinished run's cursor in the URL and the last id seen in `Last-Event-ID`.
- `seed000`: `GET /api/v1/workflows/{id}/stream` (a `connected` line, then the seed's fields).
- `monty`: `POST` or `GET /monty/stream` starts a monty run and streams it; a reconnect sends
  `Last-Event-ID: <run>/<stream id>` and resumes that run, or gets 204 once it has ended.

A viewer whose connection ends before its runs have ended (a gateway restarted, a drop) reconnects
to any gateway that is up, as a browser behind a load balancer would; one that gets 503 while the
Valkey is down retries. Slow viewers (`slow`) have a 4 KB receive buffer and a 4 KB stream buffer,
read 2-4 KB at a time with a pause after each, and every 25 reads stop reading for 0.5-1.5 s.

What is recorded per run is the `seq` of every event received in order (a monty stream carries
stream ids, mapped to `seq` against the log at the end), and `-1` where a `resync` came.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from tidings.sse import SSEMessage, SSEParser

from .client import Conn, open_conn
from .world import World

__all__ = ["RESYNC", "TERMINAL", "ViewerLog", "ViewerPlan", "run_viewer"]

TERMINAL = frozenset({"workflow_completed", "workflow_failed", "workflow_cancelled"})
RESYNC = -1
_STALL_S = 40.0  # heartbeats come every 15 s: a stream silent this long is stuck
_SLOW_RCVBUF = 4096


@dataclass
class ViewerPlan:
    vid: int
    kind: str  # native | mux | seed000 | monty
    runs: list[str]
    at: float  # seconds into the load when it connects
    slow: bool = False
    feed: bool = False
    prefer: int = 0
    monty_input: dict[str, Any] | None = None
    monty_post: bool = True
    stop_after: float | None = None  # monty: `POST /workflow/{id}/signal/stop` after this


@dataclass
class ViewerLog:
    plan: ViewerPlan
    seqs: dict[str, list[int]] = field(default_factory=dict)
    ids: dict[str, list[str]] = field(default_factory=dict)  # monty streams: stream ids
    cursor: dict[str, str] = field(default_factory=dict)  # run -> last stream id
    last_event_id: str = ""
    done: set[str] = field(default_factory=set)
    messages: int = 0
    resyncs: int = 0
    connects: int = 0
    reconnects: int = 0
    unavailable: int = 0  # 503 while the Valkey was down
    refused: int = 0
    orphaned: list[str] = field(default_factory=list)  # monty starts lost before the first event
    finished: bool = False
    finished_at: float = 0.0  # seconds into the load
    problems: list[str] = field(default_factory=list)

    @property
    def runs(self) -> list[str]:
        return list(self.plan.runs)


def _request(plan: ViewerPlan, log: ViewerLog) -> tuple[str, str, dict[str, str], bytes]:
    headers = {"Accept": "text/event-stream"}
    if plan.kind == "native":
        run = plan.runs[0]
        if run in log.cursor:
            headers["Last-Event-ID"] = log.cursor[run]
        return "GET", f"/api/runs/{run}/events", headers, b""
    if plan.kind == "seed000":
        run = plan.runs[0]
        if run in log.cursor:
            headers["Last-Event-ID"] = log.cursor[run]
        return "GET", f"/api/v1/workflows/{run}/stream", headers, b""
    if plan.kind == "mux":
        params = [
            ("run", f"{run}/{log.cursor[run]}" if run in log.cursor else run)
            for run in plan.runs
            if run not in log.done
        ]
        if plan.feed:
            params.append(("feed", "runs"))
        if log.last_event_id:
            headers["Last-Event-ID"] = log.last_event_id
        return "GET", "/api/streams?" + urlencode(params, safe="/"), headers, b""
    # monty
    if plan.runs:
        run = plan.runs[0]
        headers["Last-Event-ID"] = f"{run}/{log.cursor[run]}"
        return "GET", "/monty/stream", headers, b""
    monty = plan.monty_input or {}
    if plan.monty_post:
        headers["Content-Type"] = "application/json"
        return "POST", "/monty/stream", headers, json.dumps(monty).encode()
    query = "&".join(f"{k}={quote(str(v))}" for k, v in monty.items())
    return "GET", "/monty/stream?" + query, headers, b""


def _complete(plan: ViewerPlan, log: ViewerLog) -> bool:
    return bool(plan.runs) and all(run in log.done for run in plan.runs)


async def run_viewer(plan: ViewerPlan, log: ViewerLog, world: World) -> None:
    """Follow the plan's runs to their ends, reconnecting as often as needed."""
    rng = world.rng
    first = True
    while not _complete(plan, log):
        if world.past_deadline():
            log.problems.append(f"not finished by the deadline; done {sorted(log.done)}")
            return
        gw = world.pick(plan.prefer if first else None)
        if gw is None:
            await asyncio.sleep(0.2)
            continue
        method, path, headers, body = _request(plan, log)
        started_monty = plan.kind == "monty" and not plan.runs
        t0 = time.monotonic()
        try:
            conn = await open_conn(
                gw.port,
                method,
                path,
                headers=headers,
                body=body,
                rcvbuf=_SLOW_RCVBUF if plan.slow else None,
                limit=_SLOW_RCVBUF if plan.slow else 256 * 1024,
            )
        except (OSError, ConnectionError) as exc:
            log.refused += 1
            if not world.restarting_during(gw.slot, t0, time.monotonic()):
                log.problems.append(f"{gw.label} refused a connection, not restarting: {exc!r}")
            await asyncio.sleep(0.1 + rng.random() * 0.3)
            continue
        first = False
        log.connects += 1
        try:
            if conn.status == 204 and plan.runs:
                log.done.update(plan.runs)  # the run ended and this viewer has its last event
                break
            if conn.status != 200:
                text = (await conn.body())[:300]
                if conn.status == 503 and world.redis_down_during(t0, time.monotonic()):
                    log.unavailable += 1
                    await asyncio.sleep(0.2 + rng.random() * 0.3)
                    continue
                what = f"viewer {plan.vid} ({plan.kind}) {method} {path[:120]}: {conn.status}"
                log.problems.append(f"{what} {text!r}")
                if conn.status >= 500:
                    world.fail(f"{what} {text!r}")
                return
            await _consume(conn, plan, log, world)
        except TimeoutError:
            log.problems.append(f"viewer {plan.vid}: no bytes for {_STALL_S} s on {gw.label}")
        except (OSError, ConnectionError):
            pass  # dropped: reconnect below
        finally:
            conn.close()
        if started_monty and not plan.runs:
            log.orphaned.append(f"started on {gw.label}, dropped before its first event")
        if not _complete(plan, log):
            log.reconnects += 1
            await asyncio.sleep(0.05 + rng.random() * 0.25)
    log.finished = True
    log.finished_at = world.now()


async def _consume(conn: Conn, plan: ViewerPlan, log: ViewerLog, world: World) -> None:
    parser = SSEParser()
    rng = world.rng
    reads = 0
    while True:
        size = rng.randint(2048, 4096) if plan.slow else 65536
        async with asyncio.timeout(_STALL_S):
            data = await conn.read(size)
        if data is None:
            return
        for msg in parser.feed(data):
            _record(msg, plan, log, world)
        if _complete(plan, log):
            return  # with `feed=runs` the stream never ends by itself: the client leaves
        if plan.slow:
            reads += 1
            # A few KB at a time, and now and then nothing at all for a second or two.
            stall = reads % 25 == 0
            await asyncio.sleep(rng.uniform(0.5, 1.5) if stall else 0.02)


def _record(msg: SSEMessage, plan: ViewerPlan, log: ViewerLog, world: World) -> None:
    kind = plan.kind
    if msg.event == "resync":
        body = json.loads(msg.data)
        run = str(body.get("run") or (plan.runs[0] if plan.runs else ""))
        log.resyncs += 1
        log.seqs.setdefault(run, []).append(RESYNC)
        log.ids.setdefault(run, []).append("resync")
        return
    if kind == "mux" and msg.event in ("snapshot", "run"):
        return  # the lifecycle feed
    if kind == "mux" and msg.event == "missing":
        log.problems.append(f"viewer {plan.vid}: run missing: {msg.data[:100]}")
        return
    if kind == "seed000" and not msg.id:
        return  # the `connected` line each connection starts with
    body = json.loads(msg.data)
    log.messages += 1
    if kind == "monty":
        run, _, sid = msg.id.partition("/")
        if not plan.runs:
            plan.runs.append(run)
            if plan.stop_after is not None:
                world.spawn(_stop_later(run, plan.stop_after, world), name=f"stop-{run}")
        log.ids.setdefault(run, []).append(sid)
        log.cursor[run] = sid
        log.last_event_id = msg.id
        if body.get("event") in TERMINAL:
            log.done.add(run)
        return
    if kind == "seed000":  # the seed's fields: no `id`, `run_id` or `type`
        run, sid, type = plan.runs[0], msg.id, body["event_type"]
    else:
        run, sid, type = str(body["run_id"]), str(body["id"]), body["type"]
    log.seqs.setdefault(run, []).append(int(body["seq"]))
    log.cursor[run] = sid
    log.last_event_id = msg.id
    if type in TERMINAL:
        log.done.add(run)


async def _stop_later(run: str, after: float, world: World) -> None:
    await asyncio.sleep(after)
    await world.call_until("seed003-stop", "POST", f"/workflow/{run}/signal/stop", done={200, 409})
