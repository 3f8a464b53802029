"""Many small runs: 1,000 runs (quick: 100) x 2 viewers each x 5 ev/s per run, for 10 s (quick:
3 s), the shape of a busy deployment where most runs have one or two people watching.

Here per-event costs dominate (each event reaches only two viewers): the pub/sub parse, the
per-channel bookkeeping, the SSE framing. The publisher staggers the runs evenly, so this is
5,000 evenly spaced events a second (quick: 500), pipelined when several fall due together.
The figure is Tidings' CPU per delivered event; the baseline the sse-starlette hub's; the floor
is measured too, for reference.
"""

from __future__ import annotations

from .crowd import crowd_processes
from .harness import Result, Servers
from .hubs import FLOOR, LABELS, SSE_STARLETTE, TIDINGS
from .measure import Load, Measured, bench_bus, measure_hubs
from .report import details_of, figure_of, ratio, server_note, summary_of
from .targets import Target

__all__ = ["bench_manyruns"]

_TIMED = 50
_CPU_VS_SSE = 2.5
_VIEWERS_PER_RUN = 2
_RATE = 5.0


async def bench_manyruns(srv: Servers, quick: bool) -> Result:
    runs, seconds = (100, 3.0) if quick else (1_000, 10.0)
    loads = [Load("r5", _RATE, seconds)]
    keys = [TIDINGS, SSE_STARLETTE, FLOOR]
    async with bench_bus(srv) as bus:
        results = await measure_hubs(
            srv,
            bus,
            keys,
            loads,
            runs=runs,
            viewers_per_run=_VIEWERS_PER_RUN,
            timed=_TIMED,
            retry=not quick,
        )
    cpu = {k: figure_of(results, k, "r5", "cpu_us_per_delivery") for k in keys}
    vs_sse = ratio(cpu[SSE_STARLETTE], cpu[TIDINGS])
    tidings = results[TIDINGS]
    assert isinstance(tidings, Measured)
    viewers = runs * _VIEWERS_PER_RUN
    return Result(
        name="manyruns",
        title=f"fan-out many runs ({runs:,} runs x {_VIEWERS_PER_RUN} viewers x 5 ev/s)",
        figure=cpu[TIDINGS],
        unit="us/delivery",
        baseline=cpu[SSE_STARLETTE],
        baseline_label=LABELS[SSE_STARLETTE],
        ratio=vs_sse,
        targets=[
            Target("ratio", ">=", _CPU_VS_SSE, f"<= 1/{_CPU_VS_SSE} of sse-starlette per delivery")
        ],
        details={
            "runs": runs,
            "viewers_per_run": _VIEWERS_PER_RUN,
            "viewers": viewers,
            "rate_per_run": _RATE,
            "events_per_s": runs * _RATE,
            "seconds": seconds,
            "timed_viewers": _TIMED,
            "crowd_processes": crowd_processes(viewers),
            "cpu_us_per_delivery_vs_sse_starlette": vs_sse,
            "cpu_us_per_delivery_vs_floor": ratio(cpu[TIDINGS], cpu[FLOOR]),
            "summary": summary_of(results, ["r5"]),
            "servers": details_of(results),
        },
        notes=[server_note(k, results[k], ["r5"]) for k in keys],
    )
