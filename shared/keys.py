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

from .errors import NotFound

__all__ = ["SCHEMA_VERSION", "Keys", "check_run_id", "check_version"]

SCHEMA_VERSION = 2

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

    __slots__ = (
        "active",
        "expiring",
        "ns",
        "queue_prefix",
        "runs",
        "runs_channel",
        "schema",
        "wake_channel",
    )

    def __init__(self, namespace: str = "tidings") -> None:
        self.ns = namespace
        self.schema = f"{namespace}:schema"
        self.runs = f"{namespace}:runs"
        self.active = f"{namespace}:active"
        self.expiring = f"{namespace}:expiring"
        self.queue_prefix = f"{namespace}:queue:"
        self.runs_channel = f"{namespace}:runs"
        self.wake_channel = f"{namespace}:wake"

    def queue_for(self, workflow: str, version: str) -> str:
        """The job queue of one workflow version, `<ns>:queue:<workflow>:<version>` (zset in arq's
        format; schema 1 had one queue). ValueError for a name or version that could break out."""
        if not _WORKFLOW.fullmatch(workflow):
            raise ValueError(f"workflow name {workflow!r} cannot name a queue")
        return f"{self.queue_prefix}{workflow}:{check_version(version)}"

    def queue_pattern(self) -> str:
        """A SCAN pattern matching every job queue of the namespace."""
        return f"{self.queue_prefix}*"

    @property
    def lease_deadlines(self) -> str:
        """Run id → when its lease lapses (ms, Redis clock), written with every grant and renewal
        of a run lease; a sweep reads only the entries that fell due (`tidings.services.worker.
        sweeper` says what each entry means)."""
        return f"{self.ns}:lease_deadlines"

    @property
    def workers(self) -> str:
        """Hash: worker name → when it last (re)connected (ms). Whom CLIENT LIST is asked about."""
        return f"{self.ns}:workers"

    @property
    def sweep_lock(self) -> str:
        """The worker sweeping now: one sweep at a time across the pool (short TTL, renewed)."""
        return f"{self.ns}:lock:sweep"

    def run(self, run_id: str) -> str:
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
        """The run's pub/sub channel (same spelling as its hash; channels are a separate space)."""
        return self.run(run_id)

    def compat_definition(self, definition_id: str) -> str:
        """A workflow created through the seed-000 API, kept until it is executed."""
        return f"{self.ns}:compat:wf:{{{definition_id}}}"

    # -- the workflow catalog (tidings.catalog): workers write it, gateways read it ----------

    @property
    def catalog(self) -> str:
        """Hash: `<name>:<version>` → the workflow's definition (JSON: description, schema)."""
        return f"{self.ns}:catalog"

    @property
    def catalog_versions(self) -> str:
        """Zset: `<name>:<version>` → when a worker first published it (ms)."""
        return f"{self.ns}:catalog:versions"

    @property
    def catalog_serving(self) -> str:
        """Zset: `<name>:<version> <worker>` → until when that worker serves it (ms)."""
        return f"{self.ns}:catalog:serving"

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
        """The run id in a per-run key's hash tag, None for a key that is not one."""
        prefix = f"{self.ns}:run:{{"
        if not key.startswith(prefix):
            return None
        run_id, sep, _ = key[len(prefix) :].partition("}")
        return run_id if sep else None

    def run_id_from_channel(self, channel: str) -> str:
        prefix = f"{self.ns}:run:{{"
        assert channel.startswith(prefix) and channel.endswith("}"), channel
        return channel[len(prefix) : -1]

    # -- the gateway's per-client limits and viewer presence ---------------------------------

    def run_viewers(self, run_id: str) -> str:
        """The run's viewer leases, each `<gateway>:<viewer>` scored by its expiry (ms)."""
        return f"{self.run(run_id)}:viewers"

    def run_affixes(self) -> tuple[str, str]:
        """What goes before and after a run id in its hash's name (for scripts that build it)."""
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
        return f"{self.ns}:stream_runs"

    @property
    def stream_run_ends(self) -> str:
        """The same runs, scored by when they have run for their longest (ms)."""
        return f"{self.ns}:stream_runs:ends"

    @property
    def stream_runs_lock(self) -> str:
        return f"{self.ns}:lock:stream_runs"

    # -- `tidings migrate` (tidings.migrate) -------------------------------------------------

    @property
    def migrate_lock(self) -> str:
        """Held by the one `tidings migrate` at work on the namespace (TTL, renewed)."""
        return f"{self.ns}:lock:migrate"

    @property
    def schema1_queue(self) -> str:
        """Schema 1's single arq queue (zset); only the migration to schema 2 reads it."""
        return f"{self.ns}:queue"

    @property
    def schema1_queue_health(self) -> str:
        """arq's health-check string of schema 1's queue (`<queue>:health-check`)."""
        return f"{self.schema1_queue}:health-check"
