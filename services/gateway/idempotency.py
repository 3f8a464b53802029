"""`Idempotency-Key` on `POST /api/runs`: a retried start gets the run the first one started.

- A key is 1 to 200 printable ASCII characters (else 400), scoped to the client
  (`Principal.client`) and kept 24 h: `<ns>:client:{C}:idem:{H}` (H: SHA-256 of the key) holds
  `<run id> <SHA-256 of the body>`.
- The key is claimed with SET NX *before* anything starts, naming the run id the start will use:
  of any number of concurrent requests with one key, through any gateways, exactly one starts a
  run. The others wait (at most `_WAIT_S`) for that run's record and return it.
- The same key with another body (compared as canonical JSON) is a 422 `idempotency_key_reused`.
- A first request that fails (invalid input, a limit) gives its key back, so a corrected retry may
  use it; only a run that started is remembered.
- The first request answers 201; a replay answers 200 with the run as it is now and the header
  `Idempotent-Replayed: true`, and starts nothing (so it counts against no limit).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
import uuid
from typing import TYPE_CHECKING, Any

from tidings.errors import Conflict, NotFound, TidingsError
from tidings.runs import RunRecord

from .errors import BadRequest
from .limits import start_limited

if TYPE_CHECKING:
    from .context import Gateway

__all__ = ["IDEMPOTENCY_TTL_S", "IdempotencyKeyReused", "start_once"]

IDEMPOTENCY_TTL_S = 86_400
_KEY = re.compile(r"[\x20-\x7e]{1,200}")
_WAIT_S = 10.0

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class IdempotencyKeyReused(TidingsError):
    """The key was used before with another request body."""

    code = "idempotency_key_reused"
    status = 422


def _digest(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def body_hash(body: Any) -> str:
    """The body as canonical JSON (sorted keys, no spaces), hashed."""
    return _digest(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False))


async def start_once(
    ctx: Gateway,
    client: str,
    workflow: str,
    input: dict[str, Any] | None,
    *,
    key: str | None,
    body: Any,
) -> tuple[RunRecord, bool]:
    """Start a run for `client` unless `key` already started one; (record, replayed)."""
    if key is None:
        return await start_limited(ctx, client, workflow, input), False
    if not _KEY.fullmatch(key):
        raise BadRequest("Idempotency-Key must be 1 to 200 printable ASCII characters")
    redis_key = ctx.keys.idempotency(client, _digest(key))
    fingerprint = body_hash(body)
    deadline = time.monotonic() + _WAIT_S
    while True:
        run_id = str(uuid.uuid4())
        value = f"{run_id} {fingerprint}"
        if await ctx.redis.set(redis_key, value, nx=True, ex=IDEMPOTENCY_TTL_S):
            try:
                return await start_limited(ctx, client, workflow, input, run_id=run_id), False
            except BaseException:
                await ctx.redis.register_script(_RELEASE)(keys=[redis_key], args=[value])
                raise
        record = await _replay(ctx, redis_key, fingerprint, deadline)
        if record is not None:
            return record, True
        # The first request gave the key back (it failed): claim it again.


async def _replay(
    ctx: Gateway, redis_key: str, fingerprint: str, deadline: float
) -> RunRecord | None:
    """The run the key's first request started, once its record exists; None when the key was
    given back meanwhile."""
    delay = 0.01
    while True:
        held = await ctx.redis.get(redis_key)
        if held is None:
            return None
        run_id, _, claimed = held.decode().partition(" ")
        if claimed != fingerprint:
            raise IdempotencyKeyReused("this Idempotency-Key was used with another request body")
        try:
            return await ctx.store.get(run_id)
        except NotFound:
            pass  # the first request is still starting it
        if time.monotonic() >= deadline:
            raise Conflict("a request with this Idempotency-Key is still starting its run")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)
