"""`tidings gateway --workers N`: N gateway processes sharing one port through SO_REUSEPORT.

Each process is a whole gateway with its own pub/sub connection, hub and viewers; the kernel
spreads new connections over the processes' own accept queues (SO_REUSEPORT), rather than letting
them race for one shared socket. The parent holds the port (a bound, never listening socket, which
also resolves port 0), starts the children, restarts one that dies after it had started properly,
and on SIGTERM/SIGINT stops them all and waits for their graceful shutdown. A child that dies
within its first seconds (bad settings, port taken) stops the pool with exit code 1, as a single
gateway would.

Viewer counts stay per process (`GET /api/runs/{id}` answers for the process that serves it), as
they are per gateway behind a load balancer.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from types import FrameType

from tidings.embedded import die_with_parent
from tidings.settings import Settings

__all__ = ["reuseport_socket", "serve_pool"]

log = logging.getLogger(__name__)

_EARLY_DEATH_S = 5.0
_STOP_WAIT_S = 15.0


def reuseport_socket(host: str, port: int, *, listen: bool) -> socket.socket:
    """A TCP socket bound to (host, port) with SO_REUSEPORT, listening if asked."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(2048)
            sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def serve_pool(settings: Settings, workers: int) -> int:
    """Run `workers` gateway processes on one port until SIGTERM/SIGINT; the exit code."""
    from .main import configure_logging

    assert workers >= 1
    configure_logging(settings)
    try:
        holder = reuseport_socket(settings.host, settings.port, listen=False)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc.strerror)
        return 1
    port = holder.getsockname()[1]
    # Each child is `python -m tidings.services.gateway --reuse-port` with these settings, one
    # process.
    env = {**os.environ, "TIDINGS_PORT": str(port), "TIDINGS_HOST": settings.host}
    env.update(TIDINGS_GATEWAY_WORKERS="1", PYTHONUNBUFFERED="1")
    if settings.redis_url:
        env["REDIS_URL"] = settings.redis_url
        env.pop("TIDINGS_REDIS_URL", None)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def start() -> tuple[subprocess.Popen[bytes], float]:
        args = [sys.executable, "-m", "tidings.services.gateway", "--reuse-port"]
        proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        return proc, time.monotonic()

    procs = [start() for _ in range(workers)]
    log.info("gateway: %d processes on %s:%d (SO_REUSEPORT)", workers, settings.host, port)
    code = 0
    try:
        while not stop.wait(0.5):
            for i, (proc, started) in enumerate(procs):
                if proc.poll() is None:
                    continue
                if time.monotonic() - started < _EARLY_DEATH_S:
                    log.error("gateway process %d exited at start-up (%s)", i + 1, proc.returncode)
                    code = 1
                    stop.set()
                    break
                log.warning("gateway process %d exited (%s); restarting it", i + 1, proc.returncode)
                procs[i] = start()
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + _STOP_WAIT_S
        for proc, _ in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        holder.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code
