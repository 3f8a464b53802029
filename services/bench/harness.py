"""What every benchmark stands on: real servers on free ports, and one result shape.

`Servers` starts a throw-away Valkey (not persistent, in its own temp dir) and real gateway, worker
and baseline processes as subprocesses, each with its log in the temp dir (the last lines are shown
when one fails). Everything it starts is stopped by pid when the block ends.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from tidings.embedded import EmbeddedValkey, die_with_parent, free_port, stop_process
from tidings.keys import Keys

from .targets import Target, verdict

__all__ = ["BENCH_GATEWAY", "BenchError", "Result", "Servers", "percentile"]


class BenchError(RuntimeError):
    """A benchmark could not run (a server did not start, a run did not finish...)."""


@dataclass
class Result:
    """One benchmark's outcome. `ratio` is always "how many times better than the baseline".

    `targets` say what the figures should be; `met` is derived from them and the figures
    (`tidings.services.bench.targets`), never set by hand. `figures` holds the named figures a
    target may refer to beyond `figure`, `baseline` and `ratio`."""

    name: str
    title: str
    figure: float | None = None
    unit: str = ""
    baseline: float | None = None
    baseline_label: str = ""
    ratio: float | None = None
    targets: list[Target] = field(default_factory=list)
    figures: dict[str, float | None] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0

    def all_figures(self) -> dict[str, float | None]:
        return {
            **self.figures,
            "figure": self.figure,
            "baseline": self.baseline,
            "ratio": self.ratio,
        }

    @property
    def target(self) -> str:
        return "; ".join(t.label for t in self.targets)

    @property
    def met(self) -> bool | None:
        """None for a result in error or without targets; else whether every target is met."""
        return None if self.error else verdict(self.targets, self.all_figures())

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        figures = self.all_figures()
        out["targets"] = [t.as_dict(figures) for t in self.targets]
        out["target"] = self.target
        out["met"] = self.met
        return out


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: every reported value was really observed)."""
    if not values:
        raise ValueError("no samples")
    ordered = sorted(values)
    # The smallest value with at least `pct` % of the samples at or below it.
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered) - 1e-9)))
    return ordered[rank - 1]


# Every benchmark client is one address opening thousands of streams and starting many runs:
# the per-client limits are lifted, and viewer leases renewed rarely enough that no measured
# window holds a renewal.
BENCH_GATEWAY: dict[str, object] = {
    "runs_per_minute": 10_000_000,
    "active_runs_per_client": 10_000_000,
    "viewers_per_client": 10_000_000,
    "viewer_lease_s": 3_600,
}


class Servers:
    """A Valkey plus the processes one benchmark needs; a fresh namespace per instance."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="tidings-bench-")
        self.dir = Path(self._tmp.name)
        self.valkey = EmbeddedValkey(self.dir / "valkey", persistent=False)
        self.namespace = f"bench{uuid.uuid4().hex[:8]}"
        self.keys = Keys(self.namespace)
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Servers:
        self.valkey.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()
        self.valkey.stop()
        self._tmp.cleanup()

    @property
    def redis_url(self) -> str:
        return self.valkey.url

    def env(self, **settings: object) -> dict[str, str]:
        """Environment for a Tidings child: this Valkey and namespace, plus TIDINGS_* `settings`.
        Inherited TIDINGS_* variables are dropped so the user's shell cannot skew a run."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
        env.update(
            REDIS_URL=self.redis_url,
            TIDINGS_NAMESPACE=self.namespace,
            TIDINGS_LOG_LEVEL="warning",
            PYTHONUNBUFFERED="1",
        )
        env.pop("TIDINGS_REDIS_URL", None)
        env.update({f"TIDINGS_{k.upper()}": str(v) for k, v in settings.items()})
        return env

    def spawn(
        self, args: list[str], *, env: dict[str, str] | None = None, name: str = "proc"
    ) -> subprocess.Popen[bytes]:
        log = open(self.dir / f"{name}-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            args,
            env=env or self.env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        log.close()  # the child holds its own descriptor
        proc.log_path = log.name  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def python(self, module: str, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        return self.spawn([sys.executable, "-m", module, *args], **kwargs)

    def gateway(self, **settings: object) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        env = self.env(port=port, **{**BENCH_GATEWAY, **settings})
        proc = self.python("tidings.services.gateway", env=env, name="gateway")
        url = f"http://127.0.0.1:{port}"
        self.wait_http(proc, url + "/readyz")
        return proc, url

    def worker(self, **settings: object) -> subprocess.Popen[bytes]:
        return self.python("tidings.services.worker", env=self.env(**settings), name="worker")

    def wait_http(self, proc: subprocess.Popen[bytes], url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise BenchError(f"{url} exited with {proc.returncode}:\n{self.tail(proc)}")
                try:
                    if client.get(url).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
        raise BenchError(f"{url} not ready within {timeout}s:\n{self.tail(proc)}")

    def tail(self, proc: subprocess.Popen[bytes], lines: int = 15) -> str:
        path = Path(proc.log_path)  # type: ignore[attr-defined]
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        stop_process(proc, timeout)

    def stop_all(self) -> None:
        live = [p for p in self.procs if p.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in live:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
