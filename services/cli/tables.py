"""Tables the CLI prints (runs, workflows, settings)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import IO, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["make_console", "print_env", "print_runs", "print_workflows"]

_STATUS_STYLE = {
    "completed": "green",
    "failed": "red",
    "cancelled": "yellow",
    "running": "cyan",
    "paused": "magenta",
}


def make_console(file: IO[str] | None = None) -> Console:
    """A console for the CLI's output; piped output is not wrapped at 80 columns."""
    console = Console(file=file, highlight=False)
    if not console.is_terminal:
        console = Console(file=file, highlight=False, width=200, soft_wrap=True)
    return console


def print_runs(runs: list[dict[str, Any]], console: Console | None = None) -> None:
    console = console or make_console()
    if not runs:
        console.print("no runs")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("RUN", "WORKFLOW", "STATUS", "PROGRESS", "CREATED", "MESSAGE"):
        table.add_column(column, no_wrap=column != "MESSAGE", overflow="fold")
    for run in runs:
        status = str(run.get("status", ""))
        # Text, never markup: a status without a style, or a message with brackets in it, is
        # shown as it is.
        table.add_row(
            Text(str(run.get("run_id", ""))),
            Text(str(run.get("workflow", ""))),
            Text(status, style=_STATUS_STYLE.get(status, "")),
            f"{float(run.get('progress') or 0):.0f}%",
            str(run.get("created_at", ""))[:19].replace("T", " "),
            Text(str(run.get("error") or run.get("message") or "")[:60]),
        )
    console.print(table)


def print_workflows(workflows: list[dict[str, Any]], console: Console | None = None) -> None:
    """The catalog: each workflow's current version, the workers serving it, older versions."""
    console = console or make_console()
    if not workflows:
        console.print("no workflows: no worker has published any (start one: tidings worker)")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("WORKFLOW", "VERSION", "WORKERS", "OTHER VERSIONS", "DESCRIPTION"):
        table.add_column(column, no_wrap=column != "DESCRIPTION", overflow="fold")
    for wf in workflows:
        served = bool(wf.get("served"))
        workers = Text(
            str(wf.get("workers", 0)) if served else "none", style="" if served else "red"
        )
        others = [
            f"{v.get('version')} ({len(v.get('workers') or [])})"
            for v in wf.get("versions") or []
            if v.get("version") != wf.get("version")
        ]
        description = str(wf.get("description") or "").strip().splitlines()
        table.add_row(
            Text(str(wf.get("name", ""))),
            Text(str(wf.get("version", ""))),
            workers,
            Text(", ".join(others)),
            Text(description[0][:80] if description else ""),
        )
    console.print(table)


def print_env(rows: Iterable[tuple[str, str, str]], console: Console | None = None) -> None:
    console = console or make_console()
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("VARIABLE", "DEFAULT", "MEANING"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    console.print(table)
