"""Redis Cluster slot arithmetic: which of the 16384 slots a key hashes to, how the slots are
split among primaries, and the hash tags that spread a cluster keyspace's buckets over them.
Pure functions, no I/O."""

from __future__ import annotations

from binascii import crc_hqx
from functools import cache

__all__ = ["SLOTS", "bucket_tag", "key_slot", "slot_ranges"]

SLOTS = 16384


def key_slot(key: str | bytes) -> int:
    """The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag (the part between
    the first `{` and the next `}`, when not empty) or of the whole key, modulo 16384."""
    raw = key.encode() if isinstance(key, str) else key
    start = raw.find(b"{")
    if start >= 0:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return crc_hqx(raw, 0) % SLOTS


@cache
def bucket_tag(bucket: int, buckets: int) -> str:
    """The hash tag of `bucket` of `buckets`, braces included: `{<bucket>.<n>}` with the
    smallest `n` whose slot falls in the bucket's even share of the 16384 slots. A cluster
    whose primaries own contiguous slot ranges (how they are assigned) so gets the buckets
    spread evenly over its primaries, and no two buckets share a slot."""
    if not 0 <= bucket < buckets <= SLOTS:
        raise ValueError(f"bucket {bucket} of {buckets}")
    low, high = bucket * SLOTS // buckets, (bucket + 1) * SLOTS // buckets
    n = 0
    while not low <= key_slot(f"{{{bucket}.{n}}}") < high:
        n += 1
    return f"{{{bucket}.{n}}}"


def slot_ranges(primaries: int) -> list[tuple[int, int]]:
    """0..16383 split into `primaries` contiguous inclusive ranges, sizes differing by 1 at most."""
    if primaries < 1:
        raise ValueError("a cluster needs at least one primary")
    bounds = [SLOTS * i // primaries for i in range(primaries + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(primaries)]
