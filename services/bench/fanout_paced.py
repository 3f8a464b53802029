"""Paced fan-out: one run, many viewers, events one by one at a live run's pace.

`paced`: 1,000 viewers (quick: 200), 40 ev/s then 10 ev/s for 10 s each (quick: 3 s), on one
Tidings gateway process and on each baseline in turn (`hubs.py`), with the same crowd and the
same publisher (`measure.py`). The figure is the gateway's CPU per delivered event at 40 ev/s;
the baseline is the sse-starlette hub; the floor shows what is left to gain.

`paced5k`: 5,000 viewers (quick: 500) at 10 ev/s for 10 s (quick: 3 s): publish → receive
latency on Tidings, the floor and sse-starlette, which may not keep up; what it does is reported
(deliveries, how long it took to drain after the last publish) rather than failing the run.
"""

from __future__ import annotations

from .crowd import crowd_processes
from .harness import Result, Servers
from .hubs import FLOOR, LABELS, NAIVE, SSE_STARLETTE, TIDINGS
from .measure import Load, Measured, bench_bus, measure_hubs
from .report import details_of, figure_of, ratio, server_note, summary_of
from .targets import Target

__all__ = ["bench_paced", "bench_paced5k"]

_TIMED = 50
_CPU_VS_SSE = 2.5  # Tidings' CPU per delivery at most 1/2.5 of the sse-starlette hub's
_VS_FLOOR = 2.0  # and at most twice the floor's; p99 too


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


async def bench_paced(srv: Servers, quick: bool) -> Result:
    viewers, seconds = (200, 3.0) if quick else (1_000, 10.0)
    loads = [Load("r40", 40, seconds), Load("r10", 10, seconds)]
    tags = [load.tag for load in loads]
    keys = [TIDINGS, FLOOR, SSE_STARLETTE, NAIVE]  # the two the targets compare, back to back
    async with bench_bus(srv) as bus:
        results = await measure_hubs(
            srv, bus, keys, loads, viewers_per_run=viewers, timed=_TIMED, retry=not quick
        )
    cpu = {k: figure_of(results, k, "r40", "cpu_us_per_delivery") for k in keys}
    p99 = {k: figure_of(results, k, "r10", "p99_ms") for k in keys}
    figure, sse, floor = cpu[TIDINGS], cpu[SSE_STARLETTE], cpu[FLOOR]
    vs_floor_cpu = ratio(figure, floor)  # how many floors Tidings costs
    vs_floor_p99 = ratio(p99[TIDINGS], p99[FLOOR])
    vs_sse = ratio(sse, figure)
    tidings = results[TIDINGS]
    assert isinstance(tidings, Measured)
    vs_sse_r10 = ratio(
        figure_of(results, SSE_STARLETTE, "r10", "cpu_us_per_delivery"),
        figure_of(results, TIDINGS, "r10", "cpu_us_per_delivery"),
    )
    notes = [
        f"Tidings costs {_x(vs_floor_cpu)}x the floor's CPU per delivery at 40 ev/s and "
        f"{_x(vs_floor_p99)}x its p99 at 10 ev/s; sse-starlette costs {_x(vs_sse_r10)}x "
        "Tidings' per delivery at 10 ev/s"
    ]
    sse_drain = figure_of(results, SSE_STARLETTE, "r40", "drain_s")
    if sse_drain is not None and sse_drain > 1.0:
        notes.append(
            f"sse-starlette could not keep up at 40 ev/s (drained {sse_drain:.1f} s after the "
            "last publish): its figure there is a saturated one, with more events per wake-up"
        )
    return Result(
        name="paced",
        title=f"fan-out paced ({viewers:,} viewers x 40 ev/s, CPU per delivery)",
        figure=figure,
        unit="us/delivery",
        baseline=sse,
        baseline_label=LABELS[SSE_STARLETTE],
        ratio=vs_sse,
        targets=[
            Target("ratio", ">=", _CPU_VS_SSE, f"<= 1/{_CPU_VS_SSE} of sse-starlette per delivery"),
            Target("cpu_vs_floor", "<=", _VS_FLOOR, f"<= {_VS_FLOOR:.0f}x floor per delivery"),
            Target("p99_vs_floor", "<=", _VS_FLOOR, f"p99 at 10 ev/s <= {_VS_FLOOR:.0f}x floor"),
        ],
        figures={"cpu_vs_floor": vs_floor_cpu, "p99_vs_floor": vs_floor_p99},
        details={
            "viewers": viewers,
            "timed_viewers": _TIMED,
            "seconds": seconds,
            "rates": [load.rate for load in loads],
            "crowd_processes": crowd_processes(viewers),
            "cpu_us_per_delivery_vs_sse_starlette": vs_sse,
            "cpu_us_per_delivery_vs_sse_starlette_r10": vs_sse_r10,
            "cpu_us_per_delivery_vs_floor": vs_floor_cpu,
            "p99_ms_r10_vs_floor": vs_floor_p99,
            "summary": summary_of(results, tags),
            "servers": details_of(results),
        },
        notes=[
            *notes,
            *(server_note(k, results[k], tags) for k in keys),
            f"one gateway process; viewers in {crowd_processes(viewers)} client processes, "
            f"{_TIMED} of them timed; CPU = the server's utime+stime over the window",
            f"tidings delivered {tidings.crowd['counted']:,} task_progress events in all",
        ],
    )


async def bench_paced5k(srv: Servers, quick: bool) -> Result:
    viewers, seconds = (500, 3.0) if quick else (5_000, 10.0)
    loads = [Load("r10", 10, seconds)]
    keys = [TIDINGS, FLOOR, SSE_STARLETTE]
    async with bench_bus(srv) as bus:
        results = await measure_hubs(
            srv, bus, keys, loads, viewers_per_run=viewers, timed=_TIMED, retry=not quick
        )
    p99 = {k: figure_of(results, k, "r10", "p99_ms") for k in keys}
    vs_floor = ratio(p99[TIDINGS], p99[FLOOR])
    sse = results[SSE_STARLETTE]
    if isinstance(sse, str):
        sse_outcome = f"sse-starlette failed: {sse}"
    else:
        f = sse.loads["r10"]
        kept_up = f.complete and f.drain_s < 1.0
        sse_outcome = (
            f"sse-starlette {'kept up' if kept_up else 'fell behind'}: "
            f"{f.deliveries:,}/{f.expected:,} delivered, {f.drain_s:.1f} s to drain after the "
            f"last publish, server at {f.server_cpu_pct:.0f}% of a core"
        )
    return Result(
        name="paced5k",
        title=f"fan-out paced ({viewers:,} viewers x 10 ev/s, p99 latency)",
        figure=p99[TIDINGS],
        unit="ms",
        baseline=p99[FLOOR],
        baseline_label=LABELS[FLOOR],
        ratio=ratio(p99[FLOOR], p99[TIDINGS]),
        targets=[Target("p99_vs_floor", "<=", _VS_FLOOR, f"p99 <= {_VS_FLOOR:.0f}x floor")],
        figures={"p99_vs_floor": vs_floor},
        details={
            "viewers": viewers,
            "timed_viewers": _TIMED,
            "seconds": seconds,
            "rate": 10,
            "crowd_processes": crowd_processes(viewers),
            "p99_ms_vs_floor": vs_floor,
            "sse_starlette": sse_outcome,
            "summary": summary_of(results, ["r10"]),
            "servers": details_of(results),
        },
        notes=[sse_outcome, *(server_note(k, results[k], ["r10"]) for k in keys)],
    )
