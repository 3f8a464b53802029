"""The dashboard in headless Chromium against a real gateway and worker.

The views in depth (Start Monty, stop, reports, chat, Compare, markup shown as text, 390 px,
contrast, ARIA, 10,000 events) are in test_dashboard_views.py, test_dashboard_a11y.py and
test_dashboard_scale.py; this module keeps the basic path and the security headers.

Needs Debian's chromium at /usr/bin/chromium; without it the tests skip, except under CI
(`CI=true`), where a missing browser is a failure.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, expect

from tests.test_api_helpers import Stack

# Importing the support module skips this one where there is no Chromium (and fails under CI).
from tests.test_dashboard_support import browser, stack

__all__ = ["browser", "stack"]  # fixtures used by this module

pytestmark = pytest.mark.browser


@pytest.fixture
async def page(browser: Browser, stack: Stack) -> AsyncIterator[Page]:
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    await page.goto(stack.url + "/")
    yield page
    assert errors == [], errors


async def start_monty(page: Page, **fields: str) -> None:
    await page.select_option("#wf-select", "monty")
    for name, value in fields.items():
        await page.fill(f"#wf-fields [name={name}]", value)
    await page.click("#start-form button[type=submit]")


async def test_start_a_run_from_its_schema_and_trace_it_to_the_end(
    page: Page, stack: Stack
) -> None:
    await expect(page.locator("#wf-select option")).to_have_count(4)
    await start_monty(page, min_sleep_s="0.1", max_sleep_s="0.2", max_iterations="2")

    # Only the Trace view shows; it follows the run to its end.
    await expect(page.locator("#view-trace")).to_be_visible()
    await expect(page.locator("#view-runs")).to_be_hidden()
    await expect(page.locator("#t-status")).to_have_text("completed", timeout=20_000)
    await expect(page.locator("#t-pct")).to_have_text("100%")
    await expect(page.locator("#t-events li .type", has_text="iteration_completed")).to_have_count(
        2
    )
    await expect(page.locator("#t-stats")).to_contain_text("Iterations: 2 | Quotes Delivered: 2")

    # The Runs tab lists it, live, as completed.
    await page.click(".tab[data-tab=runs]")
    row = page.locator("#runs-body tr", has_text="monty")
    await expect(row).to_contain_text("completed")


async def test_dashboard_is_served_with_a_strict_csp(stack: Stack) -> None:
    resp = await stack.client.get("/")
    assert resp.status_code == 200
    csp = resp.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp
    assert resp.headers["x-content-type-options"] == "nosniff"
