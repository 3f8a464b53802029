"""`tidings up` end to end: real Valkey, gateway and workers as child processes of the CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest
from redis import Redis

from tests.conftest import ROOT, Processes
from tidings.embedded import free_port

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "tidings.services.cli"]
_ONE_ITERATION = {"min_sleep_s": 0.05, "max_sleep_s": 0.05, "max_iterations": 1}


def _up_env(data_dir: Path, port: int) -> dict[str, str]:
    # REDIS_URL empty: `tidings up` must start its own embedded Valkey.
    return {
        "REDIS_URL": "",
        "TIDINGS_DATA_DIR": str(data_dir),
        "TIDINGS_PORT": str(port),
        "TIDINGS_NAMESPACE": f"t{uuid.uuid4().hex[:8]}",
        "TIDINGS_LOG_LEVEL": "warning",
    }


def _wait_ready(proc: subprocess.Popen[bytes], procs: Processes, port: int) -> None:
    deadline = time.monotonic() + 60
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, procs.output(proc)
            try:
                if client.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail(f"tidings up never became ready:\n{procs.output(proc)}")
    # The banner comes right after readiness.
    while "Tidings is up" not in procs.output(proc):
        assert time.monotonic() < deadline, procs.output(proc)
        time.sleep(0.05)


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _assert_all_gone(children: list[psutil.Process]) -> None:
    deadline = time.monotonic() + 5
    for child in children:
        while _alive(child):
            assert time.monotonic() < deadline, f"{child.pid} {child.cmdline()} still running"
            time.sleep(0.05)


def _left_behind(data_dir: Path) -> list[str]:
    """Live processes started for this data dir: the Python ones inherit TIDINGS_DATA_DIR,
    Valkey runs in it (and overwrites its environment block with its process title)."""
    found = []
    for proc in psutil.process_iter():
        try:
            ours = proc.environ().get("TIDINGS_DATA_DIR") == str(data_dir) or proc.cwd().startswith(
                str(data_dir.resolve())
            )
            if ours and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{proc.pid} {' '.join(proc.cmdline())}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _stop(proc: subprocess.Popen[bytes], sig: int, procs: Processes) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(40)
    except subprocess.TimeoutExpired:
        pytest.fail(f"tidings up did not stop on {sig}:\n{procs.output(proc)}")


def _worker_pids(children: list[psutil.Process]) -> set[int]:
    pids = set()
    for child in children:
        try:
            if "tidings.services.worker" in " ".join(child.cmdline()):
                pids.add(child.pid)
        except psutil.NoSuchProcess:  # also a zombie not reaped yet
            continue
    return pids


def test_up_runs_everything_survives_restart_and_leaves_nothing_behind(
    processes: Processes, tmp_path: Path
) -> None:
    data, port = tmp_path / "data", free_port()
    env = _up_env(data, port)
    up = processes.start([*CLI, "up", "--workers", "2"], env=env, name="up")
    _wait_ready(up, processes, port)
    ready_at = time.monotonic()  # every child was spawned before this
    children = _descendants(up.pid)
    workers = _worker_pids(children)
    assert len(workers) == 2
    assert any("valkey" in " ".join(c.cmdline()) for c in children)

    url = (data / "redis.url").read_text().strip()
    client = Redis.from_url(url)
    assert client.ping()
    key = f"{env['TIDINGS_NAMESPACE']}:survives-restart"
    client.set(key, "yes")
    run = httpx.post(
        f"http://127.0.0.1:{port}/api/runs",
        json={"workflow": "monty", "input": {"min_sleep_s": 0.05, "max_sleep_s": 0.05}},
    )
    assert run.status_code == 201, run.text
    client.close()

    # A worker that dies after running a while is restarted, not fatal.
    # (Measured on this process's monotonic clock: a process's create_time is derived from the
    # boot time, which can disagree with time.time() by most of a second on a VM.)
    time.sleep(max(0.0, 5.5 - (time.monotonic() - ready_at)))
    victim = psutil.Process(min(workers))
    victim.kill()
    deadline = time.monotonic() + 20
    while len(_worker_pids(_descendants(up.pid)) - {victim.pid}) < 2:
        assert time.monotonic() < deadline, processes.output(up)
        time.sleep(0.1)
    assert "restarting" in processes.output(up)

    children = _descendants(up.pid)
    assert _stop(up, signal.SIGINT, processes) == 0
    _assert_all_gone(children)

    up2 = processes.start([*CLI, "up", "--workers", "1"], env=env, name="up2")
    _wait_ready(up2, processes, port)
    assert (data / "redis.url").read_text().strip() == url  # same port again
    client = Redis.from_url(url)
    assert client.get(key) == b"yes"
    client.close()
    runs = httpx.get(f"http://127.0.0.1:{port}/api/runs").json()["runs"]
    assert run.json()["run_id"] in {r["run_id"] for r in runs}
    children = _descendants(up2.pid)
    assert len(_left_behind(data)) == len(children) + 1  # the helper sees them while they run
    assert _stop(up2, signal.SIGTERM, processes) == 0
    _assert_all_gone(children)
    assert _left_behind(data) == []


def test_up_stops_everything_when_a_child_cannot_start(
    processes: Processes, tmp_path: Path
) -> None:
    port, data = free_port(), tmp_path / "d"
    with socket.socket() as taken:  # the gateway's port is already in use
        taken.bind(("127.0.0.1", port))
        taken.listen()
        up = processes.start([*CLI, "up", "--workers", "1"], env=_up_env(data, port), name="up")
        try:
            code = up.wait(60)
        except subprocess.TimeoutExpired:
            pytest.fail(processes.output(up))
    out = processes.output(up)
    assert code == 1, out
    assert "gateway" in out and "shutting everything down" in out
    assert _left_behind(data) == []


def test_a_second_up_on_the_same_data_dir_is_refused(processes: Processes, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first_port = free_port()
    up = processes.start([*CLI, "up", "--workers", "0"], env=_up_env(data, first_port), name="a")
    _wait_ready(up, processes, first_port)
    second = subprocess.run(
        [*CLI, "up"],
        env={**_env_without_redis(), **_up_env(data, free_port())},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert second.returncode == 1
    assert "already using" in second.stderr
    assert _stop(up, signal.SIGTERM, processes) == 0


def _env_without_redis() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "TIDINGS_REDIS_URL")}


def test_gateway_and_worker_commands_join_the_local_up_without_redis_url(
    processes: Processes, tmp_path: Path
) -> None:
    data, port = tmp_path / "data", free_port()
    env = _up_env(data, port)
    up = processes.start([*CLI, "up", "--workers", "0"], env=env, name="up")
    _wait_ready(up, processes, port)
    worker = processes.start([*CLI, "worker"], env=env, name="worker")  # finds data/redis.url
    deadline = time.monotonic() + 30
    # The gateway knows monty once the worker has published it to the catalog.
    url = f"http://127.0.0.1:{port}/api/workflows"
    while not any(w["served"] for w in httpx.get(url).json()["workflows"]):
        assert worker.poll() is None and time.monotonic() < deadline, processes.output(worker)
        time.sleep(0.05)
    done = subprocess.run(
        [*CLI, "run", "monty", "--follow", "--json", "--input", json.dumps(_ONE_ITERATION)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr + processes.output(worker)
    assert '"workflow_completed"' in done.stdout.splitlines()[-1]
    assert _stop(up, signal.SIGTERM, processes) == 0
    # Without `tidings up` (nor REDIS_URL) there is nothing to join: a clear error.
    alone = subprocess.run(
        [*CLI, "worker"],
        env={**_env_without_redis(), **_up_env(tmp_path / "empty", free_port())},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert alone.returncode == 1 and "no Redis" in alone.stderr


def test_up_with_redis_url_uses_it_and_starts_no_valkey(
    processes: Processes, tmp_path: Path, settings_env: Callable[..., dict[str, str]]
) -> None:
    data, port = tmp_path / "data", free_port()
    env = {**settings_env(port=port, data_dir=data, log_level="warning")}
    up = processes.start([*CLI, "up", "--workers", "1"], env=env, name="up")
    _wait_ready(up, processes, port)
    children = _descendants(up.pid)
    assert not any("valkey" in " ".join(c.cmdline()) for c in children)
    assert f"Redis at {env['REDIS_URL']}" in processes.output(up)
    assert not (data / "redis.url").exists()
    assert _stop(up, signal.SIGINT, processes) == 0
    _assert_all_gone(children)


def test_up_with_auth_tokens_becomes_ready(
    processes: Processes, tmp_path: Path, settings_env: Callable[..., dict[str, str]]
) -> None:
    # Before the fix readiness read /api/workflows without a credential: with auth on it was a
    # 401 every time, and `tidings up` gave up after a minute ("did not become ready"), exit 1.
    data, port = tmp_path / "data", free_port()
    token = "v" * 32
    env = settings_env(port=port, data_dir=data, log_level="warning", auth_tokens=f"viewer:{token}")
    up = processes.start([*CLI, "up", "--workers", "1"], env=env, name="up")
    _wait_ready(up, processes, port)
    listed = httpx.get(
        f"http://127.0.0.1:{port}/api/workflows", headers={"Authorization": f"Bearer {token}"}
    )
    assert any(w["served"] for w in listed.json()["workflows"])
    assert _stop(up, signal.SIGINT, processes) == 0


def test_up_with_two_gateway_processes_serves_and_stops_them_all(
    tmp_path: Path, processes: Processes
) -> None:
    port = free_port()
    env = _up_env(tmp_path / "data", port)
    up = processes.start([*CLI, "up", "--workers", "1", "--gateway-workers", "2"], env=env)
    _wait_ready(up, processes, port)
    deadline = time.monotonic() + 30
    while True:
        gateways = [c for c in _descendants(up.pid) if "--reuse-port" in " ".join(c.cmdline())]
        if len(gateways) == 2 and all(
            any(s.status == psutil.CONN_LISTEN for s in g.net_connections()) for g in gateways
        ):
            break
        assert time.monotonic() < deadline, processes.output(up)
        time.sleep(0.1)
    children = _descendants(up.pid)
    assert _stop(up, signal.SIGINT, processes) == 0
    _assert_all_gone(children)
    assert not _left_behind(tmp_path / "data")
