"""Every Redis key and channel name Tidings uses, spelled once.

Schema version 1 (stored at `<ns>:schema`). `<ns>` is the namespace setting, `tidings` by default.
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
| `<ns>:queue`                 | zset    | the arq queue                                            |
| channel `<ns>:run:{ID}`      | pub/sub | each event of the run (JSON with its stream `id`)        |
| channel `<ns>:runs`          | pub/sub | run lifecycle summaries (JSON)                           |
| channel `<ns>:wake`          | pub/sub | workers' doorbell: `job <id>` enqueued, `signal <run>`   |
| `<ns>:compat:wf:{ID}`        | string  | seed-000 workflow definition until `execute` (TTL 1 d)   |

arq keeps its own per-job keys outside the namespace, named by job id (`run:{ID}:{attempt}`,
`task:{ID}:{TID}:{attempt}.{try}`, see `shared.jobs`): `arq:job:<job id>` (the JSON payload),
`arq:in-progress:<job id>` and `arq:retry:<job id>`, all short-lived.
"""

from __future__ import annotations

import re

from .errors import NotFound

__all__ = ["SCHEMA_VERSION", "Keys", "check_run_id"]

SCHEMA_VERSION = 1

_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_run_id(run_id: str) -> str:
    """Run IDs end up inside hash tags and channel names: allow nothing that could break out."""
    if not _RUN_ID.fullmatch(run_id):  # `$` would let a trailing newline through
        raise NotFound(f"no run {run_id!r}")
    return run_id


class Keys:
    """Names for one namespace. Cheap to build; build one per process and pass it around."""

    __slots__ = ("active", "ns", "queue", "runs", "runs_channel", "schema", "wake_channel")

    def __init__(self, namespace: str = "tidings") -> None:
        self.ns = namespace
        self.schema = f"{namespace}:schema"
        self.runs = f"{namespace}:runs"
        self.active = f"{namespace}:active"
        self.queue = f"{namespace}:queue"
        self.runs_channel = f"{namespace}:runs"
        self.wake_channel = f"{namespace}:wake"

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

    def run_keys(self, run_id: str) -> list[str]:
        """Every key a run owns except task leases (for deletion and tests)."""
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

    def run_id_from_channel(self, channel: str) -> str:
        prefix = f"{self.ns}:run:{{"
        assert channel.startswith(prefix) and channel.endswith("}"), channel
        return channel[len(prefix) : -1]
