"""Gateway metrics in the Prometheus text format.

The fan-out path touches its counters once per event per viewer, so they are plain integers on a
`Stats` object rather than prometheus-client metric objects (whose `inc()` takes a lock). A custom
collector turns them into metric families only when `/metrics` is scraped. Each app gets its own
registry, so several apps in one process (tests) never collide.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "Gauges", "Stats", "make_registry", "render", "running_tasks"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(slots=True)
class Stats:
    """Monotonic counters and high-water marks of one gateway process."""

    events_received: int = 0  # messages from Redis pub/sub on run channels
    summaries_received: int = 0  # messages on the lifecycle channel
    sse_messages: int = 0
    direct_writes: int = 0  # of those, written by the hub straight to a viewer's transport
    socket_writes: int = 0  # the transport writes that took (a burst shares one per viewer)
    sse_bytes: int = 0
    catchups: int = 0  # times a viewer replayed from the log (first connect included)
    replayed_events: int = 0
    overflows: int = 0  # a viewer's buffer filled up: it was switched to catch-up
    resyncs: int = 0
    slow_disconnects: int = 0
    pubsub_reconnects: int = 0
    redis_retries: int = 0  # log reads retried while Redis was unreachable
    buffer_high: int = 0  # the most events any one viewer has ever had buffered
    memory_trims: int = 0  # freed memory given back after the last viewer left (`trim.py`)


def running_tasks() -> int:
    """asyncio tasks of the running loop (a leak shows as a count that only grows)."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # scraped outside a running loop
        return 0


@dataclass(slots=True)
class Gauges:
    """Live values read from the hub at scrape time."""

    viewers: Callable[[], int]
    lifecycle_viewers: Callable[[], int]
    channels: Callable[[], int]
    connected: Callable[[], bool]
    buffer_limit: int
    tasks: Callable[[], int] = running_tasks


_COUNTERS = (
    ("events_received", "Run events received from Redis pub/sub."),
    ("summaries_received", "Run lifecycle summaries received from Redis pub/sub."),
    ("sse_messages", "SSE messages written to viewers."),
    ("direct_writes", "SSE messages the hub wrote straight to a quiet viewer's transport."),
    ("socket_writes", "Writes of those messages: messages read from Redis at once share one."),
    ("sse_bytes", "SSE bytes written to viewers."),
    ("catchups", "Replays from the event log (first connects and lagging viewers)."),
    ("replayed_events", "Events sent from the log rather than live."),
    ("overflows", "Viewer buffers that filled up and were dropped for a catch-up."),
    ("resyncs", "Resync events sent because a cursor fell off the trimmed log."),
    ("slow_disconnects", "Viewers disconnected because they accepted no bytes in time."),
    ("pubsub_reconnects", "Reconnections of the pub/sub connection."),
    ("redis_retries", "Log reads retried while Redis was unreachable."),
    ("memory_trims", "Times freed memory was given back to the system after the last viewer left."),
)


class _Collector(Collector):
    def __init__(self, stats: Stats, gauges: Gauges) -> None:
        self.stats = stats
        self.gauges = gauges

    def collect(self) -> Iterator[Metric]:
        for name, doc in _COUNTERS:
            yield CounterMetricFamily(f"tidings_gateway_{name}", doc, getattr(self.stats, name))
        g = self.gauges
        for name, doc, value in (
            ("viewers", "Connected viewers of run event streams.", g.viewers()),
            (
                "lifecycle_viewers",
                "Connected viewers of the run list stream.",
                g.lifecycle_viewers(),
            ),
            ("channels", "Pub/sub channels subscribed.", g.channels()),
            ("pubsub_connected", "1 while the pub/sub connection is up.", int(g.connected())),
            (
                "viewer_buffer_max",
                "Most events any viewer has had buffered.",
                self.stats.buffer_high,
            ),
            ("viewer_buffer_limit", "Per-viewer buffer bound (events).", g.buffer_limit),
            ("tasks", "asyncio tasks in this process, the scrape's own included.", g.tasks()),
        ):
            yield GaugeMetricFamily(f"tidings_gateway_{name}", doc, value)


def make_registry(stats: Stats, gauges: Gauges) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(stats, gauges))
    ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return bytes(generate_latest(registry))
