"""Gateway workers: one Tidings gateway with `TIDINGS_GATEWAY_WORKERS=1` against `=2`.

Each is measured with the same crowd on the paced shape (1,000 viewers of one run at 40 ev/s for
10 s; quick: 200 viewers, 3 s), CPU summed over the gateway's whole process tree, and then at
saturation: a burst of 500 events (quick: 300) published as fast as pipelines go, deliveries/s
from the first publish until the last delivery is counted. On a 2-core machine the viewers,
Valkey and the publisher share the cores with the gateway, so saturation is the machine's; the
details carry every process's share.

The setting belongs to the gateway; a gateway that does not know it yet refuses to start
("unknown setting"), which this benchmark reports as its error, with the N=1 figures kept.
"""

from __future__ import annotations

from typing import Any

from .cpu import tree_size
from .harness import BenchError, Result, Servers
from .hubs import TIDINGS, running
from .measure import Load, Measured, bench_bus, measure
from .report import ratio, server_note
from .targets import Target

__all__ = ["bench_scaling"]

_TIMED = 50
_CPU_GROWTH = 1.25  # N=2 may cost at most this much more CPU per delivery than N=1


async def _one(srv: Servers, workers: int, loads: list[Load], viewers: int) -> Measured:
    # N=1 is the default: passing it would make a gateway without the setting refuse to start.
    settings = {"gateway_workers": workers} if workers > 1 else {}
    async with bench_bus(srv) as bus:
        with running(srv, TIDINGS, **settings) as hub:
            measured = await measure(srv, bus, hub, loads, viewers_per_run=viewers, timed=_TIMED)
            measured.crowd["gateway_processes"] = tree_size(hub.proc.pid)
    return measured


async def bench_scaling(srv: Servers, quick: bool) -> Result:
    viewers, seconds, burst = (200, 3.0, 300) if quick else (1_000, 10.0, 500)
    loads = [Load("r40", 40, seconds), Load("burst", events=burst)]
    tags = [load.tag for load in loads]
    n1 = await _one(srv, 1, loads, viewers)
    details: dict[str, Any] = {
        "viewers": viewers,
        "seconds": seconds,
        "burst_events": burst,
        "n1": n1.as_dict(),
    }
    result = Result(
        name="scaling",
        title=f"gateway workers 2 vs 1 ({viewers:,} viewers, deliveries/s at saturation)",
        unit="deliveries/s",
        baseline=n1.loads["burst"].deliveries_per_s,
        baseline_label="the same gateway, 1 worker",
        targets=[
            Target("ratio", ">", 1.0, "N=2 more deliveries/s at saturation"),
            Target("cpu_growth", "<=", _CPU_GROWTH, f"CPU per delivery <= {_CPU_GROWTH}x N=1's"),
        ],
        details=details,
        notes=[server_note("N=1", n1, tags)],
    )
    try:
        n2 = await _one(srv, 2, loads, viewers)
    except BenchError as exc:
        if "unknown setting" in str(exc):
            result.error = (
                "this gateway does not know TIDINGS_GATEWAY_WORKERS yet (it refused to start: "
                "unknown setting); only N=1 was measured"
            )
        else:
            result.error = f"N=2 failed: {exc}"
        return result
    details["n2"] = n2.as_dict()
    cpu1 = n1.loads["r40"].cpu_us_per_delivery
    cpu2 = n2.loads["r40"].cpu_us_per_delivery
    growth = ratio(cpu2, cpu1)
    details["cpu_us_per_delivery"] = {"n1": cpu1, "n2": cpu2, "n2_vs_n1": growth}
    sat1, sat2 = n1.loads["burst"].deliveries_per_s, n2.loads["burst"].deliveries_per_s
    details["deliveries_per_s_saturation"] = {"n1": sat1, "n2": sat2}
    result.figure = sat2
    result.ratio = ratio(sat2, sat1)
    result.figures["cpu_growth"] = growth
    result.notes.append(server_note("N=2", n2, tags))
    if n2.crowd["gateway_processes"] < 2:
        result.notes.append("N=2 ran as a single process: the setting had no effect")
    return result
