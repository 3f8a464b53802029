"""The README documents what the code has: every setting, CLI command and route."""

from __future__ import annotations

import re
from pathlib import Path

from tidings.services.gateway.app import create_app
from tidings.settings import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table() -> None:
    for variable, default, _ in Settings.env_help():
        row = re.search(rf"^\| `{variable}` \| (.*?) \|", README, re.M)
        assert row, f"{variable} missing from README"
        assert (row.group(1) == "" and default == "") or row.group(1) == f"`{default}`", variable


def test_every_route_is_documented() -> None:
    app = create_app(Settings(redis_url="redis://127.0.0.1:1"))
    documented = re.sub(r"\{\w+\}", "{id}", README)
    paths = [getattr(route, "path", "") for route in app.routes]
    assert len(paths) > 20
    for path in filter(None, paths):
        # `/workflow/{id}/status|query|history` are documented as one row.
        shown = re.sub(r"\{\w+\}", "{id}", path).rstrip("/").removesuffix("/query")
        shown = shown.removesuffix("/history")
        assert shown in documented, f"route {path} missing from README"
