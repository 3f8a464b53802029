"""Which workflow modules a worker imports, and importing them with errors a person can act on.

The list, in order, without repeats:
1. `tidings worker --workflows a,b` when given, else `TIDINGS_WORKFLOWS` (default: the shipped
   `tidings.services.workflows`);
2. every module named by an installed distribution's entry point in the group `tidings.workflows`
   (`[project.entry-points."tidings.workflows"] myflows = "myflows"`): a pip-installed package
   is served without configuration. An entry point's value is a module (an `:attr` part, if any,
   is ignored: importing the module registers its workflows);
3. `TIDINGS_TEST_WORKFLOWS` (the test suite's and the benchmarks' fixtures; `TIDINGS_TEST_*` is
   reserved for them and never read as a setting).

The current directory is importable (searched after everything else on `sys.path`), so
`tidings worker --workflows myflows` finds a `myflows.py` next to where it is started.

A module that fails to import stops the worker: `LoadError` names it and the error in one line
(the CLI exits 2; the traceback is logged at debug level). A module that registers nothing (no
workflow or activity defined in it or in its submodules) is reported as a warning; a worker left
with no workflow at all is a `LoadError`.

A worker then publishes what it loaded to the catalog in Redis (`tidings.catalog.CatalogWriter`)
once it is ready to serve, renews its entries while it runs (`keep_catalog`) and withdraws them
first thing when it stops.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from redis.exceptions import RedisError

from tidings.catalog import REFRESH_S, CatalogWriter
from tidings.sdk import Registry, registry
from tidings.settings import Settings

__all__ = [
    "ENTRY_POINT_GROUP",
    "TEST_WORKFLOWS_ENV",
    "LoadError",
    "keep_catalog",
    "load_workflows",
    "module_list",
    "served_pairs",
]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "tidings.workflows"
TEST_WORKFLOWS_ENV = "TIDINGS_TEST_WORKFLOWS"


class LoadError(Exception):
    """A workflow module could not be loaded; the message is the one line to show."""


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def module_list(settings: Settings, override: Sequence[str] | None = None) -> list[str]:
    """The modules to import, in order, each once (see the module's docstring)."""
    names = list(override) if override else _split(settings.workflows)
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        names.append(ep.value.partition(":")[0].strip())
    names += _split(os.environ.get(TEST_WORKFLOWS_ENV, ""))
    return list(dict.fromkeys(n for n in names if n))


def _defines(target: Registry, module: str) -> bool:
    """Did `module` (or a submodule of it) register a workflow or an activity?"""
    fns = [d.fn for d in target.workflows.values()] + [a.fn for a in target.activities.values()]
    return any(
        (m := getattr(fn, "__module__", "")) == module or m.startswith(module + ".") for fn in fns
    )


def load_workflows(
    settings: Settings,
    override: Sequence[str] | None = None,
    *,
    target: Registry = registry,
) -> list[str]:
    """Import the workflow modules into the process (their decorators fill `target`); returns
    their names. LoadError when one cannot be imported or when no workflow is registered."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    modules = module_list(settings, override)
    if not modules:
        raise LoadError("no workflow modules: set TIDINGS_WORKFLOWS or pass --workflows")
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            logger.debug("importing workflow module %r failed", name, exc_info=True)
            why = " ".join(f"{type(exc).__name__}: {exc}".split())
            if isinstance(exc, ModuleNotFoundError) and exc.name == name:
                why += " (not on PYTHONPATH, installed, or in the current directory)"
            raise LoadError(f"cannot import workflow module {name!r}: {why}") from exc
        if not _defines(target, name):
            logger.warning("workflow module %r registers no workflow or activity", name)
    if not target.workflows:
        raise LoadError(f"no workflow registered by {', '.join(modules)}")
    served = ", ".join(f"{n}@{v}" for n, v in served_pairs(target))
    logger.info("workflows loaded from %s: %s", ", ".join(modules), served)
    return modules


def served_pairs(target: Registry = registry) -> list[tuple[str, str]]:
    """(workflow, version) of every workflow in `target`: the queues a worker claims from."""
    return sorted((d.name, d.version) for d in target.workflows.values())


async def keep_catalog(writer: CatalogWriter) -> None:
    """Renew the worker's catalog entries every `REFRESH_S` until cancelled. A failed renewal
    (Redis away) is retried at the next turn; entries lapse only if renewals fail for `TTL_S`."""
    while True:
        await asyncio.sleep(REFRESH_S)
        try:
            await writer.renew()
        except RedisError as exc:
            logger.warning("could not renew the workflow catalog: %s", exc)
