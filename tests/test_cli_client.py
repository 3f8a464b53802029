"""`tidings run / watch / signal / ls` against a real gateway and worker."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import ROOT, Processes
from tidings.embedded import free_port

CLI = [sys.executable, "-m", "tidings.services.cli"]
QUICK_MONTY = {"min_sleep_s": 0.05, "max_sleep_s": 0.1, "max_iterations": 2}
ENDLESS_MONTY = {"min_sleep_s": 30, "max_sleep_s": 30}


@dataclass
class Stack:
    url: str
    port: int
    env: dict[str, str]
    processes: Processes
    worker: subprocess.Popen[bytes] | None = None

    def gateway(self) -> subprocess.Popen[bytes]:
        proc = self.processes.start([*CLI, "gateway"], env=self.env, name="gateway")
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, self.processes.output(proc)
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, self.processes.output(proc)
            time.sleep(0.05)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args],
            env=self.env_full(),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )

    def env_full(self) -> dict[str, str]:
        return {**os.environ, **self.env}


@pytest.fixture
def stack(processes: Processes, settings_env: Callable[..., dict[str, str]]) -> Iterator[Stack]:
    port = free_port()
    env = settings_env(port=port, log_level="warning")
    stack = Stack(f"http://127.0.0.1:{port}", port, env, processes)
    stack.gateway()
    worker = stack.worker = processes.start([*CLI, "worker"], env=env, name="worker")
    deadline = time.monotonic() + 30
    # Ready once the worker has published its workflows: the gateway knows them from Redis.
    while not any(w["served"] for w in httpx.get(stack.url + "/api/workflows").json()["workflows"]):
        assert worker.poll() is None and time.monotonic() < deadline, processes.output(worker)
        time.sleep(0.05)
    yield stack


@contextlib.contextmanager
def _watching(stack: Stack, run_id: str) -> Iterator[subprocess.Popen[str]]:
    """`tidings watch RUN --json` in the background; killed if still running at the end."""
    with subprocess.Popen(
        [*CLI, "watch", run_id, "--json"],
        env=stack.env_full(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    ) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _rest(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """The rest of the output through the same buffered reader `readline` used (communicate()
    would bypass it and lose what it had already buffered)."""
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()  # until the watcher exits; the test timeout bounds it
    proc.wait(30)
    return out, proc.stderr.read()


def _events(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_run_follow_streams_every_event_and_exits_0(stack: Stack) -> None:
    # No --url: the gateway is found from TIDINGS_PORT, as on the machine running it.
    done = stack.cli("run", "monty", "--input", json.dumps(QUICK_MONTY), "--follow", "--json")
    assert done.returncode == 0, done.stderr
    events = _events(done.stdout)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "workflow_started"
    assert events[-1]["type"] == "workflow_completed"
    assert sum(e["type"] == "iteration_completed" for e in events) == 2


def test_run_prints_the_id_and_watch_shows_progress_then_the_outcome(stack: Stack) -> None:
    started = stack.cli("run", "monty", "--input", json.dumps(QUICK_MONTY), "--url", stack.url)
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip()
    watched = stack.cli("watch", run_id, "--url", stack.url)
    assert watched.returncode == 0, watched.stderr
    assert "workflow_completed" in watched.stdout
    assert "100.0%" in watched.stdout


def test_cancel_signal_makes_watch_exit_3(stack: Stack) -> None:
    run_id = stack.cli("run", "monty", "--input", json.dumps(ENDLESS_MONTY)).stdout.strip()
    sent = stack.cli("signal", run_id, "cancel")
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["accepted"] is True
    watched = stack.cli("watch", run_id, "--json")
    assert watched.returncode == 3, watched.stderr
    assert _events(watched.stdout)[-1]["type"] == "workflow_cancelled"
    again = stack.cli("signal", run_id, "cancel")
    assert again.returncode == 1
    assert "cannot cancel" in again.stderr or "run_finished" in again.stderr


def test_stop_signal_lets_the_run_complete(stack: Stack) -> None:
    run_id = stack.cli("run", "monty", "--input", json.dumps(ENDLESS_MONTY)).stdout.strip()
    with _watching(stack, run_id) as watch:
        assert watch.stdout is not None
        first = json.loads(watch.stdout.readline())
        assert first["type"] == "workflow_started"
        assert stack.cli("signal", run_id, "stop").returncode == 0
        out, err = _rest(watch)
    assert watch.returncode == 0, err
    types = [e["type"] for e in _events(out)]
    assert "signal_received" in types and types[-1] == "workflow_completed"


def test_watch_resumes_after_the_gateway_dies_without_loss_or_duplicates(stack: Stack) -> None:
    gateway = stack.processes.procs[0]
    spec = {"min_sleep_s": 0.6, "max_sleep_s": 0.6, "max_iterations": 4, "progress_interval_s": 0.1}
    run_id = stack.cli("run", "monty", "--input", json.dumps(spec)).stdout.strip()
    with _watching(stack, run_id) as watch:
        assert watch.stdout is not None
        lines = [watch.stdout.readline() for _ in range(3)]
        gateway.kill()  # the connection drops mid-run
        gateway.wait()
        time.sleep(0.5)  # events keep being published meanwhile
        stack.gateway()  # same port, a fresh process
        rest, err = _rest(watch)
    assert watch.returncode == 0, err
    events = _events("".join(lines) + rest)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "workflow_completed"


def test_ls_lists_runs_as_a_table_and_as_json(stack: Stack) -> None:
    run_id = stack.cli("run", "monty", "--input", json.dumps(QUICK_MONTY)).stdout.strip()
    listed = stack.cli("ls", "--json", "--workflow", "monty")
    assert listed.returncode == 0, listed.stderr
    assert run_id in {r["run_id"] for r in json.loads(listed.stdout)}
    table = stack.cli("ls")
    assert table.returncode == 0 and "WORKFLOW" in table.stdout and "monty" in table.stdout
    bad = stack.cli("ls", "--status", "sleeping")
    assert bad.returncode == 1 and "unknown status" in bad.stderr


def test_errors_are_one_line_with_the_right_exit_code(stack: Stack) -> None:
    unknown = stack.cli("run", "nope")
    assert unknown.returncode == 1 and "no workflow 'nope'" in unknown.stderr
    invalid = stack.cli("run", "monty", "--input", '{"min_sleep_s": -1}')
    assert invalid.returncode == 1 and "min_sleep_s" in invalid.stderr
    not_json = stack.cli("run", "monty", "--input", "{oops")
    assert not_json.returncode == 2 and "not valid JSON" in not_json.stderr
    missing = stack.cli("watch", "no-such-run")
    assert missing.returncode == 1 and "no run" in missing.stderr
    for result in (unknown, invalid, missing):
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    nowhere = stack.cli("ls", "--url", f"http://127.0.0.1:{free_port()}")
    assert nowhere.returncode == 1 and "cannot reach the gateway" in nowhere.stderr


def test_a_run_no_live_worker_serves_is_queued_with_a_warning(stack: Stack) -> None:
    assert stack.worker is not None
    stack.worker.send_signal(signal.SIGTERM)  # a stopped worker withdraws what it serves
    assert stack.worker.wait(30) == 0
    deadline = time.monotonic() + 10  # the gateway's view of the catalog is cached for 1 s
    while any(w["served"] for w in httpx.get(stack.url + "/api/workflows").json()["workflows"]):
        assert time.monotonic() < deadline, "the stopped worker is still listed as serving"
        time.sleep(0.05)
    started = stack.cli("run", "monty", "--input", json.dumps(QUICK_MONTY))
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip()
    assert len(run_id) == 36  # stdout is the id alone, for scripts
    assert started.stderr.strip() == (
        "tidings: warning: no live worker serves monty version 1 now: "
        "the run waits in its queue until one starts"
    )
    listed = json.loads(stack.cli("ls", "--json").stdout)
    assert [r["status"] for r in listed if r["run_id"] == run_id] == ["queued"]


def test_ctrl_c_stops_watching_but_not_the_run(stack: Stack) -> None:
    run_id = stack.cli("run", "monty", "--input", json.dumps(ENDLESS_MONTY)).stdout.strip()
    with _watching(stack, run_id) as watch:
        assert watch.stdout is not None and watch.stderr is not None
        assert json.loads(watch.stdout.readline())["type"] == "workflow_started"
        watch.send_signal(signal.SIGINT)
        assert watch.wait(30) == 130
        assert "stopped watching" in watch.stderr.read()
    assert httpx.get(f"{stack.url}/api/runs/{run_id}").json()["status"] == "running"
    assert stack.cli("signal", run_id, "cancel").returncode == 0
