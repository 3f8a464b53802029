"""A soak's report: what ran, what was injected, what was measured, and every failure."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from .checks import RunFindings, ViewerFindings
from .resources import Snapshot

__all__ = ["Report"]


@dataclass
class Report:
    profile: str
    seed: int
    seconds: float = 0.0
    stack: dict[str, Any] = field(default_factory=dict)
    load_runs: int = 0  # runs the load started (chat tools start more)
    warmup_runs: int = 0
    runs: RunFindings | None = None
    viewers: ViewerFindings | None = None
    faults: list[dict[str, Any]] = field(default_factory=list)
    abuse_sent: int = 0
    abuse_answers: dict[str, int] = field(default_factory=dict)
    abuse_classes: dict[str, int] = field(default_factory=dict)
    abuse_unexpected: dict[str, int] = field(default_factory=dict)
    api_statuses: dict[str, int] = field(default_factory=dict)
    signals: dict[str, int] = field(default_factory=dict)
    baseline: Snapshot = field(default_factory=Snapshot)
    final: Snapshot = field(default_factory=Snapshot)
    memory: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = _plain(self)
        return out

    def lines(self) -> list[str]:
        out = [f"soak {self.profile}, seed {self.seed}: {self.seconds:.0f} s"]
        out.append(f"  processes: {self.stack}")
        if self.runs is not None:
            r = self.runs
            out.append(
                f"  runs: {r.runs} in the namespace ({self.load_runs} started by the load, "
                f"{self.warmup_runs} by the warm-up, {r.marker_runs} by chat tools; "
                f"{dict(r.by_workflow)}), statuses {dict(r.by_status)}, {r.events} events in "
                f"their logs, {r.steps_completed} steps and tasks completed, "
                f"{r.started_twice} planned runs started twice, {r.refused_at_start} refused "
                f"at start for their input (abuse)"
            )
            out.append(
                f"  recovery: {r.worker_lost} worker_lost, {r.attempts_over_one} runs on a later "
                f"attempt, {r.task_retries} task retries; chat tool calls: "
                f"{r.markers_acknowledged} acknowledged, {r.marker_runs} runs started by them, "
                f"{r.markers_rerun} re-run after a crash"
            )
        if self.viewers is not None:
            v = self.viewers
            out.append(
                f"  viewers: {v.viewers} ({dict(v.by_kind)}, {v.slow} slow), "
                f"{v.viewer_runs} viewer-runs, {v.delivered} events delivered"
            )
            out.append(
                f"  connections: {v.connects} ({v.reconnects} reconnects, {v.refused} refused, "
                f"{v.unavailable} 503 during outages), orphaned monty starts {v.orphaned_starts}"
            )
            out.append(f"  events lost: {v.lost}, duplicated: {v.duplicated}, resyncs: {v.resyncs}")
        for fault in self.faults:
            out.append(
                f"  fault at {fault['at_s']} s: {fault['kind']} {fault['target']} "
                f"({fault['took_s']} s)"
            )
        out.append(f"  abuse: {self.abuse_sent} requests, answers {self.abuse_classes}")
        if self.abuse_unexpected:
            out.append(f"  abuse answered unexpectedly (not 5xx): {self.abuse_unexpected}")
        out.append(f"  signals: {self.signals}")
        for label, text in self.memory.items():
            out.append(f"  memory {label}: {text}")
        out.append(
            f"  gateway tasks: baseline {self.baseline.tasks}, after {self.final.tasks}; "
            f"viewers after {self.final.viewers}, viewer leases in Redis after "
            f"{self.final.leases}"
        )
        out.append(f"  gateway counters (live processes): {self.final.counters}")
        out.append(
            f"  Valkey connections: baseline {self.baseline.clients} "
            f"{self.baseline.clients_by}, after {self.final.clients} {self.final.clients_by}"
        )
        out.append(f"  failures: {len(self.failures)}")
        out += [f"    - {f}" for f in self.failures[:60]]
        if len(self.failures) > 60:
            out.append(f"    … {len(self.failures) - 60} more")
        return out


def _plain(value: Any) -> Any:
    """JSON-ready: dataclasses and Counters become plain dicts (`asdict` would turn a Counter's
    items into tuple keys)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return value
