"""Every Redis key and channel name Tidings uses, spelled once.

Schema version 2 (stored at `<ns>:schema`; `tidings migrate` upgrades a schema-1 keyspace, see
`tidings.migrate_schema2`). `<ns>` is the namespace setting, `tidings` by default.
A run's keys share the hash tag `{ID}` so a Redis Cluster keeps them in one slot, which the atomic
publish script needs.

| name                         | type    | what                                                    |
|------------------------------|---------|---------------------------------------------------------|
| `<ns>:schema`                | string  | schema version of this keyspace                          |
| `<ns>:run:{ID}`              | hash    | run record: workflow, input, status, progress, …         |
| `<ns>:run:{ID}:events`       | stream  | durable event log; entry ID = SSE `id`; field `e` = JSON |
| `<ns>:run:{ID}:state`        | string  | queryable state snapshot (JSON)                          |
| `<ns>:run:{ID}:steps`        | hash    | checkpoints: step/task key → JSON result                 |
| `<ns>:run:{ID}:tasks`        | hash    | fanned-out task specs: task id → JSON                    |
| `<ns>:run:{ID}:done`         | list    | task ids finished, popped by the waiting run             |
| `<ns>:run:{ID}:signals`      | list    | pending signals (JSON), oldest first                     |
| `<ns>:run:{ID}:lease`        | string  | `worker attempt`, short TTL, renewed while running       |
| `<ns>:run:{ID}:tlease:{TID}` | string  | a fanned-out task's lease                                |
| `<ns>:runs`                  | zset    | every run by creation time (ms): history                 |
| `<ns>:active`                | zset    | runs not yet finished: what the sweeper checks           |
| `<ns>:expiring`              | zset    | finished runs by when their keys expire (ms)             |
| `<ns>:queue:{WF}:{V}`        | zset    | the arq queue of workflow WF at version V (schema 2)     |
| `<ns>:lease_deadlines`       | zset    | run id → when its lease lapses (ms, Redis clock): sweeps |
| `<ns>:workers`               | hash    | worker name → when it last (re)connected (ms): liveness  |
| `<ns>:lock:sweep`            | string  | the worker sweeping now (short TTL, renewed)             |
| channel `<ns>:run:{ID}`      | pub/sub | each event of the run (JSON with its stream `id`)        |
| channel `<ns>:runs`          | pub/sub | run lifecycle summaries (JSON)                           |
| channel `<ns>:wake`          | pub/sub | doorbell: `job <wf>:<version> <id>`, `signal <run>`      |
| `<ns>:compat:wf:{ID}`        | string  | seed-000 workflow definition until `execute` (TTL 1 d)   |
| `<ns>:catalog`               | hash    | workflow catalog: `<name>:<version>` → definition JSON   |
| `<ns>:catalog:versions`      | zset    | `<name>:<version>` → when first published (ms)           |
| `<ns>:catalog:serving`       | zset    | `<name>:<version> <worker>` → the worker's deadline (ms) |
| `<ns>:run:{ID}:viewers`      | zset    | viewer leases of the run (→ expiry), with their own TTL  |
| `<ns>:client:{C}:starts`     | zset    | runs client C started in the last minute (id → ms)       |
| `<ns>:client:{C}:runs`       | zset    | runs client C started, until seen finished (id → ms)     |
| `<ns>:client:{C}:viewers`    | zset    | client C's viewer leases (`<gateway>:<viewer>` → expiry) |
| `<ns>:client:{C}:idem:{H}`   | string  | `<run id> <body hash>` of an Idempotency-Key (TTL 1 d)   |
| `<ns>:stream_runs`           | zset    | runs a seed stream started → when they are orphaned (ms) |
| `<ns>:stream_runs:ends`      | zset    | the same runs → when they have run their longest (ms)    |
| `<ns>:lock:stream_runs`      | string  | the gateway sweeping `stream_runs` (short TTL)           |
| `<ns>:lock:migrate`          | string  | the `tidings migrate` at work (TTL, renewed)             |

When a run finishes, the publish script that records its terminal event gives every key above
that carries its `{ID}` the retention TTL (`TIDINGS_RETENTION`; leases keep their shorter one) and
enters the run in `<ns>:expiring`; entries that fall due are dropped from `<ns>:runs` as later runs
finish, by `tidings prune`, and by any listing that meets a run whose record is gone.

arq keeps its own per-job keys outside the namespace, named by job id (`run:{ID}:{attempt}`,
`task:{ID}:{TID}:{attempt}.{try}`, see `tidings.jobs`): `arq:job:<job id>` (the JSON payload) and
`arq:in-progress:<job id>`, both short-lived. A run's jobs, its tasks' included, go to the queue of
the run's workflow version (`queue_for`); a worker serves the queues of the versions it loaded.
"""

