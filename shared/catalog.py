"""The workflow catalog in Redis: what the live workers can run, readable without their code.

Workers publish, gateways read. A gateway never imports a workflow module: it knows a workflow by
its catalog entry (name, version, description, input JSON schema) and by the workers serving it.

Keys (`tidings.keys`):
- `<ns>:catalog` hash, `<name>:<version>` → the definition as JSON. Written by every worker that
  serves that version when it starts (last writer wins: one version is one code, so the entries
  agree), and written back by its renewals if it went missing (a Redis restarted empty). Kept
  when its workers are gone: a queued run of it waits for one, and the catalog still names it
  (`served: false`); `tidings prune` drops it once no live worker serves it, a newer version
  was published and nothing is queued or running at it (`tidings.retention`).
- `<ns>:catalog:versions` zset, `<name>:<version>` → when it was FIRST published (ms, `ZADD NX`);
  never removed, so a restarted old worker never looks newly published.
- `<ns>:catalog:serving` zset, `<name>:<version> <worker>` → the worker's deadline (ms). A worker
  renews its entries every `REFRESH_S` to `now + TTL_S` and removes them when it stops; a killed
  worker's entries count until their deadline, then any writer drops them.
- Every time above is on Redis's clock (`TIME`), like the lease deadlines: workers and gateways on
  hosts whose clocks disagree compare deadlines and publication times written by one another.
- Reads, publications and renewals are each one script over the three keys, which share one slot
  in a cluster (namespace-global keys): atomic on a single Redis and a cluster alike, and timed
  by the clock of the node that holds the catalog.

Decisions:
- The current version of a workflow, the one a new run gets: among the versions a live worker
  serves, the one most recently first published; when none is served, the one most recently
  first published of all (the last known). Starting a new version's workers therefore moves new
  runs to it; an old version's queued and running runs stay on the old queue and its workers.
- `Catalog` (the reader) caches one snapshot for `CACHE_S`; a name it does not know makes it read
  again at once, so a worker started a moment ago is found.
- Validation here is what a JSON schema says (`jsonschema`, draft 2020-12): types, required
  fields, bounds, patterns, enums, no extra fields when the model forbids them. What a schema
  cannot say (a DAG without cycles, min <= max, defaults) is the worker's pydantic model's to
  apply when the run starts: a run whose input it refuses fails at once (`workflow_failed`).
- `RegistryWorkflows` validates with the pydantic models themselves (a process that has the
  code: tests, a tool inside a worker given a registry explicitly).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaError
from pydantic import ValidationError
from redis.asyncio import Redis

from . import codec
from .errors import InvalidInput, NotFound
from .keys import Keys
from .sdk.registry import Registry, WorkflowDef

__all__ = [
    "CACHE_S",
    "REFRESH_S",
    "TTL_S",
    "Catalog",
    "CatalogView",
    "CatalogWriter",
    "Prepared",
    "RegistryWorkflows",
    "WorkflowEntry",
    "WorkflowSource",
    "WorkflowVersion",
]

TTL_S = 15.0  # a worker's entries count this long after its last renewal
REFRESH_S = 5.0  # how often a worker renews them
CACHE_S = 1.0  # how long a gateway reuses one read of the catalog


# KEYS: catalog, catalog:versions, catalog:serving. Returns {seconds, micros (TIME), definitions
# (HGETALL), first publications and serving entries (ZRANGE WITHSCORES each, flat)}.
_READ = """
local t = redis.call('TIME')
return {t[1], t[2], redis.call('HGETALL', KEYS[1]),
  redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES'),
  redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')}
"""
# KEYS: catalog, catalog:versions, catalog:serving. ARGV: mode (`publish` writes the definitions,
# `renew` only those that are missing), ttl ms, n, then n (field, definition JSON) pairs, then
# this worker's serving members. First publications NX; serving entries to now + ttl; entries
# past their deadline (dead workers') dropped. Returns now (ms).
_WRITE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[3])
local set = ARGV[1] == 'publish' and 'HSET' or 'HSETNX'
for i = 0, n - 1 do
  redis.call(set, KEYS[1], ARGV[4 + 2 * i], ARGV[5 + 2 * i])
  redis.call('ZADD', KEYS[2], 'NX', string.format('%d', now), ARGV[4 + 2 * i])
end
local deadline = string.format('%d', now + tonumber(ARGV[2]))
for i = 4 + 2 * n, #ARGV do
  redis.call('ZADD', KEYS[3], deadline, ARGV[i])
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', string.format('%d', now))
return now
"""


def _pairs(flat: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
    return list(zip(flat[::2], flat[1::2], strict=True))


def _field(name: str, version: str) -> str:
    return f"{name}:{version}"


@dataclass(frozen=True, slots=True)
class WorkflowVersion:
    """One version of a workflow as the catalog holds it, with the workers serving it now."""

    name: str
    version: str
    description: str
    input_schema: dict[str, Any]
    published_ms: int  # first published
    workers: tuple[str, ...] = ()

    @property
    def served(self) -> bool:
        return bool(self.workers)


@dataclass(frozen=True, slots=True)
class WorkflowEntry:
    """A workflow by name: its current version (what a new run gets) and every version known."""

    name: str
    current: WorkflowVersion
    versions: tuple[WorkflowVersion, ...]

    @property
    def served(self) -> bool:
        return self.current.served

    def view(self) -> dict[str, Any]:
        """`GET /api/workflows`' item: the current version's fields plus every version."""
        cur = self.current
        return {
            "name": self.name,
            "description": cur.description,
            "version": cur.version,
            "input_schema": cur.input_schema,
            "served": cur.served,
            "workers": len(cur.workers),
            "versions": [
                {"version": v.version, "workers": list(v.workers), "served": v.served}
                for v in self.versions
            ],
        }


def _current(versions: Sequence[WorkflowVersion]) -> WorkflowVersion:
    served = [v for v in versions if v.served]
    return max(served or versions, key=lambda v: (v.published_ms, v.version))


@dataclass(frozen=True, slots=True)
class CatalogView:
    """One consistent read of the catalog."""

    workflows: dict[str, WorkflowEntry] = field(default_factory=dict)

    def entries(self) -> list[WorkflowEntry]:
        return [self.workflows[name] for name in sorted(self.workflows)]

    @classmethod
    def build(
        cls,
        definitions: Mapping[bytes, bytes],
        published: Iterable[tuple[bytes, float]],
        serving: Iterable[bytes],
    ) -> CatalogView:
        first = {member.decode(): int(score) for member, score in published}
        workers: dict[str, list[str]] = {}
        for raw in serving:
            key, _, worker = raw.decode().partition(" ")
            workers.setdefault(key, []).append(worker)
        by_name: dict[str, list[WorkflowVersion]] = {}
        for raw_key, raw in definitions.items():
            key = raw_key.decode()
            try:
                spec = codec.loads(raw)
                version = WorkflowVersion(
                    name=str(spec["name"]),
                    version=str(spec["version"]),
                    description=str(spec.get("description", "")),
                    input_schema=dict(spec["input_schema"]),
                    published_ms=first.get(key, 0),
                    workers=tuple(sorted(workers.get(key, ()))),
                )
            except (ValueError, KeyError, TypeError):
                continue  # not written by this code: not a workflow anyone can start
            by_name.setdefault(version.name, []).append(version)
        entries = {
            name: WorkflowEntry(
                name, _current(found), tuple(sorted(found, key=lambda v: v.published_ms))
            )
            for name, found in by_name.items()
        }
        return cls(entries)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A run about to be started: the version it is routed to and its input as stored."""

    workflow: str
    version: str
    input: dict[str, Any]
    served: bool = True
    workers: int = 0


class WorkflowSource(Protocol):
    """Where `Control` learns which workflows exist and what input each takes."""

    async def prepare(self, workflow: str, input: dict[str, Any] | None) -> Prepared:
        """NotFound for an unknown workflow, InvalidInput for input it refuses."""
        ...


def _unknown(name: str, known: Iterable[str]) -> NotFound:
    return NotFound(f"no workflow {name!r}; known: {', '.join(sorted(known)) or 'none'}")


class Catalog:
    """The catalog as readers see it (gateways, and tools inside workers): cached briefly."""

    def __init__(self, redis: Redis, keys: Keys, *, cache_s: float = CACHE_S) -> None:
        self.redis = redis
        self.keys = keys
        self.cache_s = cache_s
        self._view: CatalogView | None = None
        self._read_at = 0.0
        self._validators: dict[tuple[str, str, str], Draft202012Validator] = {}
        self._read = redis.register_script(_READ)

    async def read(self, *, fresh: bool = False) -> CatalogView:
        now = time.monotonic()
        if not fresh and self._view is not None and now - self._read_at < self.cache_s:
            return self._view
        keys = [self.keys.catalog, self.keys.catalog_versions, self.keys.catalog_serving]
        seconds, micros, definitions, published, serving = await self._read(keys=keys)
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        live = [member for member, deadline in _pairs(serving) if float(deadline) >= now_ms]
        first = [(member, float(score)) for member, score in _pairs(published)]
        self._view = CatalogView.build(dict(_pairs(definitions)), first, live)
        self._read_at = now
        return self._view

    async def get(self, name: str) -> WorkflowEntry:
        """The workflow's entry; NotFound when the catalog has never seen it."""
        view = await self.read()
        entry = view.workflows.get(name)
        if entry is None:
            view = await self.read(fresh=True)
            entry = view.workflows.get(name)
        if entry is None:
            raise _unknown(name, view.workflows)
        return entry

    async def prepare(self, workflow: str, input: dict[str, Any] | None) -> Prepared:
        current = (await self.get(workflow)).current
        value = {} if input is None else input
        self.validate(current, value)
        return Prepared(
            workflow, current.version, value, served=current.served, workers=len(current.workers)
        )

    def validate(self, version: WorkflowVersion, value: Any) -> None:
        """InvalidInput with one detail per schema violation (`loc` inside the input)."""
        text = json.dumps(version.input_schema, sort_keys=True)
        key = (version.name, version.version, text)
        validator = self._validators.get(key)
        if validator is None:
            if len(self._validators) > 256:
                self._validators.clear()
            validator = self._validators[key] = Draft202012Validator(version.input_schema)
        problems = sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.path)))
        if problems:
            message = f"invalid input for workflow {version.name!r}"
            raise InvalidInput(message, errors=[_detail(e) for e in problems])


