"""The dashboard and the workflow catalog: a workflow no live worker serves is marked as such in
words where a run is started, and starting it shows the gateway's warning on the new run."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Page, expect

import tests.workflows_for_tests  # noqa: F401  (registers t_steps in this process only)
from tests.test_api_helpers import Stack
from tests.test_dashboard_support import Pages, browser, open_page, pages, shot, stack, wait_for
from tidings.catalog import CatalogWriter
from tidings.redis import connect
from tidings.sdk import registry
from tidings.settings import Settings

__all__ = ["browser", "pages", "stack"]  # fixtures used by this module

pytestmark = pytest.mark.browser

WARNING = "no live worker serves t_steps version 1 now"


async def list_unserved_workflow(stack: Stack) -> None:
    """t_steps in the catalog as a worker that stopped would leave it: known, served by nobody
    (the stack's worker does not load the test workflows)."""
    cluster = stack.env.get("TIDINGS_REDIS_CLUSTER") == "true"
    client = connect(stack.env["REDIS_URL"], cluster=cluster)
    try:
        keys = Settings(namespace=stack.env["TIDINGS_NAMESPACE"], redis_cluster=cluster).keys()
        writer = CatalogWriter(client, keys, "gone-worker", [registry.workflows["t_steps"]])
        await writer.publish()
        await writer.withdraw()
    finally:
        await client.aclose()

    async def listed() -> bool:
        body = (await stack.client.get("/api/workflows")).json()
        return any(w["name"] == "t_steps" and not w["served"] for w in body["workflows"])

    await wait_for(listed)


async def pick(page: Page, name: str) -> None:
    await page.select_option("#wf-select", name)


async def test_a_workflow_nobody_serves_is_marked_and_starting_it_shows_the_warning(
    pages: Pages, stack: Stack
) -> None:
    await list_unserved_workflow(stack)
    page = await open_page(pages)

    # The picker says it in words, in the option and in a note beside the form.
    await expect(page.locator("#wf-select option[value=t_steps]")).to_have_text(
        "t_steps (no worker)"
    )
    await expect(page.locator("#wf-select option[value=research]")).to_have_text("research")
    await expect(page.locator("#wf-select")).to_have_value("research")
    await expect(page.locator("#wf-unserved")).to_be_hidden()
    await pick(page, "t_steps")
    note = page.locator("#wf-unserved")
    await expect(note).to_be_visible()
    await expect(note).to_contain_text("No worker:")
    await expect(note).to_contain_text(WARNING)
    await shot(page, "catalog-unserved-picker-desktop")
    await pick(page, "research")
    await expect(note).to_be_hidden()

    # Starting it: the run is accepted and queued, and its trace carries the warning, which is
    # also read out through the page's live region.
    await pick(page, "t_steps")
    await page.click("#start-form button[type=submit]")
    await expect(page).to_have_url(re.compile(r"#/runs/[0-9a-f-]{36}$"))
    await expect(page.locator("#t-workflow")).to_have_text("t_steps")
    await expect(page.locator("#t-status")).to_have_text("queued")
    await expect(page.locator("#t-notice")).to_be_visible()
    await expect(page.locator("#t-notice")).to_contain_text(WARNING)
    await expect(page.locator("#t-notice")).to_contain_text("Warning:")
    await expect(page.locator("#t-notice")).to_contain_text("waits in its queue")
    await expect(page.locator("#announcer")).to_contain_text(WARNING)
    await shot(page, "catalog-unserved-started-desktop")

    # A served workflow starts without it.
    await page.click("#tab-runs")
    await pick(page, "research")
    await page.click("#start-form button[type=submit]")
    await expect(page.locator("#t-workflow")).to_have_text("research")
    await expect(page.locator("#t-status")).to_have_text(re.compile("running|completed"))
    await expect(page.locator("#t-notice")).to_be_hidden()

    # On a phone the note and the warning wrap inside the page.
    phone = await open_page(pages, phone=True)
    await pick(phone, "t_steps")
    await expect(phone.locator("#wf-unserved")).to_be_visible()
    await shot(phone, "catalog-unserved-picker-phone")
    await phone.click("#start-form button[type=submit]")
    await expect(phone.locator("#t-notice")).to_contain_text(WARNING)
    await shot(phone, "catalog-unserved-started-phone")
    for p in (page, phone):
        width = await p.evaluate("document.documentElement.scrollWidth")
        assert width <= (await p.evaluate("window.innerWidth")), width
