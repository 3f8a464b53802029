"""`tidings watch RUN`: follow a run's SSE stream with a live progress bar, losing nothing.

The stream is read with httpx and parsed with `tidings.sse.SSEParser`. A dropped connection (or a
stream that ends before the run's terminal event) is resumed with `Last-Event-ID`, so the gateway
replays exactly what was missed. The exit code is the run's outcome: 0 completed, 1 failed,
3 cancelled (130 when the watcher itself is interrupted).

Output: on a terminal, a rich progress bar (current task and message) with the notable events
printed above it; elsewhere plain lines; `--json` prints every event as one JSON line instead.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any

import httpx
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from tidings.sse import SSEMessage, SSEParser

from .api import auth_headers, error_message
from .errors import EXIT_CANCELLED, EXIT_ERROR, EXIT_OK, CliError
from .tables import make_console

__all__ = ["EXIT_FOR_EVENT", "watch_run"]

EXIT_FOR_EVENT = {
    "workflow_completed": EXIT_OK,
    "workflow_failed": EXIT_ERROR,
    "workflow_cancelled": EXIT_CANCELLED,
}
# Printed as lines above the bar; the rest (progress, tokens) only move the bar.
_NOTABLE = {
    "workflow_started",
    "workflow_paused",
    "workflow_resumed",
    "task_started",
    "task_completed",
    "task_failed",
    "task_retrying",
    "iteration_started",
    "iteration_completed",
    "signal_received",
    "worker_lost",
    "log",
    "resync",
    *EXIT_FOR_EVENT,
}
_STYLE = {"workflow_failed": "red", "task_failed": "red", "worker_lost": "yellow"}


class _Display:
    def __init__(self, run_id: str, console: Console, json_lines: bool, out: IO[str]) -> None:
        self.run_id = run_id
        self.console = console
        self.json_lines = json_lines
        self.out = out
        self.progress: Progress | None = None
        self.bar: TaskID | None = None
        self.tokens = ""

    def __enter__(self) -> _Display:
        if not self.json_lines and self.console.is_terminal:
            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[message]}", markup=False),
                console=self.console,
            )
            self.progress.start()
            self.bar = self.progress.add_task(self.run_id[:12], total=100, message="connecting")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def note(self, text: str) -> None:
        if not self.json_lines:
            self.console.print(f"[dim]{escape(text)}[/dim]")

    def event(self, msg: SSEMessage, ev: dict[str, Any]) -> None:
        if self.json_lines:
            print(msg.data, file=self.out, flush=True)
            return
        kind = msg.event
        data = ev.get("data") or {}
        if kind == "token":
            self.tokens = (self.tokens + str(data.get("text", ""))).replace("\n", " ")[-60:]
        message = ev.get("message") or self.tokens
        if self.progress is not None and self.bar is not None:
            self.progress.update(
                self.bar,
                completed=float(ev.get("progress", 0.0)),
                description=ev.get("task") or self.run_id[:12],
                message=str(message)[:80],
            )
        if kind in _NOTABLE:
            pct = float(ev.get("progress", 0.0))
            task = f" [{ev['task']}]" if ev.get("task") else ""
            text = f"{pct:5.1f}% {kind}{task} {ev.get('message', '')}".rstrip()
            style = _STYLE.get(kind, "")
            self.console.print(escape(text), style=style, highlight=False)
            if kind == "workflow_completed" and ev.get("data"):
                result = json.dumps(ev["data"], ensure_ascii=False)
                self.console.print(escape(result[:2000]), highlight=False)


def watch_run(
    base_url: str,
    run_id: str,
    *,
    json_lines: bool = False,
    give_up_after_s: float = 60.0,
    out: IO[str] | None = None,
    token: str | None = None,
) -> int:
    """Follow the run to its end; returns the exit code for its outcome. `token`: the bearer
    token to send (TIDINGS_TOKEN)."""
    try:
        return _follow(
            base_url, run_id, json_lines, give_up_after_s, out or sys.stdout, auth_headers(token)
        )
    except KeyboardInterrupt:
        print(
            f"tidings: stopped watching; run {run_id} goes on (`tidings watch {run_id}` to "
            f"follow it again, `tidings signal {run_id} cancel` to cancel it)",
            file=sys.stderr,
            flush=True,
        )
        raise


def _follow(
    base_url: str,
    run_id: str,
    json_lines: bool,
    give_up_after_s: float,
    out: IO[str],
    auth: dict[str, str],
) -> int:
    console = make_console(out)
    parser = SSEParser()
    url = f"{base_url.rstrip('/')}/api/runs/{run_id}/events"
    # Reads may pause for a heartbeat interval (15 s by default); allow a few.
    timeout = httpx.Timeout(10.0, read=60.0)
    failing_since: float | None = None
    delay = 0.2
    with httpx.Client(timeout=timeout) as client, _Display(run_id, console, json_lines, out) as ui:
        while True:
            headers = {"Accept": "text/event-stream", **auth}
            if parser.last_event_id:
                headers["Last-Event-ID"] = parser.last_event_id
            try:
                with client.stream("GET", url, headers=headers) as response:
                    if response.status_code in (400, 404, 401, 403):
                        response.read()
                        raise CliError(error_message(response))
                    response.raise_for_status()
                    failing_since, delay = None, 0.2
                    for chunk in response.iter_bytes():
                        for msg in parser.feed(chunk):
                            code = _handle(msg, ui)
                            if code is not None:
                                return code
                ui.note("stream ended before the run did; resuming")
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > give_up_after_s:
                    raise CliError(f"lost the stream of run {run_id}: {exc}") from None
                ui.note(f"connection lost ({type(exc).__name__}); resuming in {delay:.1f}s")
            if parser.retry is not None:
                delay = max(delay, min(parser.retry / 1000, 5.0))
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _handle(msg: SSEMessage, ui: _Display) -> int | None:
    try:
        ev = json.loads(msg.data)
    except ValueError:
        return None
    if not isinstance(ev, dict):
        return None
    ui.event(msg, ev)
    return EXIT_FOR_EVENT.get(msg.event)
