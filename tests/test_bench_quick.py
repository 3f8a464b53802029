"""The benchmark harness runs end to end on real servers (figures are reported, not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from services.bench.harness import percentile
from services.bench.runner import BENCHMARKS
from services.bench.workflows import EMIT
from shared.workflow import get_workflow
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

_BENCH = [sys.executable, "-m", "services.cli", "bench", "--quick"]


def _bench(tmp_path: Path, names: list[str], timeout: float) -> tuple[str, dict[str, Any]]:
    out = tmp_path / "bench.json"
    only = [arg for name in names for arg in ("--only", name)]
    done = subprocess.run(
        [*_BENCH, *only, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    payload = json.loads(out.read_text())
    assert payload["quick"] is True
    results = {r["name"]: r for r in payload["results"]}
    assert set(results) == set(names)
    for result in results.values():
        assert not result["error"], result["error"]
        assert result["figure"] > 0 and result["baseline"] > 0 and result["ratio"] > 0
        assert result["target"] and result["met"] in (True, False)
    assert "Tidings benchmarks" in done.stdout
    return done.stdout, results


def test_bench_quick_publish_and_fanout_complete_and_report_numbers(tmp_path: Path) -> None:
    stdout, results = _bench(tmp_path, ["publish", "fanout"], 110)
    assert "fan-out" in stdout and "one worker" in stdout
    publish = results["publish"]["details"]
    # The worker really published every event (the benchmark checks the run's seq, else errors).
    assert publish["events"] > 0 and publish["worker_wall_s"] > 0
    assert publish["naive_3rt_events_per_s"] > 0 and publish["publish_many_events_per_s"] > 0


@pytest.mark.timeout(180)
def test_bench_quick_dispatch_recovery_and_breadth_complete(tmp_path: Path) -> None:
    stdout, results = _bench(tmp_path, ["dispatch", "recovery", "breadth"], 170)
    dispatch = results["dispatch"]["details"]
    assert dispatch["p99_ms"] >= dispatch["p50_ms"] > 0 and dispatch["samples"] > 0
    recovery = results["recovery"]
    # --quick computes arq's retry instead of waiting for it, and says so.
    assert recovery["details"]["arq_measured"] is False and "computed" in recovery["baseline_label"]
    assert recovery["figure"] >= min(recovery["details"]["to_worker_lost_s"])
    breadth = results["breadth"]["details"]
    assert breadth["max_jobs_per_worker"] == 2
    assert breadth["research_phase_one_s"] > 0 and breadth["research_phase_four_s"] > 0
    assert "1 run slot + 1 task slot" in stdout


def test_bench_rejects_an_unknown_benchmark() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "bench", "--only", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert "unknown benchmark(s) nope" in done.stderr


def test_the_bench_workflow_is_registered_for_the_benchmark_only() -> None:
    definition = get_workflow(EMIT)
    assert definition.Input.model_validate({"n": 5}).model_dump() == {"n": 5}
    assert "publish" in BENCHMARKS
    # The shipped catalog does not list it: only importing services.bench registers it.
    listed = subprocess.run(
        [
            sys.executable,
            "-c",
            "from shared.workflow import WORKFLOWS, get_workflow; get_workflow('research'); "
            "print(sorted(WORKFLOWS))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert listed.returncode == 0, listed.stderr
    assert EMIT not in listed.stdout and "research" in listed.stdout


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0
    with pytest.raises(ValueError):
        percentile([], 50)
