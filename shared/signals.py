"""What a run's signal list asks for, folded from its entries.

The list `<ns>:run:{ID}:signals` is the durable history of every request sent to a run, oldest
first, never popped. Its meaning is a fold shared by both services: the worker folds it into the
run's current orders, and `Control.signal` folds it to judge a pause or resume by what was last
asked rather than by the run's status, which only changes at the workflow's next step boundary.

Stop and cancel are sticky; pause/resume is whichever of them came last (`None`: neither was
ever asked); messages form an ordered inbox.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from . import codec
from .sdk import Signal

__all__ = ["SignalFold", "decode_signal", "fold_signals"]


def decode_signal(item: bytes) -> Signal:
    """One entry of the signal list (JSON written by `Control.signal`)."""
    data = codec.loads(item)
    return Signal(
        name=str(data.get("name", "")),
        payload=data.get("payload") or {},
        id=str(data.get("id", "")),
        ts=str(data.get("ts", "")),
    )


@dataclass(slots=True)
class SignalFold:
    """The orders a run's signals add up to so far."""

    stop: bool = False
    cancel: bool = False
    paused: bool | None = None  # the last of pause/resume; None until either is asked
    messages: list[Signal] = field(default_factory=list)

    def apply(self, sig: Signal) -> None:
        if sig.name == "stop":
            self.stop = True
        elif sig.name == "cancel":
            self.cancel = True
        elif sig.name == "pause":
            self.paused = True
        elif sig.name == "resume":
            self.paused = False
        elif sig.name == "message":
            self.messages.append(sig)


def fold_signals(raw: Iterable[bytes], into: SignalFold | None = None) -> SignalFold:
    """Apply list entries, in order, to `into` (a fresh fold by default); returns it."""
    fold = SignalFold() if into is None else into
    for item in raw:
        fold.apply(decode_signal(item))
    return fold
