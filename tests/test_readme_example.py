"""The README's "Writing one" example, run as written on a real worker."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from tests.engine_helpers import listening, until, wait_terminal
from tidings.bus import Bus
from tidings.control import Control
from tidings.events import EventType, RunStatus
from tidings.keys import Keys

README = Path(__file__).resolve().parent.parent / "README.md"


async def test_the_readme_workflow_example_runs(
    tmp_path: Path,
    processes: Any,
    settings_env: Callable[..., dict[str, str]],
    redis: Redis,
    keys: Keys,
    bus: Bus,
    control: Control,
) -> None:
    [example] = re.findall(r"Writing one:\n\n```python\n(.*?)```", README.read_text(), re.S)
    (tmp_path / "readme_example.py").write_text(example)
    env = {
        **settings_env(llm_token_delay_ms=1),
        "PYTHONPATH": str(tmp_path),
        "TIDINGS_TEST_WORKFLOWS": "readme_example",
    }
    processes.python("tidings.services.worker", env=env, name="worker")

    await until(lambda: listening(redis, keys, 1), what="the worker listening")
    # Control validates input against the registered model, so the test process loads it too.
    sys.path.insert(0, str(tmp_path))
    try:
        import readme_example  # noqa: F401
    finally:
        sys.path.remove(str(tmp_path))

    run = await control.start("quick_research", {"topic": "tides"})
    final = await wait_terminal(bus, run.run_id)
    assert final.type is EventType.WORKFLOW_COMPLETED, final
    record = await control.get(run.run_id)
    assert record.status is RunStatus.COMPLETED
    answers = record.result["answers"]
    assert len(answers) == 3 and all(isinstance(a, str) and a for a in answers)
    assert record.progress == 100
