"""From `measure_hubs` results to a `Result`: figures side by side, ratios, one note per server.

Results map a server key to its `Measured`, or to the error string of a baseline that failed; every
helper here accepts both, so one failed baseline shows as `None` figures and an error note
instead of hiding the servers that did run.
"""

from __future__ import annotations

from typing import Any

from .measure import DISTURBED_PCT, Measured

__all__ = [
    "SUMMARY",
    "details_of",
    "figure_of",
    "ratio",
    "server_note",
    "summary_of",
]

SUMMARY = (
    "cpu_us_per_delivery",
    "p50_ms",
    "p99_ms",
    "deliveries",
    "expected",
    "deliveries_per_s",
    "drain_s",
    "server_cpu_pct",
    "valkey_cpu_s",
    "publisher_cpu_s",
    "crowd_cpu_pct",
    "other_cpu_pct",
)

Results = dict[str, Measured | str]


def figure_of(results: Results, key: str, tag: str, name: str) -> float | None:
    """One figure of one server's load, or None if that server failed or has no such figure."""
    measured = results.get(key)
    if not isinstance(measured, Measured) or tag not in measured.loads:
        return None
    value = getattr(measured.loads[tag], name)
    return None if value is None else float(value)


def details_of(results: Results) -> dict[str, Any]:
    """Every server's figures for a Result's details; a failed server as `{"error": ...}`."""
    return {
        key: m.as_dict() if isinstance(m, Measured) else {"error": m} for key, m in results.items()
    }


def summary_of(
    results: Results, tags: list[str], names: tuple[str, ...] = SUMMARY
) -> dict[str, dict[str, dict[str, float | None]]]:
    """`{figure name: {load tag: {server: value}}}`: the figures side by side."""
    return {
        name: {tag: {key: figure_of(results, key, tag, name) for key in results} for tag in tags}
        for name in names
    }


def ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or den is None or den == 0 else num / den


def _num(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def server_note(key: str, m: Measured | str, tags: list[str]) -> str:
    """One line per server: CPU per delivery, latency and drain per load, or its error."""
    if isinstance(m, str):
        return f"{key}: {m}"
    parts = []
    for tag in tags:
        f = m.loads[tag]
        lost = "" if f.complete else f", only {f.deliveries:,}/{f.expected:,} delivered"
        if f.other_cpu_pct > DISTURBED_PCT:
            lost += f" [disturbed: {f.other_cpu_pct:.0f}% of a core busy outside the benchmark]"
        parts.append(
            f"{tag}: {_num(f.cpu_us_per_delivery)} us/delivery "
            f"({f.server_cpu_pct:.0f}% of a core), p50 {_num(f.p50_ms)} / p99 {_num(f.p99_ms)} "
            f"ms, drained {f.drain_s:.2f} s after the last publish{lost}"
        )
    again = f" (best of {m.attempts} attempts, the machine was busy)" if m.attempts > 1 else ""
    return f"{key}{again}: " + "; ".join(parts)
