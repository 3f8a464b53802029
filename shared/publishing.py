"""A publish call's parts: the prepared event (`PublishCommand`), what the publish script's
reply says of each event of a batch (`outcomes`): its ids, nothing written, or a domain error;
and the pub/sub command of the keyspace (`publish_command`, `announce`).

Pub/sub in a cluster is sharded: a message goes out with SPUBLISH on the node owning its
channel's slot, and only SSUBSCRIBErs there hear it. Every channel Tidings writes lives in a
run's or a bucket's slot (`tidings.keys`), so a script publishes with the command it is handed
(`publish_command`) to a channel of its own slot; a single Redis keeps plain PUBLISH.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError, ResponseError

from .errors import Fenced, NotFound, RunFinished, StorageFull
from .events import Event
from .keys import Keys

__all__ = ["Outcome", "PublishCommand", "announce", "outcomes_of", "publish_command"]

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


def publish_command(keys: Keys) -> str:
    """The pub/sub command of `keys`' keyspace: SPUBLISH in a cluster, PUBLISH otherwise (a
    script is handed it as an argument)."""
    return "SPUBLISH" if keys.clustered else "PUBLISH"


async def announce(redis: Redis, keys: Keys, channel: str, message: str | bytes) -> int:
    """Publish `message` on `channel` outside a script; a cluster client routes the SPUBLISH to
    the node owning the channel's slot. Returns how many subscribers (of that node) heard it."""
    reply = await redis.execute_command(publish_command(keys), channel, message)  # type: ignore[no-untyped-call]
    return int(reply)
