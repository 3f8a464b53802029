"""What the shipped workflows need from their process beyond the `Run` protocol.

- `model_info(handle)`: `{"model": name, "simulated": bool}` for event data, so every output of a
  simulated model is labelled as such. It uses the handle's `llm` attribute when the engine
  provides one (the same model `stream_llm` uses) and otherwise builds one from the worker's
  settings.
- `control_for(run)`: a `tidings.control.Control` for tools that start, list or stop other runs.
  It uses the handle's `control` attribute when present; otherwise it builds one from the handle's
  `settings` (or, failing that, from the environment the worker was started with) on its own
  short-lived Redis connection, closed when the block exits. Tools are rare; a connection per
  tool call is cheap and keeps the workflow independent of the worker's internals.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from tidings.services.worker.llm import LLM, make_llm
from tidings.settings import Settings

if TYPE_CHECKING:
    from tidings.control import Control

__all__ = ["control_for", "model_info", "settings_of"]


@functools.cache
def _env_settings() -> Settings:
    return Settings.from_env()


def settings_of(handle: object) -> Settings:
    settings = getattr(handle, "settings", None)
    return settings if isinstance(settings, Settings) else _env_settings()


@functools.cache
def _llm_for(settings: Settings) -> LLM:
    return make_llm(settings)


def model_info(handle: object) -> dict[str, Any]:
    llm = getattr(handle, "llm", None)
    if not isinstance(llm, LLM):
        llm = _llm_for(settings_of(handle))
    return {"model": llm.name, "simulated": llm.simulated}


@asynccontextmanager
async def control_for(handle: object) -> AsyncIterator[Control]:
    from tidings.control import Control

    existing = getattr(handle, "control", None)
    if isinstance(existing, Control):
        yield existing
        return
    from tidings.bus import Bus
    from tidings.keys import Keys
    from tidings.redis import connect

    settings = settings_of(handle)
    if not settings.redis_url:
        raise RuntimeError("no redis_url in the worker's settings: cannot reach other runs")
    redis = connect(settings.redis_url)
    try:
        keys = Keys(settings.namespace)
        yield Control(redis, keys, Bus.from_settings(redis, keys, settings), settings)
    finally:
        await redis.aclose()
