"""What the shipped workflows share beyond the SDK.

- `model_info(handle)`: `{"model": name, "simulated": bool}` for event data and state, so every
  output of a simulated model is labelled as such. The model is the one the run's (or task's)
  `model` exposes: the same one `stream_llm` and `converse` use.
"""

from __future__ import annotations

from typing import Any

from tidings.sdk import Run, TaskContext

__all__ = ["model_info"]


def model_info(handle: Run | TaskContext) -> dict[str, Any]:
    return {"model": handle.model.name, "simulated": handle.model.simulated}
