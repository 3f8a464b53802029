"""A benchmark's goals as data: `Target(metric, op, value)`, judged against the result's figures.

A result used to carry its target as text and `met` as a flag each benchmark set by hand, so
nothing tied the two together (and a test could only check that `met` was a bool). Now a result
holds its `Target`s and its named figures, and `met` is derived: a target is met when its figure
was measured and compares as the target says; a result is met when every target is. A figure
that was not measured (a baseline failed, the figure is None) meets nothing. A result without
targets has no verdict (`None`).

The figures a target may name are the result's own (`figure`, `baseline`, `ratio`) and any
others the benchmark adds to `figures` (a derived ratio such as `cpu_vs_floor`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Op", "Target", "verdict"]

Op = Literal["<=", ">=", "<", ">"]

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}


@dataclass(frozen=True, slots=True)
class Target:
    """`metric op value`, e.g. `Target("p50_ms", "<=", 5.0, "p50 <= 5 ms")`. `text` is how the
    report shows it (default: the comparison itself)."""

    metric: str
    op: Op
    value: float
    text: str = ""

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"unknown comparison {self.op!r}; one of {', '.join(_OPS)}")

    @property
    def label(self) -> str:
        return self.text or f"{self.metric} {self.op} {self.value:g}"

    def met_by(self, figures: Mapping[str, float | None]) -> bool:
        """Whether the figure this target names meets it (False when it was not measured)."""
        figure = figures.get(self.metric)
        if figure is None or math.isnan(figure):
            return False
        return _OPS[self.op](figure, self.value)

    def as_dict(self, figures: Mapping[str, float | None]) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "op": self.op,
            "value": self.value,
            "text": self.label,
            "figure": figures.get(self.metric),
            "met": self.met_by(figures),
        }


def verdict(targets: Sequence[Target], figures: Mapping[str, float | None]) -> bool | None:
    """Every target met (True), one missed (False), or no targets (None)."""
    if not targets:
        return None
    return all(target.met_by(figures) for target in targets)
