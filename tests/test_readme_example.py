"""The README's "Writing one" example, exactly as written: its `myflows.py` in a fresh current
directory, then its shell lines run as they are (`tidings up`, `tidings worker --workflows
myflows`, `tidings run quick_research … --follow`) as real processes. The gateway `tidings up`
starts never loads `myflows`; only the catalog in Redis tells it about `quick_research`.
`tidings new` is checked the same way: what it writes is served and run."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.engine_helpers import until
from tests.test_api_helpers import free_port

README = Path(__file__).resolve().parent.parent / "README.md"
TIDINGS = str(Path(sys.executable).with_name("tidings"))


def _example() -> tuple[str, list[list[str]]]:
    text = README.read_text()
    [code] = re.findall(
        r"Writing one: put this in `myflows.py`:\n\n```python\n(.*?)```", text, re.S
    )
    [shell] = re.findall(
        r"run it;\nthe gateway needs nothing of it:\n\n```sh\n(.*?)```", text, re.S
    )
    lines = [shlex.split(line, comments=True) for line in shell.splitlines()]
    return code, [line for line in lines if line]


def _env(settings_env: Callable[..., dict[str, str]], port: int) -> dict[str, str]:
    """This test's Redis and namespace, the gateway on `port`; nothing on PYTHONPATH."""
    return {**settings_env(port=port, llm_token_delay_ms=1), "PYTHONPATH": ""}


async def _gateway_serves(port: int, workflow: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            listed = (await client.get(f"http://127.0.0.1:{port}/api/workflows")).json()
    except (httpx.HTTPError, ValueError):
        return False
    return any(w["name"] == workflow and w["served"] for w in listed["workflows"])


async def _run(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(errors="replace")


async def _serve_and_run(
    processes: Any, cwd: Path, env: dict[str, str], port: int, lines: list[list[str]], name: str
) -> str:
    """Start the long-running lines (`tidings up`, `tidings worker …`) in `cwd`, wait until the
    gateway's catalog says `name` is served, run the last line, return its output."""
    *services, last = lines
    procs = []
    for args in services:
        assert args[0] == "tidings", args
        procs.append(processes.start([TIDINGS, *args[1:]], env=env, cwd=cwd, name=args[1]))
    await until(lambda: _gateway_serves(port, name), what=f"{name} served", procs=procs)
    assert last[0] == "tidings", last
    code, out = await _run([TIDINGS, *last[1:]], cwd, env)
    assert code == 0, out + "".join(processes.output(p) for p in procs)
    return out


async def test_the_readme_workflow_example_runs_as_written(
    tmp_path: Path, processes: Any, settings_env: Callable[..., dict[str, str]]
) -> None:
    code, lines = _example()
    assert [line[:2] for line in lines] == [
        ["tidings", "up"],
        ["tidings", "worker"],
        ["tidings", "run"],
    ]
    (tmp_path / "myflows.py").write_text(code)
    port = free_port()
    out = await _serve_and_run(
        processes, tmp_path, _env(settings_env, port), port, lines, "quick_research"
    )
    assert "completed" in out, out


async def test_tidings_new_writes_a_workflow_that_runs(
    tmp_path: Path, processes: Any, settings_env: Callable[..., dict[str, str]]
) -> None:
    port = free_port()
    env = _env(settings_env, port)
    code, out = await _run([TIDINGS, "new", "hello"], tmp_path, env)
    assert code == 0 and (tmp_path / "hello.py").is_file(), out
    again, out = await _run([TIDINGS, "new", "hello"], tmp_path, env)
    assert again == 2 and "not overwriting" in out
    for bad in ("my-flow", "class", "../evil", "9lives", ""):
        refused, out = await _run([TIDINGS, "new", bad], tmp_path, env)
        assert refused == 2 and f"{bad!r} cannot name a module" in out, (bad, out)
    assert [n for n in os.listdir(tmp_path) if n.endswith(".py")] == ["hello.py"]
    lines = [
        ["tidings", "up", "--workers", "0"],
        ["tidings", "worker", "--workflows", "hello"],
        ["tidings", "run", "hello", "--input", '{"subject": "tides"}', "--follow"],
    ]
    out = await _serve_and_run(processes, tmp_path, env, port, lines, "hello")
    assert "completed" in out, out
