"""Publish throughput on a Valkey Cluster: 1 primary against 3, and how the load spreads.

Figure: events/s that `_PUBLISHERS` publisher processes get through the real publish script
(`Bus.publish_many`, one script call per event, `_BATCH` per round trip, `_IN_FLIGHT` round trips
in flight per process) into runs spread over every bucket, on a cluster of 3 primaries. Baseline,
side by side in the same run: the same load on a cluster of 1 primary (cluster mode as well, so
the only difference is how many shards share it). Neither has replicas: replication is a cost of
its own, reported by the failover tests, not a shard count's.

Per node, from INFO before and after the measured window: commands/s
(`total_commands_processed`), CPU seconds per second (`used_cpu_user` + `used_cpu_sys`), and the
share of all commands the busiest node took (1/3 would be perfectly even). From those, the
busiest node's CPU per event the cluster published, on 1 primary and on 3: their ratio
(`ceiling_ratio`) is how much further out the point lies where a server runs out of CPU.

What to expect on a small machine: every node is a single-threaded server, and the publishers are
Python processes on the same cores. With fewer cores than nodes + publishers, the publishers and
the nodes compete for CPU, so the throughput ratio says more about the machine than about the
cluster; the per-node commands/s and CPU show what a cluster is for: each primary carries a third
of the load, so the ceiling is three servers' instead of one's.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tidings.bus import Bus
from tidings.embedded import stop_process
from tidings.embedded_cluster import EmbeddedCluster
from tidings.events import EventType
from tidings.keys import CLUSTER_BUCKETS, Keys
from tidings.redis import connect
from tidings.runs import RunStore

from .harness import BenchError, Result, Servers
from .targets import Target

__all__ = ["bench_cluster", "publisher_main"]

_PUBLISHERS = 2
_RUNS_PER_PUBLISHER = 32
_BATCH = 50
_IN_FLIGHT = 4
_WARMUP_S = 1.0


async def _publish_for(url: str, namespace: str, seconds: float, warmup: float) -> int:
    """Publish into fresh runs of every bucket for `warmup` + `seconds`; events counted after
    the warm-up."""
    redis = connect(url, cluster=True)
    keys = Keys(namespace, buckets=CLUSTER_BUCKETS)
    bus, store = Bus(redis, keys), RunStore(redis, keys)
    try:
        runs = [(await store.create("bench", None)).run_id for _ in range(_RUNS_PER_PUBLISHER)]
        counted = 0
        start = time.perf_counter()
        measure_from, stop_at = start + warmup, start + warmup + seconds

        async def lane(lane_no: int) -> None:
            nonlocal counted
            n = 0
            while (now := time.perf_counter()) < stop_at:
                commands = [
                    bus.command(
                        runs[(lane_no + i) % len(runs)],
                        EventType.TASK_PROGRESS,
                        f"step {n + i}",
                        task="bench",
                        data={"i": n + i},
                    )
                    for i in range(_BATCH)
                ]
                n += _BATCH
                for outcome in await bus.publish_many(commands):
                    if isinstance(outcome, Exception):
                        raise outcome
                if now >= measure_from:
                    counted += _BATCH

        await asyncio.gather(*(lane(k) for k in range(_IN_FLIGHT)))
        return counted
    finally:
        await redis.aclose()


def publisher_main() -> None:
    """`python -m tidings.services.bench.cluster_publish URL NAMESPACE SECONDS`: publish, then
    print the count of events published in the measured window as JSON."""
    url, namespace, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    count = asyncio.run(_publish_for(url, namespace, seconds, _WARMUP_S))
    print(json.dumps({"events": count}), flush=True)


def _node_stats(cluster: EmbeddedCluster) -> dict[str, tuple[int, float]]:
    """Per primary: (commands processed, CPU seconds used) so far."""
    out: dict[str, tuple[int, float]] = {}
    for node in cluster.primaries():
        stats = _info(node.call("INFO", "stats"))
        cpu = _info(node.call("INFO", "cpu"))
        used = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
        out[node.name] = (int(stats["total_commands_processed"]), used)
    return out


def _info(text: str) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k: v.strip() for k, v in pairs}


def _shape(primaries: int, seconds: float, workdir: Path) -> dict[str, Any]:
    """Publish on a fresh cluster of `primaries`; events/s and per-node figures."""
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    with EmbeddedCluster(workdir / f"p{primaries}", primaries=primaries, replicas=0) as cluster:
        before, t0 = _node_stats(cluster), time.perf_counter()
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tidings.services.bench.cluster_publish",
                    cluster.url,
                    namespace,
                    str(seconds),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            for _ in range(_PUBLISHERS)
        ]
        counts = []
        try:
            for proc in procs:
                out, err = proc.communicate(timeout=seconds + 60)
                if proc.returncode != 0:
                    raise BenchError(f"publisher exited {proc.returncode}: {err.decode()[-800:]}")
                counts.append(int(json.loads(out.decode().strip().splitlines()[-1])["events"]))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    stop_process(proc)
        after, wall = _node_stats(cluster), time.perf_counter() - t0
    nodes = {
        name: {
            "commands_per_s": round((after[name][0] - before[name][0]) / wall),
            "cpu_s_per_s": round((after[name][1] - before[name][1]) / wall, 3),
        }
        for name in before
    }
    total = sum(n["commands_per_s"] for n in nodes.values()) or 1
    events_per_s = sum(counts) / seconds
    busiest_cpu = max(n["cpu_s_per_s"] for n in nodes.values())
    return {
        "events_per_s": events_per_s,
        "nodes": nodes,
        "busiest_share": max(n["commands_per_s"] for n in nodes.values()) / total,
        # CPU the busiest node spends per event the whole cluster publishes: what caps it.
        "busiest_cpu_us_per_event": busiest_cpu / events_per_s * 1e6 if events_per_s else None,
    }


async def bench_cluster(srv: Servers, quick: bool) -> Result:
    """`srv`'s single Valkey is not used: each shape forms its own cluster."""
    del srv
    seconds = 4.0 if quick else 10.0
    with tempfile.TemporaryDirectory(prefix="tidings-bench-cluster-") as tmp:
        one = await asyncio.to_thread(_shape, 1, seconds, Path(tmp))
        three = await asyncio.to_thread(_shape, 3, seconds, Path(tmp))
    figure, baseline = three["events_per_s"], one["events_per_s"]
    per_node = ", ".join(
        f"{name} {n['commands_per_s']:,} cmd/s ({n['cpu_s_per_s']:.2f} CPU)"
        for name, n in three["nodes"].items()
    )
    (alone,) = one["nodes"].values()
    # How much further the cluster goes before its busiest server is out of CPU than one does.
    one_cost, three_cost = one["busiest_cpu_us_per_event"], three["busiest_cpu_us_per_event"]
    ceiling = one_cost / three_cost if one_cost and three_cost else None
    return Result(
        name="cluster",
        title="cluster: publish events/s on 3 primaries vs 1",
        figure=figure,
        unit="events/s",
        baseline=baseline,
        baseline_label="the same load on a 1-primary cluster",
        ratio=figure / baseline,
        targets=[Target("busiest_share", "<=", 0.5, "busiest of 3 primaries <= 50% of commands")],
        figures={"busiest_share": three["busiest_share"], "ceiling_ratio": ceiling},
        details={"three_primaries": three, "one_primary": one, "cores": os.cpu_count()},
        notes=[
            f"{_PUBLISHERS} publisher processes x {_IN_FLIGHT} pipelines of {_BATCH} script "
            f"calls, {_RUNS_PER_PUBLISHER} runs each over {CLUSTER_BUCKETS} buckets, "
            f"{seconds:.0f} s measured",
            f"3 primaries: {per_node}; busiest took {three['busiest_share']:.0%} of commands",
            f"1 primary: {alone['commands_per_s']:,} cmd/s ({alone['cpu_s_per_s']:.2f} CPU)",
            f"busiest node's CPU per event published: {one_cost or 0:.1f} us on 1 primary, "
            f"{three_cost or 0:.1f} us on 3: the ceiling where a server runs out of CPU is "
            f"{ceiling or 0:.1f}x further out",
            f"{os.cpu_count()} cores for every node and publisher: see the module docstring",
        ],
    )


if __name__ == "__main__":
    publisher_main()
