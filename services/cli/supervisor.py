"""`tidings up`: Valkey, one gateway and N workers on this machine, as one foreground command.

Decisions:
- Children are separate processes (`python -m tidings.services.gateway`,
  `python -m tidings.services.worker`),
  exactly what a deployment runs, each in its own process group: a Ctrl-C reaches only this
  supervisor, which then stops things in order (gateway and workers first, so workers can hand
  their runs back while Redis is still up; Valkey last).
- Every child gets PR_SET_PDEATHSIG: if the supervisor itself is SIGKILLed, they go too.
- A child that dies on its own is restarted when it had been up for a while (a worker killed by
  the OOM killer or `kill -9` comes back; its runs are recovered by lease meanwhile), but a child
  that dies within `_MIN_UPTIME_S` of starting, or restarts more than `_MAX_RESTARTS` times a
  minute, is a configuration problem: everything is shut down and the exit code is 1.
- Without `REDIS_URL`, Valkey runs embedded with its data (AOF) under `<data_dir>/valkey` and the
  port kept from the previous start when free, so data and URL survive restarts. A lock file
  keeps two `tidings up` from sharing one data directory.
- `--cluster N`: an `EmbeddedCluster` (N primaries, R replicas each) formed fresh under
  `<data_dir>/cluster` instead of the one Valkey; the gateway and workers get one node's URL as
  `REDIS_URL` and `TIDINGS_REDIS_CLUSTER=true`. `redis.url` is not written (commands that find
  it expect a single server). A node that dies is reported, not restarted: the cluster fails it
  over to a replica when it has one, and the services follow the new primary.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any
from urllib.parse import urlsplit

import httpx

from tidings.embedded import EmbeddedValkey, die_with_parent, free_port
from tidings.embedded_cluster import ClusterError, EmbeddedCluster
from tidings.settings import Settings

from .errors import EXIT_ERROR, EXIT_OK, CliError
from .local import gateway_url, redis_answers, redis_url_file

__all__ = ["Supervisor"]

_MIN_UPTIME_S = 5.0
_MAX_RESTARTS = 5  # per minute, per child
_READY_TIMEOUT_S = 60.0


@dataclass
class _Child:
    name: str
    module: str
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: list[float] = field(default_factory=list)


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        *,
        workers: int = 2,
        grace_s: float = 10.0,
        out: IO[str] | None = None,
        cluster: tuple[int, int] | None = None,
    ) -> None:
        self.settings = settings
        self.grace_s = grace_s
        self.out = out or sys.stdout
        self.children = [_Child("gateway", "tidings.services.gateway")] + [
            _Child(f"worker-{i + 1}", "tidings.services.worker") for i in range(workers)
        ]
        self.cluster_shape = cluster  # (primaries, replicas per primary)
        self.valkey: EmbeddedValkey | None = None
        self.cluster: EmbeddedCluster | None = None
        self._stop = threading.Event()
        self._signals = 0
        self._lock_fd: int | None = None
        self._env: dict[str, str] = {}

    # -- lifecycle -------------------------------------------------------------------------------

    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            if self.cluster_shape is not None:
                redis_url = self._start_cluster(*self.cluster_shape)
            else:
                redis_url = self.settings.redis_url or self._start_valkey()
            self._env = self._child_env(redis_url)
            for child in self.children:
                self._spawn(child)
            if self.children and not self._wait_ready():
                return EXIT_ERROR if not self._stop.is_set() else EXIT_OK
            self._banner(redis_url)
            return self._watch()
        finally:
            self._shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        self._stop.set()

    def _say(self, message: str) -> None:
        print(f"tidings: {message}", file=self.out, flush=True)

    # -- Valkey ----------------------------------------------------------------------------------

    def _lock_data_dir(self) -> Path:
        data = self.settings.data_dir
        data.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(data / "up.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise CliError(f"another `tidings up` is already using {data.resolve()}") from None
        return data

    def _start_valkey(self) -> str:
        data = self._lock_data_dir()
        url_file = redis_url_file(self.settings)
        port = _previous_port(url_file)
        self.valkey = EmbeddedValkey(
            data / "valkey", port=port, persistent=True, maxmemory=self.settings.valkey_maxmemory
        )
        try:
            self.valkey.start(timeout=30)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise CliError(f"embedded Valkey did not start: {first}") from None
        url_file.write_text(self.valkey.url + "\n")
        return self.valkey.url

    def _start_cluster(self, primaries: int, replicas: int) -> str:
        where = self._lock_data_dir() / "cluster"
        shutil.rmtree(where, ignore_errors=True)  # formed fresh every time
        self._say(f"forming a Valkey Cluster: {primaries} primaries, {replicas} replica(s) each")
        self.cluster = EmbeddedCluster(
            where,
            primaries=primaries,
            replicas=replicas,
            maxmemory=self.settings.valkey_maxmemory,
        )
        try:
            self.cluster.start(timeout=60)
        except ClusterError as exc:
            first = str(exc).splitlines()[0]
            raise CliError(f"the cluster did not form: {first} (node logs in {where})") from None
        return self.cluster.url

    # -- children --------------------------------------------------------------------------------

    def _child_env(self, redis_url: str) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("TIDINGS_REDIS_URL", None)  # REDIS_URL below is the one the children must use
        env.update(
            REDIS_URL=redis_url,
            TIDINGS_HOST=self.settings.host,
            TIDINGS_PORT=str(self.settings.port),
            TIDINGS_GATEWAY_WORKERS=str(self.settings.gateway_workers),
            TIDINGS_INSECURE=str(self.settings.insecure).lower(),
            TIDINGS_NAMESPACE=self.settings.namespace,
            TIDINGS_DATA_DIR=str(self.settings.data_dir),
            TIDINGS_REDIS_CLUSTER="true" if self.cluster else "false",
            PYTHONUNBUFFERED="1",
        )
        return env

    def _spawn(self, child: _Child) -> None:
        child.proc = subprocess.Popen(
            [sys.executable, "-m", child.module],
            env=self._env,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
            process_group=0,
        )
        child.started = time.monotonic()

    def _wait_ready(self) -> bool:
        """Poll the gateway's /readyz, then its catalog until a worker has published; False if
        stopped or a child died meanwhile."""
        url = gateway_url(self.settings) + "/readyz"
        deadline = time.monotonic() + _READY_TIMEOUT_S
        with httpx.Client(timeout=1.0) as client:
            while not self._stop.is_set():
                if self._check_children(restart=False) is not None:
                    return False
                try:
                    if client.get(url).status_code == 200 and self._workers_published(client):
                        return True
                except (httpx.HTTPError, ValueError, KeyError):
                    pass
                if time.monotonic() > deadline:
                    self._say(f"the gateway did not become ready within {_READY_TIMEOUT_S:.0f}s")
                    return False
                self._stop.wait(0.1)
        return False

    def _workers_published(self, client: httpx.Client) -> bool:
        """With workers to start: one has published its workflows (a run started now is found)."""
        if len(self.children) == 1:
            return True
        # With TIDINGS_AUTH_TOKENS set the listing needs a credential: any configured token reads.
        pairs = self.settings.auth_pairs
        headers = {"Authorization": f"Bearer {pairs[0][1]}"} if pairs else {}
        reply = client.get(gateway_url(self.settings) + "/api/workflows", headers=headers)
        return any(w["served"] for w in reply.json()["workflows"])

    def _banner(self, redis_url: str) -> None:
        url = gateway_url(self.settings)
        workers = len(self.children) - 1
        where = "embedded Valkey" if self.valkey else "Redis"
        if self.cluster is not None:
            where = "the embedded Valkey Cluster (node below)"
        pids = " ".join(str(c.proc.pid) for c in self.children if c.proc)
        lines = [
            f"Tidings is up: dashboard and API at {url}/",
            f"  gateway + {workers} worker(s) (pids {pids}), {where} at {redis_url}",
            f'  try: tidings run research --input \'{{"topic": "tides"}}\' --follow --url {url}',
            "  press Ctrl-C (or send SIGTERM) to stop everything",
        ]
        if self.cluster is not None:
            lines[-1:-1] = self._cluster_lines(self.cluster, redis_url)
        print("\n".join(lines), file=self.out, flush=True)

    def _cluster_lines(self, cluster: EmbeddedCluster, redis_url: str) -> list[str]:
        lines = [
            f"  Valkey Cluster: {cluster.primary_count} primaries, "
            f"{cluster.replica_count} replica(s) each, "
            f"cluster-node-timeout {cluster.node_timeout_ms} ms",
            *(f"    {line}" for line in cluster.describe()),
            f"  REDIS_URL={redis_url} TIDINGS_REDIS_CLUSTER=true (any node: a cluster client "
            "finds the others)",
        ]
        if cluster.primary_count < 3:
            lines.append("  fewer than 3 primaries: a dead primary is not failed over")
        return lines

    def _report_nodes(self, cluster: EmbeddedCluster, reported: set[str]) -> int | None:
        """Report each node that exited, once; an exit code when none is left."""
        for node in cluster.nodes:
            if not node.running and node.name not in reported:
                reported.add(node.name)
                self._say(f"{node.name} ({node.address}) exited; not restarted")
        if len(reported) == len(cluster.nodes):
            self._say("every node of the cluster has exited; shutting down")
            return EXIT_ERROR
        return None

    def _watch(self) -> int:
        last_ping = time.monotonic()
        misses = 0
        reported: set[str] = set()
        while not self._stop.wait(0.25):
            failed = self._check_children(restart=True)
            if failed is None and self.cluster is not None:
                failed = self._report_nodes(self.cluster, reported)
            if failed is not None:
                return failed
            if self.valkey and time.monotonic() - last_ping > 2.0:
                last_ping = time.monotonic()
                misses = 0 if redis_answers(self.valkey.url) else misses + 1
                if misses >= 3:
                    self._say("the embedded Valkey stopped answering; shutting down")
                    return EXIT_ERROR
        return EXIT_OK

    def _check_children(self, *, restart: bool) -> int | None:
        """None while all is well; an exit code once a child's death means shutting down."""
        now = time.monotonic()
        for child in self.children:
            if child.proc is None or (code := child.proc.poll()) is None:
                continue
            if self._stop.is_set():
                return None
            uptime = now - child.started
            child.restarts = [t for t in child.restarts if now - t < 60]
            if not restart or uptime < _MIN_UPTIME_S or len(child.restarts) >= _MAX_RESTARTS:
                self._say(
                    f"{child.name} (pid {child.proc.pid}) exited with code {code} after "
                    f"{uptime:.1f}s; shutting everything down"
                )
                return EXIT_ERROR
            self._say(f"{child.name} (pid {child.proc.pid}) exited with code {code}; restarting")
            child.restarts.append(now)
            self._spawn(child)
        return None

    def _shutdown(self) -> None:
        live = [c.proc for c in self.children if c.proc is not None and c.proc.poll() is None]
        if live:
            self._say(f"stopping {len(live)} process(es)")
        for proc in live:
            _signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for proc in live:
            # A second Ctrl-C means "now": stop waiting for graceful exits.
            while proc.poll() is None and time.monotonic() < deadline and self._signals < 2:
                time.sleep(0.05)
            if proc.poll() is None:
                self._say(f"pid {proc.pid} did not stop in time; killing it")
                _signal(proc, signal.SIGKILL)
                proc.wait()
        if self.valkey is not None:
            self.valkey.stop()
            self.valkey = None
        if self.cluster is not None:
            self._say(f"stopping the cluster's {len(self.cluster.nodes)} node(s)")
            self.cluster.stop()
            self.cluster = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _signal(proc: subprocess.Popen[Any], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)


def _previous_port(url_file: Path) -> int:
    """The port of the last start if it is free again (so the URL others know stays valid)."""
    try:
        port = urlsplit(url_file.read_text().strip()).port or 0
    except (OSError, ValueError):
        return 0
    if not port:
        return 0
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port
