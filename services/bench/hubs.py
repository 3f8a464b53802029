"""The SSE servers the fan-out benchmarks compare, each started fresh on a free port.

| key           | what                                                                      |
|---------------|---------------------------------------------------------------------------|
| tidings       | one Tidings gateway process (`python -m tidings.services.gateway`)        |
| sse-starlette | sse-starlette over one shared redis-py PubSub (`sse_starlette_hub.py`)    |
| naive         | a Redis connection and a JSON re-encode per viewer (`naive_hub.py`)       |
| floor         | raw uvloop protocol, one frame written to every viewer (`floor_hub.py`)   |

All serve `GET /api/runs/{run_id}/events` and `GET /readyz` on the same Valkey and namespace.
Each inherits this process's descriptor limit, which `running` first raises to the hard limit:
ten thousand viewers are ten thousand sockets in one server process.
"""

from __future__ import annotations

import resource
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tidings.embedded import free_port

from .harness import Servers

__all__ = ["FLOOR", "LABELS", "NAIVE", "SSE_STARLETTE", "TIDINGS", "Hub", "running"]

TIDINGS = "tidings"
SSE_STARLETTE = "sse-starlette"
NAIVE = "naive"
FLOOR = "floor"

LABELS = {
    TIDINGS: "Tidings gateway",
    SSE_STARLETTE: "sse-starlette hub: shared PubSub, queue per viewer",
    NAIVE: "naive hub: connection + re-encode per viewer",
    FLOOR: "floor: raw uvloop protocol, one write loop",
}

_MODULES = {
    SSE_STARLETTE: "tidings.services.bench.sse_starlette_hub",
    NAIVE: "tidings.services.bench.naive_hub",
    FLOOR: "tidings.services.bench.floor_hub",
}


@dataclass(frozen=True)
class Hub:
    key: str
    proc: subprocess.Popen[bytes]
    url: str

    @property
    def label(self) -> str:
        return LABELS[self.key]

    def events_url(self, run_id: str) -> str:
        return f"{self.url}/api/runs/{run_id}/events"


def _start(srv: Servers, key: str, heartbeat_s: float | None, settings: dict[str, object]) -> Hub:
    if key == TIDINGS:
        if heartbeat_s is not None:
            settings = {**settings, "sse_heartbeat_s": heartbeat_s}
        proc, url = srv.gateway(**settings)
        return Hub(key, proc, url)
    port = free_port()
    args = ["--redis", srv.redis_url, "--namespace", srv.namespace, "--port", str(port)]
    if key == SSE_STARLETTE and heartbeat_s is not None:
        args += ["--ping", str(heartbeat_s)]
    proc = srv.python(_MODULES[key], *args, name=key)
    url = f"http://127.0.0.1:{port}"
    srv.wait_http(proc, url + "/readyz")
    return Hub(key, proc, url)


@contextmanager
def running(
    srv: Servers, key: str, *, heartbeat_s: float | None = None, **settings: object
) -> Iterator[Hub]:
    """A fresh server of kind `key`, stopped on exit. `settings` go to the Tidings gateway;
    `heartbeat_s` overrides the heartbeat interval of the servers that send one."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    hub = _start(srv, key, heartbeat_s, settings)
    try:
        yield hub
    finally:
        srv.stop(hub.proc)
