"""Which workflow modules a worker loads, and the errors when it cannot: real `tidings worker`
processes (they stop before serving), and a real installed entry point (a dist-info directory on
the path, as pip writes it)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

TIDINGS = str(Path(sys.executable).with_name("tidings"))


async def _run(args: list[str], cwd: Path, **env: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        env={**os.environ, "TIDINGS_TEST_WORKFLOWS": "", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_a_module_that_cannot_be_imported_stops_the_worker_in_one_line(
    tmp_path: Path,
) -> None:
    (tmp_path / "broken.py").write_text("def oops(:\n")
    env = {"REDIS_URL": "redis://127.0.0.1:1", "TIDINGS_LOG_LEVEL": "warning"}
    for module, says in [
        ("no_such_flows", "ModuleNotFoundError"),
        ("broken", "SyntaxError"),
    ]:
        code, _, err = await _run([TIDINGS, "worker", "--workflows", module], tmp_path, **env)
        assert code == 2, err
        assert f"cannot import workflow module {module!r}: {says}" in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


async def test_a_module_that_registers_nothing_is_reported(tmp_path: Path) -> None:
    (tmp_path / "empty_flows.py").write_text("X = 1\n")
    env = {"REDIS_URL": "redis://127.0.0.1:1", "TIDINGS_LOG_LEVEL": "warning"}
    code, _, err = await _run([TIDINGS, "worker", "--workflows", "empty_flows"], tmp_path, **env)
    assert code == 2
    assert "workflow module 'empty_flows' registers no workflow or activity" in err
    assert "no workflow registered by empty_flows" in err.splitlines()[-1]


_CHILD = """
import json
from tidings.sdk import registry
from tidings.services.worker.loading import load_workflows, module_list
from tidings.settings import Settings
settings = Settings.from_env()
loaded = load_workflows(settings)
print(json.dumps({"modules": loaded, "workflows": sorted(registry.workflows)}))
"""


async def test_installed_entry_points_and_the_setting_are_loaded(tmp_path: Path) -> None:
    site = tmp_path / "site"
    dist = site / "acme_flows-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-flows\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[tidings.workflows]\nacme = acme_flows\n")
    (site / "acme_flows.py").write_text(
        "from pydantic import BaseModel\nfrom tidings import workflow\n\n"
        "class In(BaseModel):\n    x: int = 1\n\n"
        "@workflow('acme', Input=In)\nasync def acme(run, input):\n    return input.x\n"
    )
    (tmp_path / "mine.py").write_text(
        (site / "acme_flows.py").read_text().replace("'acme'", "'mine'").replace("acme(", "m(")
    )
    code, out, err = await _run(
        [sys.executable, "-c", _CHILD], tmp_path, PYTHONPATH=str(site), TIDINGS_WORKFLOWS="mine"
    )
    assert code == 0, err
    assert json.loads(out) == {"modules": ["mine", "acme_flows"], "workflows": ["acme", "mine"]}
