"""The registry: which workflows and activities a process can run, by name.

A `Registry` is an explicit object; `registry` is the default one, and the module-level
`workflow` / `activity` decorators register into it. A worker loads the modules it is told to
(`TIDINGS_WORKFLOWS`, `tidings worker --workflows`, the `tidings.workflows` entry points): their
decorators fill the default registry, and the worker serves what is in it. Nothing here imports a
workflow module: the gateway never loads workflow code.

    @workflow("research", Input=ResearchInput, description="…", version="1")
    async def research(run: Run, input: ResearchInput) -> dict[str, Any]: ...

    @activity                      # named after the function: "fetch"
    async def fetch(ctx: TaskContext, url: str) -> Page: ...

    @activity("summarize", retries=0, timeout=60)
    async def summarize(ctx: TaskContext, text: str) -> str: ...

An activity is found by name (`get_activity`, what a task's job names) and by function
(`activity_of`, what `run.task(fetch, url)` uses). Its parameters after `ctx` may not be named
`name`, `retries` or `timeout`: those are `run.task`'s own options (`RESERVED_TASK_OPTIONS`).

A workflow's `version` says which code a run was started for: it is recorded on the run, routes
its jobs, and a worker only executes a run of the version it has registered.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from pydantic import BaseModel

from tidings.errors import NotFound

from .protocols import check_retries, check_timeout

__all__ = [
    "RESERVED_TASK_OPTIONS",
    "ActivityDef",
    "Registry",
    "WorkflowDef",
    "activity",
    "check_version",
    "registry",
    "workflow",
]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_VERSION = re.compile(r"[A-Za-z0-9._-]{1,32}")
# `run.task`'s own keywords: never an activity's arguments.
RESERVED_TASK_OPTIONS = frozenset({"name", "retries", "timeout"})


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"{kind} name {name!r}: 1-64 letters, digits, '_', '.' or '-', not starting with . or -"
        )
    return name


def check_version(version: str) -> str:
    """A workflow version: 1-32 letters, digits, '.', '_' or '-' (it names a queue)."""
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise ValueError(f"workflow version {version!r}: 1-32 letters, digits, '.', '_' or '-'")
    return version


@dataclass(frozen=True, slots=True)
class WorkflowDef:
    name: str
    fn: Callable[[Any, Any], Awaitable[Any]]
    Input: type[BaseModel]
    description: str = ""
    version: str = "1"

    def schema(self) -> dict[str, Any]:
        return self.Input.model_json_schema()


@dataclass(frozen=True, slots=True)
class ActivityDef:
    name: str
    fn: Callable[..., Awaitable[Any]]
    retries: int = 2  # a task's default: failed tries retried
    timeout: float | None = None  # a task's default: seconds per try


class Registry:
    """Workflows and activities by name. Registering the same name twice with another function
    is an error (two modules claiming one name); the same function again is a no-op."""

    def __init__(self) -> None:
        self.workflows: dict[str, WorkflowDef] = {}
        self.activities: dict[str, ActivityDef] = {}
        self._by_fn: dict[Callable[..., Any], ActivityDef] = {}

    def workflow(
        self,
        name: str,
        *,
        Input: type[BaseModel],
        description: str = "",
        version: str = "1",
    ) -> Callable[[F], F]:
        _check_name("workflow", name)
        check_version(version)
        if not (isinstance(Input, type) and issubclass(Input, BaseModel)):
            raise TypeError(f"workflow {name!r}: Input must be a pydantic model class")

        def register(fn: F) -> F:
            known = self.workflows.get(name)
            if known is not None and known.fn is not fn:
                raise ValueError(f"workflow {name!r} registered twice")
            text = description or (fn.__doc__ or "").strip()
            self.workflows[name] = WorkflowDef(name, fn, Input, text, version)
            return fn

        return register

    @overload
    def activity(self, fn: F, /) -> F: ...

    @overload
    def activity(
        self, name: str | None = None, /, *, retries: int = 2, timeout: float | None = None
    ) -> Callable[[F], F]: ...

    def activity(
        self,
        name: str | Callable[..., Awaitable[Any]] | None = None,
        /,
        *,
        retries: int = 2,
        timeout: float | None = None,
    ) -> Any:
        """Register `async def fn(ctx: TaskContext, *args, **kwargs)` as a fan-out-able task:
        `@activity`, `@activity()` (named after the function) or `@activity("name", …)`, with
        the defaults of its tasks' `retries` and `timeout`."""
        if callable(name):
            return self.activity()(name)
        given = name if isinstance(name, str) else None
        if given is not None:
            _check_name("activity", given)
        check_retries(retries)
        timeout = check_timeout(timeout)

        def register(fn: F) -> F:
            key = given or str(getattr(fn, "__name__", ""))
            _check_name("activity", key)
            _check_activity_params(key, fn)
            known = self.activities.get(key)
            if known is not None and known.fn is not fn:
                raise ValueError(f"activity {key!r} registered twice")
            other = self._by_fn.get(fn)
            if other is not None and other.name != key:
                raise ValueError(f"{key!r}: this function is already activity {other.name!r}")
            self.activities[key] = self._by_fn[fn] = ActivityDef(key, fn, retries, timeout)
            return fn

        return register

    def get_workflow(self, name: str) -> WorkflowDef:
        try:
            return self.workflows[name]
        except KeyError:
            known = ", ".join(sorted(self.workflows)) or "none"
            raise NotFound(f"no workflow {name!r}; known: {known}") from None

    def get_activity(self, name: str) -> ActivityDef:
        try:
            return self.activities[name]
        except KeyError:
            known = ", ".join(sorted(self.activities)) or "none"
            raise NotFound(f"no activity {name!r}; known: {known}") from None

    def activity_of(self, fn: Callable[..., Any]) -> ActivityDef:
        """The activity `fn` was registered as; TypeError naming it if it is none."""
        try:
            found = self._by_fn.get(fn)
        except TypeError:  # unhashable: certainly not registered
            found = None
        if found is None:
            what = getattr(fn, "__qualname__", None) or repr(fn)
            raise TypeError(
                f"{what} is not a registered activity: decorate it with @activity "
                "(and import its module in the worker)"
            )
        return found


def _check_activity_params(name: str, fn: Callable[..., Any]) -> None:
    """Its parameters after `ctx` must not be named as `run.task`'s own options."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return  # a builtin or a callable without a signature: nothing to check
    clash = sorted(
        p.name
        for p in params[1:]
        if p.name in RESERVED_TASK_OPTIONS
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    )
    if clash:
        raise TypeError(
            f"activity {name!r}: parameter {', '.join(map(repr, clash))} is reserved for "
            f"run.task's options ({', '.join(sorted(RESERVED_TASK_OPTIONS))}); rename it"
        )


registry = Registry()
workflow = registry.workflow
activity = registry.activity
