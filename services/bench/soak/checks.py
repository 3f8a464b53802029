"""What must hold after a soak, read from the soak's own Valkey and from what viewers recorded.

- **Every viewer got every run's log, exactly.** Per viewer and run, the `seq` values received
  (in order, across reconnects) equal the run's log read with XRANGE: no gap, no duplicate, no
  reordering. A monty stream carries stream ids instead of `seq`: each is mapped to its event in
  the log (token events, which that stream leaves out, are left out of the comparison too).
  The one allowed exception is a `resync` (the cursor fell off the trimmed log): right after one
  the received sequence may jump forward, and only there; it must still be strictly increasing
  and end at the run's last event. Each is counted in the report (0 expected: no run here comes
  near `TIDINGS_EVENTS_MAXLEN`).
- **Every run ended**, with the status the soak expects (`completed`; `cancelled` where a cancel
  was accepted; `failed` for a run whose input only the worker can refuse, started by the abuse:
  `catalog.FAILS_AT_START`, whose error must name the problem and whose log must end in
  `workflow_failed`), its log gapless from 1 with one terminal event, last.
- **Completed steps ran once.** A step's checkpoint and its `task_completed` are one script, so
  per `task_id` at most one `task_completed`, and no `task_started` of a step after its
  `task_completed` (that would be a completed step run again). Observed side effect: each chat
  asks a tool to start a `prompt_chain` whose prompt is a marker; the runs carrying a marker
  number at least 1 when the message was acknowledged, and at most 1 + the chat's `worker_lost`
  events (a turn in flight when its worker died may run again: it had not completed).
- **Every planned run started once**, although starts are retried through faults: each carries a
  token in its input, found in exactly one run.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from tidings.keys import Keys

from .catalog import FAILS_AT_START, FailsAtStart
from .viewers import RESYNC, TERMINAL, ViewerLog
from .workload import RunRecord

__all__ = ["RunData", "ViewerFindings", "check_runs", "check_viewers", "read_runs"]


@dataclass
class RunData:
    run_id: str
    record: dict[str, str]
    events: list[dict[str, Any]]

    @property
    def status(self) -> str:
        return self.record.get("status", "")

    @property
    def workflow(self) -> str:
        return self.record.get("workflow", "")

    def fails_at_start(self) -> FailsAtStart | None:
        """The abuse's input only the worker refuses, if this run was started with one."""
        try:
            input = json.loads(self.record.get("input") or "null")
        except ValueError:
            return None
        return next((f for f in FAILS_AT_START.values() if f.matches(self.workflow, input)), None)

    def seqs(self, *, without_tokens: bool = False) -> list[int]:
        return [int(e["seq"]) for e in self.events if not (without_tokens and e["type"] == "token")]


async def read_runs(redis: Redis, keys: Keys) -> dict[str, RunData]:
    """Every run of the namespace: record and whole log."""
    out: dict[str, RunData] = {}
    for member in await redis.zrange(keys.runs, 0, -1):
        run_id = member.decode()
        fields: dict[bytes, bytes] = await redis.hgetall(keys.run(run_id))  # type: ignore[misc]
        record = {k.decode(): v.decode() for k, v in fields.items()}
        events: list[dict[str, Any]] = []
        cursor = "-"
        while True:
            page = await redis.xrange(keys.events(run_id), min=cursor, max="+", count=1000)
            if not page:
                break
            # The stored JSON has no `id`: the entry id is the event's id.
            events += [{**json.loads(entry[b"e"]), "id": eid.decode()} for eid, entry in page]
            cursor = "(" + page[-1][0].decode()
        out[run_id] = RunData(run_id, record, events)
    return out


@dataclass
class RunFindings:
    runs: int = 0
    by_workflow: Counter[str] = field(default_factory=Counter)
    by_status: Counter[str] = field(default_factory=Counter)
    events: int = 0
    worker_lost: int = 0
    task_retries: int = 0
    attempts_over_one: int = 0
    steps_completed: int = 0
    markers_acknowledged: int = 0
    marker_runs: int = 0
    markers_rerun: int = 0
    started_twice: int = 0  # planned runs found more than once (a monty stream restarted)
    refused_at_start: int = 0  # the abuse's runs the worker failed for their input, as it must
    failures: list[str] = field(default_factory=list)


