"""The registry: which workflows and activities a process can run, by name.

A `Registry` is an explicit object; `registry` is the default one, and the module-level
`workflow` / `activity` decorators register into it. A worker loads the modules it is told to
(`TIDINGS_WORKFLOWS`, `tidings worker --workflows`, the `tidings.workflows` entry points): their
decorators fill the default registry, and the worker serves what is in it. Nothing here imports a
workflow module: the gateway never loads workflow code.

    @workflow("research", Input=ResearchInput, description="…", version="1")
    async def research(run: Run, input: ResearchInput) -> dict[str, Any]: ...
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

from tidings.errors import NotFound

__all__ = [
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


class Registry:
    """Workflows and activities by name. Registering the same name twice with another function
    is an error (two modules claiming one name); the same function again is a no-op."""

    def __init__(self) -> None:
        self.workflows: dict[str, WorkflowDef] = {}
        self.activities: dict[str, ActivityDef] = {}

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

    def activity(self, name: str) -> Callable[[F], F]:
        """Register `async def fn(ctx: TaskContext, *args, **kwargs)` as a fan-out-able task."""
        _check_name("activity", name)

        def register(fn: F) -> F:
            known = self.activities.get(name)
            if known is not None and known.fn is not fn:
                raise ValueError(f"activity {name!r} registered twice")
            self.activities[name] = ActivityDef(name, fn)
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
            raise NotFound(f"no activity {name!r}") from None


registry = Registry()
workflow = registry.workflow
activity = registry.activity
