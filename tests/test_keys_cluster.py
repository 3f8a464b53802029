"""The cluster keyspace's names (`Keys(buckets=N)`): a run's keys, its index entries, its jobs and
its channels share one slot; buckets spread evenly over the slots; a single Redis's names are
what they always were."""

from __future__ import annotations

import uuid

import pytest
from redis.crc import key_slot as redis_key_slot

from tidings.jobs import job_key, run_job_id, task_job_id
from tidings.keys import CLUSTER_BUCKETS, Keys
from tidings.slots import bucket_tag, key_slot


def test_key_slot_is_the_slot_the_cluster_client_routes_by() -> None:
    # redis-py's RedisCluster routes every command by `redis.crc.key_slot`: ours must agree.
    cases = ["foo", "{user1000}.following", "foo{}{bar}", "foo{{bar}}zap", "{}", "a{b", "}{x}"]
    cases += [f"tidings:run:{uuid.uuid4()}:{n}" for n in range(500)]
    for key in cases:
        assert key_slot(key) == key_slot(key.encode()) == redis_key_slot(key.encode()), key
    assert key_slot("{user1000}.following") == key_slot("user1000")


def test_a_single_redis_keeps_its_names() -> None:
    keys = Keys("tidings")
    assert keys.run("abc") == "tidings:run:{abc}"
    assert keys.run_channel("abc") == "tidings:run:{abc}"
    assert keys.active == keys.active_in(0) == keys.active_of("abc") == "tidings:active"
    assert keys.runs == "tidings:runs" and keys.runs_channel == "tidings:runs"
    assert keys.wake_channel == keys.wake_channel_of("x") == "tidings:wake"
    assert keys.queue_for("research", "1") == "tidings:queue:research:1"
    assert keys.queues_for("research", "1") == ["tidings:queue:research:1"]
    assert keys.catalog == "tidings:catalog" and keys.schema == "tidings:schema"
    assert list(keys.bucket_ids) == [0] and keys.run_tag("abc") == ""
    assert run_job_id("abc", 2) == "run:abc:2"


def test_a_cluster_keyspace_keeps_each_run_in_one_slot() -> None:
    keys = Keys("tidings", buckets=CLUSTER_BUCKETS)
    for _ in range(200):
        rid = str(uuid.uuid4())
        tag = keys.run_tag(rid)
        own = [
            *keys.run_keys(rid),
            keys.run_channel(rid),
            keys.task_lease(rid, "t1"),
            keys.run_viewers(rid),
            keys.active_of(rid),
            keys.runs_of(rid),
            keys.expiring_of(rid),
            keys.lease_deadlines_of(rid),
            keys.runs_channel_of(rid),
            keys.wake_channel_of(rid),
            keys.queue_for("research", "1", keys.bucket(rid)),
            job_key(run_job_id(rid, 3, tag)),
            job_key(task_job_id(rid, "t1", 3, 1, tag)),
        ]
        assert len({key_slot(k) for k in own}) == 1, own
        assert keys.run_id_from_key(keys.events(rid)) == rid
        assert keys.run_id_from_channel(keys.run_channel(rid)) == rid
    assert keys.run_id_from_key("tidings:run:{0.0}:") is None
    assert keys.run_id_from_key("tidings:runs:{0.0}") is None
    global_ = [keys.catalog, keys.catalog_versions, keys.catalog_serving, keys.schema]
    assert len({key_slot(k) for k in global_}) == 1
    with pytest.raises(AssertionError):
        _ = keys.active


@pytest.mark.parametrize("buckets", [1, 3, 16, 100])
def test_buckets_spread_evenly_over_the_slots(buckets: int) -> None:
    slots = [key_slot(bucket_tag(b, buckets)) for b in range(buckets)]
    for b, slot in enumerate(slots):
        assert b * 16384 // buckets <= slot < (b + 1) * 16384 // buckets
    # Three primaries owning contiguous thirds get a third of the buckets each, give or take one.
    thirds = [sum(1 for s in slots if n * 16384 // 3 <= s < (n + 1) * 16384 // 3) for n in range(3)]
    assert max(thirds) - min(thirds) <= 1, thirds