def check_runs(runs: dict[str, RunData], records: list[RunRecord]) -> RunFindings:
    f = RunFindings(runs=len(runs))
    expected = {r.run_id: r.expect for r in records if r.run_id}
    for run in runs.values():
        f.by_workflow[run.workflow] += 1
        f.by_status[run.status] += 1
        f.events += len(run.events)
        seqs = run.seqs()
        if seqs != list(range(1, len(seqs) + 1)):
            f.failures.append(f"run {run.run_id}: log not gapless from 1: {_gaps(seqs)}")
        ends = [e for e in run.events if e["type"] in TERMINAL]
        want = expected.get(run.run_id, {"completed"})
        refused = run.fails_at_start()
        if refused is not None:
            f.refused_at_start += _refused_as_expected(run, refused, f.failures)
        elif run.status not in want:
            why = run.record.get("error") or run.record.get("message", "")
            f.failures.append(
                f"run {run.run_id} ({run.workflow}) is {run.status or 'missing'}, "
                f"expected {'/'.join(sorted(want))}: {why[:200]}"
            )
        if len(ends) != 1 or run.events[-1]["type"] not in TERMINAL:
            f.failures.append(f"run {run.run_id}: {len(ends)} terminal events, not one, last")
        f.worker_lost += sum(e["type"] == "worker_lost" for e in run.events)
        f.task_retries += sum(e["type"] == "task_retrying" for e in run.events)
        f.attempts_over_one += int(run.record.get("attempt", "1") or 1) > 1
        completed: Counter[str] = Counter()
        for e in run.events:
            tid = e.get("task_id")
            if not tid:
                continue
            if e["type"] == "task_completed":
                completed[tid] += 1
            elif e["type"] == "task_started" and completed[tid]:
                f.failures.append(f"run {run.run_id}: step {tid} started again after completing")
        f.steps_completed += len(completed)
        for tid, n in completed.items():
            if n > 1:
                f.failures.append(f"run {run.run_id}: step {tid} completed {n} times")
    _check_markers(runs, records, f)
    _check_started_once(runs, records, f)
    return f


def _refused_as_expected(run: RunData, refused: FailsAtStart, failures: list[str]) -> bool:
    """A run of input only the worker refuses failed at start, naming the problem: its error
    says so, its log ends in `workflow_failed`, and no step of it ran."""
    error = run.record.get("error", "")
    named = f"invalid input for workflow '{refused.workflow}'" in error and refused.problem in error
    last = run.events[-1]["type"] if run.events else None
    ran = any(e["type"] == "task_started" for e in run.events)
    if run.status == "failed" and named and last == "workflow_failed" and not ran:
        return True
    failures.append(
        f"run {run.run_id} ({run.workflow}) of input the worker must refuse: {run.status}, "
        f"last event {last}, {'steps ran, ' if ran else ''}error {error[:200]!r}"
    )
    return False


def _check_started_once(runs: dict[str, RunData], records: list[RunRecord], f: RunFindings) -> None:
    """Each planned run exists once: starts retried after a fault carry an `Idempotency-Key`
    (the API) or resume the definition already executed (seed 000). Only a `/monty/stream`
    whose connection dropped before its first event starts another run, as a browser would."""
    inputs = [r.record.get("input", "") for r in runs.values()]
    for rec in records:
        if rec.run_id is None:
            continue
        n = sum(rec.plan.token in text for text in inputs)
        if n > 1:
            f.started_twice += 1
        if n != 1 and rec.plan.route != "monty-stream":
            f.failures.append(
                f"run #{rec.plan.index} ({rec.plan.workflow} via {rec.plan.route}) "
                f"started {n} times"
            )


def _check_markers(runs: dict[str, RunData], records: list[RunRecord], f: RunFindings) -> None:
    inputs = {r.run_id: r.record.get("input", "") for r in runs.values()}
    for rec in records:
        if not rec.markers or rec.run_id is None or rec.run_id not in runs:
            continue
        lost = sum(e["type"] == "worker_lost" for e in runs[rec.run_id].events)
        for marker, acknowledged in rec.markers.items():
            n = sum(marker in text for text in inputs.values())
            f.marker_runs += n
            f.markers_acknowledged += acknowledged
            f.markers_rerun += max(0, n - 1)
            if acknowledged and n < 1:
                f.failures.append(f"chat {rec.run_id}: acknowledged tool call {marker} never ran")
            if n > 1 + lost:
                f.failures.append(
                    f"chat {rec.run_id}: tool call {marker} ran {n} times with {lost} lost workers"
                )