from __future__ import annotations

import re
from binascii import crc_hqx

from .errors import NotFound
from .slots import bucket_tag

__all__ = ["CLUSTER_BUCKETS", "SCHEMA_VERSION", "Keys", "check_run_id", "check_version"]

SCHEMA_VERSION = 2
# How many buckets a cluster keyspace spreads its runs over (module docstring, "Cluster").
CLUSTER_BUCKETS = 16

_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CLIENT_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")
# The registry's rules (tidings.sdk.registry): a queue's name holds both, nothing may break out.
_WORKFLOW = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_VERSION = re.compile(r"[A-Za-z0-9._-]{1,32}")


def check_run_id(run_id: str) -> str:
    """Run IDs end up inside hash tags and channel names: allow nothing that could break out."""
    if not _RUN_ID.fullmatch(run_id):  # `$` would let a trailing newline through
        raise NotFound(f"no run {run_id!r}")
    return run_id


def check_version(version: str) -> str:
    """A workflow version: 1-32 letters, digits, '.', '_' or '-' (it names a queue)."""
    if not _VERSION.fullmatch(version):
        raise ValueError(f"workflow version {version!r}: 1-32 letters, digits, '.', '_' or '-'")
    return version


class Keys:
    """Names for one namespace. Cheap to build; build one per process and pass it around."""

    __slots__ = ("_global", "_tags", "buckets", "ns", "queue_prefix", "schema")

    def __init__(self, namespace: str = "tidings", *, buckets: int = 0) -> None:
        """`buckets` 0: a single Redis's keyspace; N: a cluster keyspace of N buckets."""
        if not 0 <= buckets <= 1024:
            raise ValueError(f"buckets {buckets}: 0 (a single Redis) to 1024")
        self.ns = namespace
        self.buckets = buckets
        self._tags = [bucket_tag(b, buckets) for b in range(buckets)] or [""]
        # Keys of the namespace that belong to no run, bucket or client: one slot in a cluster.
        self._global = f"{namespace}:{{g}}" if buckets else namespace
        self.schema = f"{self._global}:schema"
        self.queue_prefix = f"{namespace}:queue:"

    # -- buckets: where a run's keys live in a cluster -----------------------------------------

    @property
    def clustered(self) -> bool:
        return self.buckets > 0

    @property
    def bucket_ids(self) -> range:
        """Every bucket: a loop over them visits every index, queue and channel of its kind."""
        return range(len(self._tags))

    def bucket(self, run_id: str) -> int:
        """The bucket a run's keys, its index entries and its jobs live in (0 on a single Redis)."""
        if not self.buckets:
            return 0
        return crc_hqx(run_id.encode(), 0) % self.buckets

    def tag(self, bucket: int) -> str:
        """A bucket's hash tag, braces included ('' on a single Redis)."""
        return self._tags[bucket]

    def run_tag(self, run_id: str) -> str:
        """The hash tag of a run's bucket ('' on a single Redis)."""
        return self._tags[self.bucket(run_id)] if self.buckets else ""

    def _in(self, name: str, bucket: int) -> str:
        return f"{self.ns}:{name}:{self._tags[bucket]}" if self.buckets else f"{self.ns}:{name}"

    # -- per-bucket indexes and channels (one of each on a single Redis) -----------------------

    def runs_in(self, bucket: int) -> str:
        """Zset: the bucket's runs by creation time (ms): history."""
        return self._in("runs", bucket)

    def active_in(self, bucket: int) -> str:
        """Zset: the bucket's runs not yet finished."""
        return self._in("active", bucket)

    def expiring_in(self, bucket: int) -> str:
        """Zset: the bucket's finished runs by when their keys expire (ms)."""
        return self._in("expiring", bucket)

    def lease_deadlines_in(self, bucket: int) -> str:
        """Zset: run id → when its lease lapses (ms, Redis clock), written with every grant and
        renewal of a run lease; a sweep reads only the entries that fell due (`tidings.services.
        worker.sweeper` says what each entry means)."""
        return self._in("lease_deadlines", bucket)

    def runs_channel_in(self, bucket: int) -> str:
        """Channel: lifecycle summaries of the bucket's runs."""
        return self._in("runs", bucket)

    def wake_channel_in(self, bucket: int) -> str:
        """Channel: the doorbell of the bucket's queues and runs."""
        return self._in("wake", bucket)

    def runs_of(self, run_id: str) -> str:
        return self.runs_in(self.bucket(run_id))

    def active_of(self, run_id: str) -> str:
        return self.active_in(self.bucket(run_id))

    def expiring_of(self, run_id: str) -> str:
        return self.expiring_in(self.bucket(run_id))

    def lease_deadlines_of(self, run_id: str) -> str:
        return self.lease_deadlines_in(self.bucket(run_id))

    def runs_channel_of(self, run_id: str) -> str:
        return self.runs_channel_in(self.bucket(run_id))

    def wake_channel_of(self, run_id: str) -> str:
        return self.wake_channel_in(self.bucket(run_id))

    def _single(self, name: str) -> str:
        if self.buckets:
            raise AssertionError(f"a cluster keyspace has one {name} per bucket: use {name}_in")
        return f"{self.ns}:{name}"

    @property
    def runs(self) -> str:
        """A single Redis's history index (`runs_in(0)`)."""
        return self._single("runs")

    @property
    def active(self) -> str:
        return self._single("active")

    @property
    def expiring(self) -> str:
        return self._single("expiring")

    @property
    def lease_deadlines(self) -> str:
        return self._single("lease_deadlines")

    @property
    def runs_channel(self) -> str:
        return self._single("runs")

    @property
    def wake_channel(self) -> str:
        return self._single("wake")

    def queue_for(self, workflow: str, version: str, bucket: int = 0) -> str:
        """The job queue of one workflow version (in one bucket), `<ns>:queue:<workflow>:<version>`
        (a cluster's: `<ns>:queue:<tag>:<workflow>:<version>`; zset in arq's format; schema 1 had
        one queue). ValueError for a name or version that could break out."""
        if not _WORKFLOW.fullmatch(workflow):
            raise ValueError(f"workflow name {workflow!r} cannot name a queue")
        tag = f"{self._tags[bucket]}:" if self.buckets else ""
        return f"{self.queue_prefix}{tag}{workflow}:{check_version(version)}"

    def queues_for(self, workflow: str, version: str) -> list[str]:
        """The queues of one workflow version, one per bucket: what a worker serving it polls."""
        return [self.queue_for(workflow, version, b) for b in self.bucket_ids]

    def queue_pattern(self) -> str:
        """A SCAN pattern matching every job queue of the namespace."""
        return f"{self.queue_prefix}*"

    @property
    def workers(self) -> str:
        """Hash: worker name → when it last (re)connected (ms). Whom CLIENT LIST is asked about."""
        return f"{self._global}:workers"

    @property
    def sweep_lock(self) -> str:
        """The worker sweeping now: one sweep at a time across the pool (short TTL, renewed)."""
        return f"{self._global}:lock:sweep"

    def run(self, run_id: str) -> str:
        if self.buckets:
            return f"{self.ns}:run:{self.run_tag(run_id)}:{run_id}"
        return f"{self.ns}:run:{{{run_id}}}"

    def events(self, run_id: str) -> str:
        return f"{self.run(run_id)}:events"

    def state(self, run_id: str) -> str:
        return f"{self.run(run_id)}:state"

    def steps(self, run_id: str) -> str:
        return f"{self.run(run_id)}:steps"

    def tasks(self, run_id: str) -> str:
        return f"{self.run(run_id)}:tasks"

    def done(self, run_id: str) -> str:
        return f"{self.run(run_id)}:done"

    def signals(self, run_id: str) -> str:
        return f"{self.run(run_id)}:signals"

    def lease(self, run_id: str) -> str:
        return f"{self.run(run_id)}:lease"

    def task_lease(self, run_id: str, task_id: str) -> str:
        return f"{self.run(run_id)}:tlease:{task_id}"

    def run_channel(self, run_id: str) -> str:
        """The run's pub/sub channel (same spelling as its hash; channels are a separate space,
        but a cluster's sharded channels live in slots as keys do: the run's, here)."""
        return self.run(run_id)

    def compat_definition(self, definition_id: str) -> str:
        """A workflow created through the seed-000 API, kept until it is executed."""
        return f"{self.ns}:compat:wf:{{{definition_id}}}"

    # -- the workflow catalog (tidings.catalog): workers write it, gateways read it ----------

    @property
    def catalog(self) -> str:
        """Hash: `<name>:<version>` → the workflow's definition (JSON: description, schema)."""
        return f"{self._global}:catalog"

    @property
    def catalog_versions(self) -> str:
        """Zset: `<name>:<version>` → when a worker first published it (ms)."""
        return f"{self._global}:catalog:versions"

    @property
    def catalog_serving(self) -> str:
        """Zset: `<name>:<version> <worker>` → until when that worker serves it (ms)."""
        return f"{self._global}:catalog:serving"

    def run_keys(self, run_id: str) -> list[str]:
        """Every key a run owns except task leases (whose names hold task ids): what retention
        expires when the run finishes and `tidings prune` deletes. A new per-run key belongs
        here."""
        return [
            self.run(run_id),
            self.events(run_id),
            self.state(run_id),
            self.steps(run_id),
            self.tasks(run_id),
            self.done(run_id),
            self.signals(run_id),
            self.lease(run_id),
        ]

    def run_key_pattern(self) -> str:
        """A SCAN pattern matching every per-run key (and nothing else of the namespace)."""
        return f"{self.ns}:run:{{*}}*"

    def run_id_from_key(self, key: str) -> str | None:
        """The run id of a per-run key, None for a key that is not one."""
        prefix = f"{self.ns}:run:{{"
        if not key.startswith(prefix):
            return None
        inside, sep, rest = key[len(prefix) :].partition("}")
        if not sep:
            return None
        if not self.buckets:
            return inside
        run_id = rest[1:].partition(":")[0] if rest.startswith(":") else ""
        return run_id if run_id and self.run_tag(run_id) == f"{{{inside}}}" else None

    def run_id_from_channel(self, channel: str) -> str:
        run_id = self.run_id_from_key(channel)
        assert run_id is not None and self.run_channel(run_id) == channel, channel
        return run_id

    # -- the gateway's per-client limits and viewer presence ---------------------------------

    def run_viewers(self, run_id: str) -> str:
        """The run's viewer leases, each `<gateway>:<viewer>` scored by its expiry (ms)."""
        return f"{self.run(run_id)}:viewers"

    def run_affixes(self) -> tuple[str, str]:
        """What goes before and after a run id in its hash's name (for scripts that build it;
        a single Redis's only: a cluster's run keys are named by their bucket)."""
        if self.buckets:
            raise AssertionError("a cluster keyspace's run keys are named by bucket, not affixes")
        head, _, tail = self.run("\0").partition("\0")
        return head, tail

    def client(self, client: str) -> str:
        """The prefix of one client's keys. A client id (`token:…`, `session:…`, `addr:…`) may
        hold an address taken from a header, so anything but a plain name character is `_`."""
        return f"{self.ns}:client:{{{_CLIENT_UNSAFE.sub('_', client)[:120]}}}"

    def client_starts(self, client: str) -> str:
        return f"{self.client(client)}:starts"

    def client_runs(self, client: str) -> str:
        return f"{self.client(client)}:runs"

    def client_viewers(self, client: str) -> str:
        return f"{self.client(client)}:viewers"

    def idempotency(self, client: str, key_hash: str) -> str:
        return f"{self.client(client)}:idem:{key_hash}"

    @property
    def stream_runs(self) -> str:
        """Runs a seed stream started, scored by when they count as orphaned (ms)."""
        return f"{self._global}:stream_runs"

    @property
    def stream_run_ends(self) -> str:
        """The same runs, scored by when they have run for their longest (ms)."""
        return f"{self._global}:stream_runs:ends"

    @property
    def stream_runs_lock(self) -> str:
        return f"{self._global}:lock:stream_runs"

    # -- `tidings migrate` (tidings.migrate) -------------------------------------------------

    @property
    def migrate_lock(self) -> str:
        """Held by the one `tidings migrate` at work on the namespace (TTL, renewed)."""
        return f"{self._global}:lock:migrate"

    @property
    def schema1_queue(self) -> str:
        """Schema 1's single arq queue (zset); only the migration to schema 2 reads it."""
        return f"{self.ns}:queue"

    @property
    def schema1_queue_health(self) -> str:
        """arq's health-check string of schema 1's queue (`<queue>:health-check`)."""
        return f"{self.schema1_queue}:health-check"
