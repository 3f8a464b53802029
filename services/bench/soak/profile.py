"""How big a soak is: the short profile (`make test`) and the long one (`make soak`).

Every count here is a bound, not a target a slow host may miss: faults and abuse are scheduled
inside the load window, and the viewers and runs are all started whatever the host's speed.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PROFILES", "Profile"]


@dataclass(frozen=True)
class Profile:
    name: str
    gateways: int  # gateway processes, each on its own port
    workers: int  # worker processes (a killed one is replaced)
    runs: int  # runs the load starts (chat tools may start a few more)
    viewers: int  # viewer connections (a multiplexed one counts once)
    start_window_s: float  # runs and viewers are started over this window
    worker_kills: int
    gateway_restarts: int
    valkey_restarts: int
    valkey_down_s: float  # how long the Valkey stays stopped each time
    abuse_requests: int
    random_signals: int  # pause/resume pairs, cancels, messages, unknown names
    slow_share: float  # of the viewers, the share that reads slowly
    token_delay_ms: float  # the simulated model's pace: runs must outlive the faults
    deadline_s: float  # from the start of the load: every viewer done, every run ended


PROFILES = {
    "short": Profile(
        name="short",
        gateways=2,
        workers=2,
        runs=10,
        viewers=100,
        start_window_s=6.0,
        worker_kills=1,
        gateway_restarts=1,
        valkey_restarts=1,
        valkey_down_s=2.0,
        abuse_requests=150,
        random_signals=12,
        slow_share=0.1,
        token_delay_ms=12.0,
        deadline_s=100.0,
    ),
    "long": Profile(
        name="long",
        gateways=2,
        workers=3,
        runs=50,
        viewers=1_000,
        start_window_s=40.0,
        worker_kills=4,
        gateway_restarts=3,
        valkey_restarts=2,
        valkey_down_s=3.0,
        abuse_requests=1_500,
        random_signals=80,
        slow_share=0.1,
        token_delay_ms=12.0,
        deadline_s=300.0,
    ),
}