@dataclass
class ViewerFindings:
    viewers: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    slow: int = 0
    viewer_runs: int = 0  # (viewer, run) pairs followed
    delivered: int = 0  # run events received, all viewers
    connects: int = 0
    reconnects: int = 0
    unavailable: int = 0
    refused: int = 0
    resyncs: int = 0
    lost: int = 0  # events of a run's log a viewer never got
    duplicated: int = 0
    orphaned_starts: int = 0
    failures: list[str] = field(default_factory=list)


def check_viewers(runs: dict[str, RunData], viewers: list[ViewerLog]) -> ViewerFindings:
    f = ViewerFindings(viewers=len(viewers))
    for log in viewers:
        plan = log.plan
        f.by_kind[plan.kind + (" (feed)" if plan.feed else "")] += 1
        f.slow += plan.slow
        f.connects += log.connects
        f.reconnects += log.reconnects
        f.unavailable += log.unavailable
        f.refused += log.refused
        f.resyncs += log.resyncs
        f.orphaned_starts += len(log.orphaned)
        who = f"viewer {plan.vid} ({plan.kind}{', slow' if plan.slow else ''})"
        f.failures += [f"{who}: {p}" for p in log.problems]
        if not log.finished and not log.problems:
            f.failures.append(f"{who}: did not finish")
        for run_id in plan.runs:
            f.viewer_runs += 1
            run = runs.get(run_id)
            if run is None:
                f.failures.append(f"{who}: run {run_id} is not in the namespace")
                continue
            if plan.kind == "monty":
                got = _monty_seqs(run, log.ids.get(run_id, []))
                want = run.seqs(without_tokens=True)
            else:
                got = log.seqs.get(run_id, [])
                want = run.seqs()
            f.delivered += sum(s != RESYNC for s in got)
            problem = compare(got, want)
            if problem is not None:
                missing = len(set(want) - set(got))
                f.lost += missing
                f.duplicated += len(got) - len(set(got))
                f.failures.append(f"{who}, {log.connects} connection(s), run {run_id}: {problem}")
    return f


def _monty_seqs(run: RunData, ids: list[str]) -> list[int]:
    by_id = {str(e["id"]): int(e["seq"]) for e in run.events}
    return [RESYNC if sid == "resync" else by_id.get(sid, 0) for sid in ids]


def compare(got: list[int], want: list[int]) -> str | None:
    """None when `got` is `want` exactly, or differs from it only by jumps right after resyncs."""
    if RESYNC not in got:
        if got == want:
            return None
    elif _jumps_only_after_resyncs(got, want[-1] if want else 0):
        return None
    plain = [s for s in got if s != RESYNC]
    missing = sorted(set(want) - set(plain))
    dups = sorted(s for s, n in Counter(plain).items() if n > 1)
    extra = sorted(set(plain) - set(want))
    order = plain != sorted(plain)
    return (
        f"{len(plain)} events for a log of {len(want)}: missing {_few(missing)}, "
        f"duplicated {_few(dups)}, not in the log {_few(extra)}"
        + (", out of order" if order else "")
        + (f", {got.count(RESYNC)} resync(s)" if RESYNC in got else "")
    )


def _jumps_only_after_resyncs(got: list[int], last: int) -> bool:
    prev, after_resync = 0, False
    for seq in got:
        if seq == RESYNC:
            after_resync = True
            continue
        if not (seq == prev + 1 or (after_resync and seq > prev)):
            return False
        prev, after_resync = seq, False
    return prev == last


def _few(values: list[int]) -> str:
    if not values:
        return "none"
    head = ", ".join(map(str, values[:8]))
    return f"{len(values)} ({head}{', …' if len(values) > 8 else ''})"


def _gaps(seqs: list[int]) -> str:
    missing = sorted(set(range(1, len(seqs) + 1)) - set(seqs))
    dups = sorted(s for s, n in Counter(seqs).items() if n > 1)
    return f"missing {_few(missing)}, duplicated {_few(dups)}"
