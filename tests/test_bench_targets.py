"""A benchmark's `met` is derived from its figures and its targets, never set by hand.

It used to be a flag each benchmark set, next to a target written as text, and the quick-bench
test could only check that it was a bool (`met in (True, False)` holds for any result). Now a
result carries `Target(metric, op, value)`s and `met` follows from the figures they name.
"""

from __future__ import annotations

import operator
from typing import Any

import pytest

from tidings.services.bench.harness import Result
from tidings.services.bench.targets import Target

_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


def assert_met_follows_from_figures(result: dict[str, Any]) -> None:
    """A result as the bench's JSON carries it: each target's `met` is its comparison on the
    figure it names, and the result's `met` is all of them."""
    assert result["targets"], result["name"]
    figures = {**result["figures"], **{k: result[k] for k in ("figure", "baseline", "ratio")}}
    for target in result["targets"]:
        figure = figures.get(target["metric"])
        assert target["figure"] == figure, target
        expected = figure is not None and _OPS[target["op"]](figure, target["value"])
        assert target["met"] is expected, target
    assert result["met"] is all(t["met"] for t in result["targets"]), result["name"]
    assert result["target"] == "; ".join(t["text"] for t in result["targets"])


def test_met_is_derived_from_the_figures_not_set_by_hand() -> None:
    fast = Result("dispatch", "dispatch", figure=3.2, targets=[Target("figure", "<=", 5.0)])
    slow = Result("dispatch", "dispatch", figure=7.9, targets=[Target("figure", "<=", 5.0)])
    assert fast.met is True
    assert slow.met is False
    with pytest.raises(AttributeError):
        fast.met = False  # type: ignore[misc]


def test_every_target_must_be_met_and_each_names_its_own_figure() -> None:
    targets = [
        Target("ratio", ">=", 2.5, "<= 1/2.5 of sse-starlette"),
        Target("cpu_vs_floor", "<=", 2.0, "<= 2x floor"),
    ]
    both = Result("paced", "paced", ratio=3.0, targets=targets, figures={"cpu_vs_floor": 1.5})
    one = Result("paced", "paced", ratio=3.0, targets=targets, figures={"cpu_vs_floor": 2.4})
    assert both.met is True
    assert one.met is False
    assert one.as_dict()["targets"][0]["met"] is True
    assert one.as_dict()["targets"][1] == {
        "metric": "cpu_vs_floor",
        "op": "<=",
        "value": 2.0,
        "text": "<= 2x floor",
        "figure": 2.4,
        "met": False,
    }
    assert one.target == "<= 1/2.5 of sse-starlette; <= 2x floor"
    assert_met_follows_from_figures(both.as_dict())
    assert_met_follows_from_figures(one.as_dict())


def test_a_figure_not_measured_meets_no_target() -> None:
    # A failed baseline leaves the ratio None: that is no evidence the target was met.
    result = Result("idle", "idle", figure=None, targets=[Target("figure", "<=", 16.0)])
    assert result.met is False
    assert result.as_dict()["targets"][0]["figure"] is None


def test_strict_and_inclusive_bounds() -> None:
    at = {"figure": 5.0}
    assert Target("figure", "<=", 5.0).met_by(at) and Target("figure", ">=", 5.0).met_by(at)
    assert not Target("figure", "<", 5.0).met_by(at) and not Target("figure", ">", 5.0).met_by(at)
    with pytest.raises(ValueError, match="unknown comparison"):
        Target("figure", "==", 5.0)  # type: ignore[arg-type]


def test_a_result_in_error_or_without_targets_has_no_verdict() -> None:
    broken = Result("x", "x", figure=1.0, targets=[Target("figure", ">", 0.0)], error="boom")
    assert broken.met is None
    assert Result("x", "x", figure=1.0).met is None
