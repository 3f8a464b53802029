"""A publish call's parts: the prepared event (`PublishCommand`) and what the publish script's
reply says of each event of a batch (`outcomes`): its ids, nothing written, or a domain error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.exceptions import OutOfMemoryError, ResponseError

from .errors import Fenced, NotFound, RunFinished, StorageFull
from .events import Event

__all__ = ["Outcome", "PublishCommand", "outcomes_of"]

Outcome = bytes | None | Exception  # a script reply for one event, None = not written (checkpoint)


@dataclass(frozen=True, slots=True)
class PublishCommand:
    """One prepared event: its fields, and its part of the script's arguments."""

    run_id: str
    attempt: int | None
    fields: dict[str, Any]  # the Event's fields but id, seq, progress
    args: list[Any]  # body, progress, status, message, task, n, n field/value pairs
    uid: str  # a call led by this command is refused as DUPLICATE if it was sent before

    def result(self, reply: bytes) -> Event:
        """The published event, from the script's "<id> <seq> <progress>" for it."""
        if not reply:  # DUPLICATE: published by an earlier send, ids unknown
            return Event.model_construct(**self.fields, id="", seq=0, progress=0.0)
        entry_id, seq, progress = reply.split()
        return Event.model_construct(
            **self.fields, id=entry_id.decode(), seq=int(seq), progress=float(progress)
        )


def outcomes_of(group: list[PublishCommand], reply: Any) -> list[Outcome]:
    """Per event of a script call: its "<id> <seq> <progress>", None, or its error."""
    run_id = group[0].run_id
    if isinstance(reply, OutOfMemoryError):
        full = StorageFull(f"storage is full: Redis refused to record run {run_id}'s events")
        return [full] * len(group)
    if isinstance(reply, ResponseError):
        if str(reply).startswith("DUPLICATE"):
            return [b""] * len(group)
        error = _domain_error(run_id, str(reply))
        return [error] * len(group)
    if not reply:  # the checkpoint was already set: nothing written
        return [None] * len(group)
    return [_domain_error(run_id, r.decode()) if r.startswith(b"FINISHED") else r for r in reply]


def _domain_error(run_id: str, reply: str) -> Exception:
    if reply.startswith("NOTFOUND"):
        return NotFound(f"no run {run_id!r}")
    if reply.startswith("FENCED"):
        return Fenced(f"run {run_id} is now on attempt {reply.split()[-1]}")
    if reply.startswith("FINISHED"):
        return RunFinished(f"run {run_id} has already {reply.split()[-1]}")
    return RuntimeError(reply)
