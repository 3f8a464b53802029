"""Runs the selected benchmarks one after another, each on its own fresh servers, and reports.

A benchmark that cannot run (a service missing, a run that never finishes) is reported as an
error with its reason and the others still run; the exit code is then 1.
"""

from __future__ import annotations

import asyncio
import json
import logging
import platform
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .harness import Result, Servers

__all__ = ["BENCHMARKS", "run_benchmarks"]

log = logging.getLogger(__name__)

Bench = Callable[[Servers, bool], Awaitable[Result]]


def _registry() -> dict[str, Bench]:
    from .breadth import bench_breadth
    from .cluster_publish import bench_cluster
    from .dispatch import bench_dispatch
    from .fanout import bench_fanout
    from .fanout_idle import bench_idle
    from .fanout_manyruns import bench_manyruns
    from .fanout_paced import bench_paced, bench_paced5k
    from .fanout_scaling import bench_scaling
    from .publish import bench_publish
    from .recovery import bench_recovery
    from .sweep_load import bench_sweep

    return {
        "fanout": bench_fanout,
        "paced": bench_paced,
        "paced5k": bench_paced5k,
        "idle": bench_idle,
        "manyruns": bench_manyruns,
        "scaling": bench_scaling,
        "publish": bench_publish,
        "dispatch": bench_dispatch,
        "recovery": bench_recovery,
        "sweep": bench_sweep,
        "breadth": bench_breadth,
        "cluster": bench_cluster,
    }


BENCHMARKS = (
    "fanout",
    "paced",
    "paced5k",
    "idle",
    "manyruns",
    "scaling",
    "publish",
    "dispatch",
    "recovery",
    "sweep",
    "breadth",
    "cluster",
)


async def _one(name: str, fn: Bench, quick: bool) -> Result:
    started = time.perf_counter()
    try:
        with Servers() as srv:
            result = await fn(srv, quick)
    except Exception as exc:  # reported, and the other benchmarks still run
        log.debug("benchmark %s failed", name, exc_info=True)
        result = Result(name=name, title=name, error=f"{type(exc).__name__}: {exc}")
    result.seconds = time.perf_counter() - started
    return result


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit in ("s", "ms"):
        return f"{value:.2f} {unit}"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def _table(results: Sequence[Result]) -> Table:
    table = Table(title="Tidings benchmarks", header_style="bold")
    for col in ("benchmark", "figure", "baseline", "ratio", "target", "met"):
        table.add_column(col, justify="left" if col in ("benchmark", "target") else "right")
    for r in results:
        if r.error:
            table.add_row(escape(r.title), "[red]error[/]", "-", "-", escape(r.target), "-")
            continue
        met = "-" if r.met is None else ("[green]yes[/]" if r.met else "[red]no[/]")
        table.add_row(
            escape(r.title),
            _fmt(r.figure, r.unit),
            _fmt(r.baseline, r.unit)
            + (f"\n[dim]{escape(r.baseline_label)}[/]" if r.baseline_label else ""),
            "-" if r.ratio is None else f"{r.ratio:.1f}x",
            escape(r.target),
            met,
        )
    return table


def _is_tty() -> bool:
    return Console().is_terminal


def run_benchmarks(
    *,
    quick: bool = False,
    only: Sequence[str] | None = None,
    json_path: str | None = None,
    console: Console | None = None,
) -> int:
    # Piped output would otherwise wrap the table at 80 columns.
    console = console or Console(highlight=False, width=None if _is_tty() else 120)
    registry = _registry()
    names = list(only) if only else list(BENCHMARKS)
    unknown = [n for n in names if n not in registry]
    if unknown:
        from tidings.services.cli.errors import EXIT_USAGE, CliError

        raise CliError(
            f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}",
            EXIT_USAGE,
        )
    results: list[Result] = []
    for name in names:
        console.print(f"[bold]{name}[/] ...", end=" ")
        result = asyncio.run(_one(name, registry[name], quick))
        results.append(result)
        if result.error:
            console.print(f"[red]error[/] ({result.seconds:.1f} s): {escape(result.error)}")
        else:
            unit = "" if result.unit in ("s", "ms") else f" {result.unit}"
            console.print(f"{_fmt(result.figure, result.unit)}{unit} ({result.seconds:.1f} s)")
    console.print(_table(results))
    for r in results:
        for note in r.notes:
            console.print(f"[dim]{r.name}: {escape(note)}[/]")
    if json_path:
        payload: dict[str, Any] = {
            "quick": quick,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "results": [r.as_dict() for r in results],
        }
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n")
        console.print(f"results written to {path}")
    return 1 if any(r.error for r in results) else 0
