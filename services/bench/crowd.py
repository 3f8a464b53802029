"""A crowd of SSE viewers spread over several client processes, with a timed random sample.

The client must never be what limits a benchmark, so the viewers are dealt round-robin over 2-4
`crowd_client` processes under uvloop, each viewer a bare `asyncio.Protocol`. Viewer `i` goes to
process `i % P` and the processes connect in index order, so the server sees the viewers arrive
interleaved, in roughly index order. The timed viewers (the only ones that parse events, to read
the publisher's timestamp) are a random sample of indices: where a viewer sits in the server's
delivery loop decides its latency, and a sample of the first or last connected would be biased.

`Crowd` talks to its processes over pipes (see `crowd_client` for the line protocol): wait until
every viewer is connected, nudge until every viewer has seen an event, poll the running count of
counted events, and collect the final report (counts, failures, latency samples per load).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from tidings.embedded import die_with_parent

from .harness import BenchError

__all__ = ["Counts", "Crowd", "CrowdReport", "crowd_processes"]


class Counts(NamedTuple):
    """The whole crowd's running totals."""

    counted: int  # events of the counted type
    done: int  # viewers that received their terminal event
    failed: int  # viewers that failed
    pings: int  # heartbeat comments received


def crowd_processes(viewers: int) -> int:
    """Client processes for `viewers`: enough that none is busy, few enough to spare the cores."""
    return 2 if viewers <= 2_000 else 4


@dataclass
class CrowdReport:
    """What the whole crowd saw, merged over its processes."""

    viewers: int = 0
    counted: int = 0
    min_count: int = 0
    max_count: int = 0
    done: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Everything but the raw latency samples (those become percentiles elsewhere)."""
        return {k: v for k, v in self.__dict__.items() if k != "latencies"}


class Crowd:
    """`targets[i]` is the URL viewer `i` opens; `timed` of them, chosen at random, are timed."""

    def __init__(
        self,
        targets: list[str],
        *,
        timed: int = 50,
        log_dir: Path,
        processes: int | None = None,
        seed: int | None = None,
    ) -> None:
        self.targets = targets
        self.processes = processes or crowd_processes(len(targets))
        rng = random.Random(seed)
        self.timed = set(rng.sample(range(len(targets)), min(timed, len(targets))))
        self.log_dir = log_dir
        self._procs: list[asyncio.subprocess.Process] = []
        self._logs: list[Path] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    async def __aenter__(self) -> Crowd:
        try:
            await self._spawn()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _spawn(self) -> None:
        urls = sorted(set(self.targets))
        index = {url: i for i, url in enumerate(urls)}
        for p in range(self.processes):
            mine = range(p, len(self.targets), self.processes)
            spec = {
                "urls": urls,
                "targets": [index[self.targets[i]] for i in mine],
                "timed": [k for k, i in enumerate(mine) if i in self.timed],
            }
            log = self.log_dir / f"crowd-{p}.log"
            with log.open("wb") as err:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "tidings.services.bench.crowd_client",
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=err,
                    preexec_fn=die_with_parent,
                    limit=1 << 26,
                )
            self._procs.append(proc)
            self._logs.append(log)
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(spec).encode() + b"\n")
            await proc.stdin.drain()

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for proc in self._procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()

    async def _line(self, p: int, timeout: float) -> str:
        stdout = self._procs[p].stdout
        assert stdout is not None
        try:
            line = await asyncio.wait_for(stdout.readline(), timeout)
        except TimeoutError:
            raise BenchError(f"viewer process {p} silent for {timeout:.0f}s") from None
        if not line:
            tail = self._logs[p].read_text(errors="replace")[-1500:]
            raise BenchError(f"viewer process {p} exited:\n{tail}")
        return line.decode().strip()

    async def _expect(self, word: str, timeout: float) -> None:
        lines = await asyncio.gather(*(self._line(p, timeout) for p in range(self.processes)))
        if any(line != word for line in lines):
            raise BenchError(f"viewer processes said {lines!r}, expected {word!r}")

    async def ready(
        self,
        nudge: Callable[[], Awaitable[None]],
        *,
        every: float | None = None,
        timeout: float = 120,
    ) -> float:
        """Wait until every viewer is connected, then call `nudge` (publish an event) every
        `every` seconds until each has received an event. Returns the seconds it took.

        Each nudge is fanned out to every viewer already connected, so a big crowd is nudged
        less often (default: every 0.2 s up to 2,000 viewers, every second above)."""
        if every is None:
            every = 0.2 if len(self.targets) <= 2_000 else 1.0
        t0 = time.monotonic()
        await self._expect("connected", timeout)
        ready = asyncio.create_task(self._expect("ready", timeout))
        try:
            while not ready.done():
                await nudge()
                await asyncio.wait([ready], timeout=every)
        finally:
            if not ready.done():
                ready.cancel()
                await asyncio.wait([ready])
        await ready
        return time.monotonic() - t0

    async def count(self) -> Counts:
        """The crowd's totals, right now."""
        for proc in self._procs:
            assert proc.stdin is not None
            proc.stdin.write(b"count\n")
        lines = await asyncio.gather(*(self._line(p, 30) for p in range(self.processes)))
        totals = [0, 0, 0, 0]
        for line in lines:
            word, *numbers = line.split()
            if word != "count":
                raise BenchError(f"viewer process said {line!r}")
            totals = [a + int(b) for a, b in zip(totals, numbers, strict=True)]
        return Counts(*totals)

    async def wait_counted(self, expected: int, *, stall_s: float = 2.0, timeout: float) -> int:
        """Poll until `expected` events are counted, nothing arrived for `stall_s`, or `timeout`.
        Returns the count; the caller decides whether a shortfall is an error."""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while True:
            counted = (await self.count()).counted
            now = time.monotonic()
            if counted >= expected or now > deadline:
                return counted
            if counted != last:
                last, since = counted, now
            elif now - since > stall_s:
                return counted
            await asyncio.sleep(0.02)

    async def wait_done(self, timeout: float) -> None:
        """Poll until every viewer has its terminal event or has failed, or `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = await self.count()
            if counts.done + counts.failed >= len(self.targets):
                return
            await asyncio.sleep(0.05)

    async def report(self) -> CrowdReport:
        """Ends the crowd: the merged report of every process."""
        for proc in self._procs:
            assert proc.stdin is not None
            proc.stdin.write(b"report\n")
        merged = CrowdReport(min_count=sys.maxsize)
        for p in range(self.processes):
            part: dict[str, Any] = json.loads(await self._line(p, 60))
            merged.viewers += part["viewers"]
            merged.counted += part["counted"]
            merged.min_count = min(merged.min_count, part["min_count"])
            merged.max_count = max(merged.max_count, part["max_count"])
            merged.done += part["done"]
            merged.failed += part["failed"]
            merged.errors += part["errors"][: 5 - len(merged.errors)]
            for tag, samples in part["latencies"].items():
                merged.latencies.setdefault(tag, []).extend(samples)
        return merged
