"""Redis connections. Bytes in, bytes out: the hot paths never decode what they only forward.

With `cluster=True` the client is redis-py's `RedisCluster`, handed out under the `Redis` type:
it speaks the same commands, scripts and non-transactional pipelines, routed by slot, and the
code keeps to that subset in a cluster (no MULTI or WATCH, no `pubsub()`: sharded pub/sub goes
through `tidings.sharded`)."""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

__all__ = ["connect"]


def connect(url: str, *, retries: int = 3, cluster: bool = False, **kwargs: object) -> Redis:
    """A client with a pool; commands retry briefly on a dropped connection. `cluster`: `url`
    names any node of a Redis Cluster, and the client follows its slot map."""
    if cluster:
        return cast(
            Redis,
            RedisCluster.from_url(
                url,
                decode_responses=False,
                health_check_interval=10,
                retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries),
                retry_on_error=[ConnectionError, TimeoutError],
                **kwargs,
            ),
        )
    client: Redis = Redis.from_url(
        url,
        decode_responses=False,
        health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries),
        retry_on_error=[ConnectionError, TimeoutError],
        **kwargs,  # type: ignore[arg-type]
    )
    return client
