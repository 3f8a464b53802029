"""Markup in what the dashboard shows through `setText` stays text.

Two ways in that need no worker to cooperate: the URL fragment (a deep link to a "run" whose id is
markup) and an error message of the API that echoes what it was sent (starting a workflow whose
name is markup). Each must show up literally, create no element, and run nothing: the page
fixture fails a test on any dialog, page error or console error (a blocked inline handler is
reported as one), and the element that shows the text must have no element children.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest
from playwright.async_api import Page, expect

from tests.test_api_helpers import Stack
from tests.test_dashboard_support import Pages, browser, open_page, pages, stack

__all__ = ["browser", "pages", "stack"]  # fixtures used by this module

pytestmark = pytest.mark.browser

EVIL = "<img src=x onerror=alert(1)>"


async def _shown_as_text(page: Page, selector: str, text: str) -> None:
    await expect(page.locator(selector)).to_contain_text(text)
    assert await page.locator(f"{selector} *").count() == 0
    assert await page.evaluate("document.querySelectorAll('img, script:not([src])').length") == 0


async def test_markup_in_the_url_fragment_is_shown_as_text(pages: Pages) -> None:
    pages.allowed.append("status of 404")  # the made-up run's record and stream are not found
    page = await open_page(pages, "/#/runs/" + quote(EVIL, safe=""))
    await _shown_as_text(page, "#t-id", EVIL)
    await _shown_as_text(page, "#t-progress-label", f"No run with id {EVIL}.")


async def test_markup_in_an_api_error_message_is_shown_as_text(pages: Pages, stack: Stack) -> None:
    # The API echoes an unknown workflow's name in its error: that message comes back as text.
    answer = await stack.client.post("/api/runs", json={"workflow": EVIL, "input": {}})
    assert answer.status_code == 404 and EVIL in answer.json()["error"]["message"], answer.text
    pages.allowed.append("status of 404")
    page = await open_page(pages)
    await expect(page.locator("#wf-select option[value=research]")).to_be_attached()
    await page.evaluate(
        """(name) => {
            const select = document.getElementById("wf-select");
            select.append(new Option(name, name));
            select.value = name;
        }""",
        EVIL,
    )
    await page.click("#start-form button[type=submit]")
    await _shown_as_text(page, "#start-error", f"no workflow '{EVIL}'")
