"""Tidings. `shared/` in the repository, imported as `tidings`.

What a workflow author imports is the SDK (`tidings.sdk`), re-exported here:

    from tidings import Run, TaskContext, activity, workflow

The other modules are what both services share: settings, Redis names, the event model, the bus,
the SSE codec. None of them imports `tidings.services`.
"""

from __future__ import annotations

if __name__ != "tidings":  # loaded from the folder's name: two copies of every class otherwise
    raise ImportError(f"this package is imported as {__name__!r}: import it as 'tidings'")

from . import sdk
from .sdk import *  # noqa: F403  (the SDK is this package's public face)

__all__ = sdk.__all__
