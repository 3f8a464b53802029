"""Redis connections. Bytes in, bytes out: the hot paths never decode what they only forward."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

__all__ = ["connect"]


def connect(url: str, *, retries: int = 3, **kwargs: object) -> Redis:
    """A client with a pool; commands retry briefly on a dropped connection."""
    client: Redis = Redis.from_url(
        url,
        decode_responses=False,
        health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries),
        retry_on_error=[ConnectionError, TimeoutError],
        **kwargs,  # type: ignore[arg-type]
    )
    return client
