"""Giving freed memory back to the system once the last viewer of a gateway process has left.

A burst of viewers leaves glibc's heap holding the memory they used: freed, but kept by the
allocator, so the process's RSS stays at its high-water mark (about 2.5 MB of it per 1,000
viewers here). `malloc_trim(0)` returns those pages. It is called at most once per busy period:
when the process has had viewers and has none left, checked once a second (off the hot path:
the hub is not touched). Where there is no glibc (musl, macOS) this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import sys
from collections.abc import Callable

from .metrics import Stats

__all__ = ["Trimmer", "malloc_trim"]

log = logging.getLogger(__name__)


def malloc_trim() -> Callable[[], int] | None:
    """glibc's `malloc_trim(0)` as a callable, or None where it does not exist."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int

    def trim() -> int:
        return int(fn(0))

    return trim


class Trimmer:
    """Calls `trim` once each time `viewers()` falls to 0 after having been above it."""

    def __init__(
        self,
        viewers: Callable[[], int],
        trim: Callable[[], int] | None,
        stats: Stats,
        *,
        interval: float = 1.0,
    ) -> None:
        self._viewers = viewers
        self._trim = trim
        self._stats = stats
        self._interval = interval
        self._busy = False

    def check(self) -> None:
        """One look at the viewer count (what the loop does every `interval`)."""
        if self._viewers():
            self._busy = True
        elif self._busy:
            self._busy = False
            if self._trim is not None:
                self._trim()
                self._stats.memory_trims += 1

    async def run(self) -> None:
        if self._trim is None:
            log.debug("no malloc_trim on this platform: freed memory stays with the allocator")
            return
        while True:
            await asyncio.sleep(self._interval)
            self.check()
