"""The CLI's tables print what they are given, as text."""

from __future__ import annotations

import io

from tidings.services.cli.tables import make_console, print_env, print_runs


def _printed(runs: list[dict[str, object]]) -> str:
    out = io.StringIO()
    print_runs(runs, make_console(out))
    return out.getvalue()


def test_a_queued_run_and_markup_in_a_message_print_as_text() -> None:
    text = _printed(
        [
            {"run_id": "r1", "workflow": "research", "status": "queued", "progress": 0},
            {"run_id": "r2", "workflow": "chat", "status": "failed", "error": "[bold]x[/] [/]"},
            {"run_id": "r3", "workflow": "[red]w", "status": "[weird]", "message": "a [b"},
        ]
    )
    assert "queued" in text and "[bold]x[/] [/]" in text
    assert "[red]w" in text and "[weird]" in text and "a [b" in text


def test_settings_with_brackets_print_as_text() -> None:
    out = io.StringIO()
    print_env([("TIDINGS_X", "[/]", "a [b]meaning[/b]")], make_console(out))
    assert "[/]" in out.getvalue() and "a [b]meaning[/b]" in out.getvalue()
