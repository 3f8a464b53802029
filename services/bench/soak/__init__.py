"""The fault-and-abuse soak: its own Valkey, gateways and workers, many viewers of many runs of
every shipped workflow, faults and abusive requests while they run, and checks that nothing was
lost, duplicated, stranded, run twice or leaked. `python -m tidings.services.bench.soak --help`.

Not imported by anything that ships: the tests and `make soak` run it.
"""

from __future__ import annotations

from .driver import Report, soak
from .profile import PROFILES, Profile

__all__ = ["PROFILES", "Profile", "Report", "soak"]
