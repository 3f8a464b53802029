"""Fixtures and helpers for the dashboard's browser tests (no tests of its own).

The dashboard runs in headless Chromium (Debian's /usr/bin/chromium) against a real gateway and
worker. A page fails its test if it logs an error, throws, or opens a dialog (an XSS payload that
ran would call alert()). Screenshots go to `.screenshots/` at the repository root (git-ignored).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.test_api_helpers import Stack, running_stack

__all__ = [
    "SHOTS",
    "Pages",
    "browser",
    "open_page",
    "pages",
    "shot",
    "stack",
    "wait_for",
    "watched_pages",
]

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SHOTS = Path(__file__).resolve().parent.parent / ".screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

if not CHROMIUM.exists():
    if os.environ.get("CI") == "true":
        raise RuntimeError(
            "CI needs /usr/bin/chromium for the browser tests (apt-get install chromium)"
        )
    pytest.skip("no /usr/bin/chromium on this machine", allow_module_level=True)

from playwright.async_api import Browser, Page, async_playwright  # noqa: E402


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def stack(
    processes: Any, settings_env: Callable[..., dict[str, str]]
) -> AsyncIterator[Stack]:
    async with running_stack(processes, settings_env) as s:
        yield s


class Pages:
    """Opens pages (each in its own browser context, so each its own SharedWorker) and records
    what must never happen on any of them: page errors, console errors, dialogs."""

    def __init__(self, browser: Browser, stack: Stack) -> None:
        self.browser = browser
        self.stack = stack
        self.problems: list[str] = []
        self.dialogs: list[str] = []
        self.allowed: list[str] = []  # console errors a test provokes on purpose
        self._contexts: list[Any] = []

    async def open(
        self,
        route: str = "/",
        viewport: dict[str, int] | None = None,
        before: Callable[[Page], Awaitable[None]] | None = None,
    ) -> Page:
        """A page in a new context at `route`, booted; `before` sees it before it loads."""
        context = await self.browser.new_context(viewport=viewport or DESKTOP)
        self._contexts.append(context)
        page = await context.new_page()
        page.on("pageerror", lambda exc: self.problems.append(f"pageerror: {exc}"))
        page.on(
            "console",
            lambda msg: (
                self.problems.append(f"console: {msg.text}") if msg.type == "error" else None
            ),
        )

        async def on_dialog(dialog: Any) -> None:
            self.dialogs.append(f"{dialog.type}: {dialog.message}")
            await dialog.dismiss()

        page.on("dialog", on_dialog)
        if before is not None:
            await before(page)
        await page.goto(self.stack.url + route)
        await page.wait_for_selector("#app-ready", state="attached")
        return page

    async def close(self) -> None:
        for context in self._contexts:
            await context.close()


@asynccontextmanager
async def watched_pages(browser: Browser, stack: Stack) -> AsyncIterator[Pages]:
    """Pages on `stack`, checked when the block ends: no dialog, no error but those allowed."""
    opened = Pages(browser, stack)
    yield opened
    await opened.close()
    assert opened.dialogs == [], opened.dialogs
    problems = [p for p in opened.problems if not any(a in p for a in opened.allowed)]
    assert problems == [], problems


@pytest.fixture
async def pages(browser: Browser, stack: Stack) -> AsyncIterator[Pages]:
    async with watched_pages(browser, stack) as opened:
        yield opened


async def open_page(pages: Pages, route: str = "/", phone: bool = False) -> Page:
    return await pages.open(route, PHONE if phone else DESKTOP)


async def shot(page: Page, name: str) -> Path:
    SHOTS.mkdir(exist_ok=True)
    path = SHOTS / f"{name}.png"
    await page.wait_for_timeout(150)  # let the last frame paint
    await page.screenshot(path=str(path))
    return path


async def wait_for(
    check: Callable[[], Awaitable[Any]], timeout: float = 20, interval: float = 0.1
) -> Any:
    """Poll `check` until it returns something truthy; its last value otherwise fails."""
    import asyncio

    async with asyncio.timeout(timeout):
        while True:
            value = await check()
            if value:
                return value
            await asyncio.sleep(interval)