def _detail(error: SchemaError) -> dict[str, Any]:
    """A schema violation in the shape of pydantic's field errors (`loc`, `msg`, `type`, `input`).

    A missing required field is located at the field, as pydantic does."""
    if error.context:  # anyOf / oneOf: the alternative that came closest says what is wrong
        error = max(
            error.context,
            key=lambda e: (
                len(e.absolute_path),
                e.validator != "type" or e.validator_value != "null",
            ),
        )
    loc: list[str | int] = list(error.absolute_path)
    msg = error.message
    required = error.validator_value
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = (
            [f for f in required if f not in error.instance] if isinstance(required, list) else []
        )
        if missing:
            loc.append(missing[0])
            msg = "Field required"
            return {"loc": loc, "msg": msg, "type": "missing", "input": error.instance}
    return {"loc": loc, "msg": msg, "type": str(error.validator), "input": error.instance}


class RegistryWorkflows:
    """A `WorkflowSource` for a process that has the workflows' code: validates with the pydantic
    models and stores their dump (defaults filled in)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def prepare(self, workflow: str, input: dict[str, Any] | None) -> Prepared:
        definition = self.registry.get_workflow(workflow)
        try:
            model = definition.Input.model_validate({} if input is None else input)
        except ValidationError as exc:
            message = f"invalid input for workflow {workflow!r}"
            raise InvalidInput.from_validation(message, exc) from None
        return Prepared(workflow, definition.version, model.model_dump(mode="json"))


def definition_json(definition: WorkflowDef) -> dict[str, Any]:
    """What the catalog stores of a registered workflow."""
    return {
        "name": definition.name,
        "version": definition.version,
        "description": definition.description,
        "input_schema": definition.schema(),
    }


class CatalogWriter:
    """A worker's side: publish what it serves at start, renew, withdraw when it stops."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        worker: str,
        definitions: Iterable[WorkflowDef],
        *,
        ttl_s: float = TTL_S,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.worker = worker
        self.ttl_s = ttl_s
        self.definitions = list(definitions)
        self._members = [f"{_field(d.name, d.version)} {worker}" for d in self.definitions]
        self._write = redis.register_script(_WRITE)

    async def publish(self) -> None:
        """Write the definitions, first-publication times and this worker's entries; one
        script."""
        await self._written("publish")

    async def renew(self) -> None:
        """Extend this worker's entries, and write back any definition that is gone (a Redis
        that restarted without its data, a flushed key): a worker serving a version the catalog
        no longer defines would leave it unstartable (404) until the worker restarts."""
        await self._written("renew")

    async def _written(self, mode: str) -> None:
        args: list[str | int] = [mode, int(self.ttl_s * 1000), len(self.definitions)]
        for d in self.definitions:
            args += [_field(d.name, d.version), codec.dumps_str(definition_json(d))]
        keys = [self.keys.catalog, self.keys.catalog_versions, self.keys.catalog_serving]
        await self._write(keys=keys, args=[*args, *self._members])

    async def withdraw(self) -> None:
        if self._members:
            await self.redis.zrem(self.keys.catalog_serving, *self._members)
