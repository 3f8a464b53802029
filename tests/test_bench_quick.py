"""The benchmark harness runs end to end on real servers (figures are reported, not asserted)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.test_bench_targets import assert_met_follows_from_figures
from tidings.sdk import registry
from tidings.services.bench import crowd_client
from tidings.services.bench.harness import percentile
from tidings.services.bench.runner import BENCHMARKS
from tidings.services.bench.workflows import EMIT

pytestmark = pytest.mark.slow

_BENCH = [sys.executable, "-m", "tidings.services.cli", "bench", "--quick"]


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
        assert_met_follows_from_figures(result)
    assert "Tidings benchmarks" in done.stdout
    return done.stdout, results


def test_bench_quick_publish_and_fanout_complete_and_report_numbers(tmp_path: Path) -> None:
    stdout, results = _bench(tmp_path, ["publish", "fanout"], 110)
    assert "fan-out" in stdout and "one worker" in stdout
    publish = results["publish"]["details"]
    # The worker really published every event (the benchmark checks the run's seq, else errors).
    assert publish["events"] > 0 and publish["worker_wall_s"] > 0
    assert publish["naive_3rt_events_per_s"] > 0 and publish["publish_many_events_per_s"] > 0


@pytest.mark.timeout(120)
def test_bench_quick_cluster_publishes_on_1_and_3_primaries_and_reports_each_node(
    tmp_path: Path,
) -> None:
    stdout, results = _bench(tmp_path, ["cluster"], 110)
    assert "3 primaries vs 1" in stdout
    details = results["cluster"]["details"]
    three, one = details["three_primaries"], details["one_primary"]
    assert len(three["nodes"]) == 3 and len(one["nodes"]) == 1
    # Every primary of the three took part of the load, and none took all of it.
    assert all(node["commands_per_s"] > 0 for node in three["nodes"].values())
    assert 1 / 3 <= three["busiest_share"] < 1 and one["busiest_share"] == 1
    assert three["events_per_s"] == results["cluster"]["figure"] > 0


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


@pytest.mark.timeout(170)
def test_bench_quick_paced_idle_and_manyruns_measure_tidings_and_every_baseline(
    tmp_path: Path,
) -> None:
    stdout, results = _bench(tmp_path, ["paced", "idle", "manyruns"], 160)
    assert "fan-out paced" in stdout and "idle viewers" in stdout

    paced = results["paced"]["details"]
    servers = paced["servers"]
    assert set(servers) == {"tidings", "sse-starlette", "naive", "floor"}
    for key, server in servers.items():
        assert "error" not in server, (key, server)
        for tag in ("r40", "r10"):
            load = server[tag]
            assert load["cpu_us_per_delivery"] > 0 and load["server_cpu_s"] > 0, (key, tag)
            assert load["p99_ms"] >= load["p50_ms"] > 0 and load["latency_samples"] > 0
            assert load["valkey_cpu_s"] >= 0 and load["publisher_cpu_s"] > 0
    # No event lost by Tidings: every viewer counted every event of both loads.
    tidings = servers["tidings"]
    for tag in ("r40", "r10"):
        load = tidings[tag]
        assert load["events_per_run"] > 0 and load["complete"] is True
        assert load["deliveries"] == load["expected"] == load["events_per_run"] * paced["viewers"]
    crowd = tidings["crowd"]
    per_viewer = tidings["r40"]["events_per_run"] + tidings["r10"]["events_per_run"]
    assert crowd["viewers"] == crowd["done"] == paced["viewers"] and crowd["failed"] == 0
    assert crowd["min_count"] == crowd["max_count"] == per_viewer
    summary = paced["summary"]["cpu_us_per_delivery"]["r40"]
    assert results["paced"]["figure"] == summary["tidings"]
    assert results["paced"]["baseline"] == summary["sse-starlette"]
    assert paced["cpu_us_per_delivery_vs_floor"] > 0 and paced["p99_ms_r10_vs_floor"] > 0

    idle = results["idle"]["details"]
    assert set(idle["servers"]) == {"tidings", "sse-starlette", "floor", "naive"}
    for key, server in idle["servers"].items():
        assert "error" not in server, (key, server)
        assert server["kb_per_viewer"] > 0 and server["idle_cpu_pct"] >= 0
        assert server["rss_connected_mb"] > server["rss_before_mb"] > 0
        assert server["crowd"]["done"] == idle["viewers"] and server["crowd"]["failed"] == 0
    assert results["idle"]["figure"] == idle["kb_per_viewer"]["tidings"]

    many = results["manyruns"]["details"]
    assert set(many["servers"]) == {"tidings", "sse-starlette", "floor"}
    for key, server in many["servers"].items():
        assert "error" not in server, (key, server)
        assert server["r5"]["cpu_us_per_delivery"] > 0 and server["r5"]["p99_ms"] > 0
    load = many["servers"]["tidings"]["r5"]
    assert load["deliveries"] == load["expected"] == load["events_per_run"] * many["viewers"]


async def test_crowd_viewer_counts_each_event_once_however_the_stream_is_split() -> None:
    # The kept tail is as long as `event: workflow_completed`, so a whole `event: task_progress`
    # fits in it: it was once counted again with the next chunk.
    crowd = crowd_client._Crowd(1, b"event: task_progress", b"event: workflow_completed")
    viewer = crowd_client._Viewer(crowd, b"", timed=False)
    viewer.data_received(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    events = [b"id: 1-%d\nevent: task_progress\ndata: {}\n\n" % i for i in range(500)]
    events = [e for event in events for e in (event, b": ping\n\n")]
    events.append(b"id: 2-0\nevent: workflow_completed\ndata: {}\n\n")
    stream = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events)
    rng = random.Random(7)
    at = 0
    while at < len(stream) and not viewer.finished:
        step = rng.randint(1, 40)
        viewer.data_received(stream[at : at + step])
        at += step
    assert (viewer.n, viewer.pings, crowd.done) == (500, 500, 1)


def test_bench_rejects_an_unknown_benchmark() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tidings.services.cli", "bench", "--only", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert "unknown benchmark(s) nope" in done.stderr


def test_the_bench_workflow_is_registered_for_the_benchmark_only() -> None:
    definition = registry.get_workflow(EMIT)
    assert definition.Input.model_validate({"n": 5}).model_dump() == {"n": 5}
    assert "publish" in BENCHMARKS
    # The shipped catalog does not list it: only importing tidings.services.bench registers it.
    listed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import tidings.services.workflows; from tidings import registry; "
            "print(sorted(registry.workflows))",
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
