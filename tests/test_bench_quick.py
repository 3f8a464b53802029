"""The benchmark harness runs end to end on real servers (figures are reported, not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

_BENCH = [sys.executable, "-m", "services.cli", "bench", "--quick"]


def test_bench_quick_publish_and_fanout_complete_and_report_numbers(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [*_BENCH, "--only", "publish", "--only", "fanout", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=110,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"publish", "fanout"}
    for result in results.values():
        assert not result["error"]
        assert result["figure"] > 0 and result["baseline"] > 0 and result["ratio"] > 0
    assert "Tidings benchmarks" in done.stdout and "fan-out" in done.stdout


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
