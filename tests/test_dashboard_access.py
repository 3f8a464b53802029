"""The dashboard with authentication on: the sign-in view, admin and viewer sessions, signing
out, share links and the shared read-only view; and open mode, which shows no sign-in at all.

A real gateway and worker run with TIDINGS_AUTH_TOKENS; Chromium drives the dashboard as a user
would. Needs Debian's chromium at /usr/bin/chromium; without it the tests skip, except under CI
(`CI=true`), where a missing browser is a failure.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.async_api import Browser, Page, Request, expect

from tests.test_api_helpers import Stack, running_stack
from tests.test_dashboard_a11y import contrast
from tests.test_dashboard_support import (
    Pages,
    browser,
    open_page,
    pages,
    shot,
    stack,
    wait_for,
    watched_pages,
)
from tidings.services.gateway.access import Access
from tidings.settings import Settings

__all__ = ["browser", "pages", "stack"]  # fixtures used by this module

pytestmark = pytest.mark.browser

ADMIN = "dash-admin-0123456789abcdef"
VIEWER = "dash-viewer-0123456789abcdef"
TOKENS = f"admin:{ADMIN},viewer:{VIEWER}"
SECRET = "dash-signing-secret-0123456789"
READ_ONLY = "Read-only: signed in as a viewer"
# What Chromium logs for the refusals these tests provoke on purpose.
REFUSALS = ["status of 401", "status of 403"]
SLOW_MONTY = {"min_sleep_s": 0.3, "max_sleep_s": 0.6}
# live.js driven directly: what a follower of `run` hears, in `window.states`.
FOLLOW = """(run) => import("/js/live.js").then((live) => {
  const states = (window.states ??= []);
  live.followRun(run, { onEvent: () => states.push("event"), onState: (s) => states.push(s) });
})"""


@pytest.fixture
async def secured(
    processes: Any, settings_env: Callable[..., dict[str, str]]
) -> AsyncIterator[Stack]:
    """A stack with authentication on; its client is an admin."""
    async with running_stack(processes, settings_env, auth_tokens=TOKENS, secret=SECRET) as s:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with httpx.AsyncClient(base_url=s.url, timeout=30, headers=headers) as client:
            yield dataclasses.replace(s, client=client)


@pytest.fixture
async def access_pages(browser: Browser, secured: Stack) -> AsyncIterator[Pages]:
    async with watched_pages(browser, secured) as opened:
        opened.allowed.extend(REFUSALS)
        yield opened


class Requests:
    """Every API request the pages of a context make, by URL. A SharedWorker's requests are not
    seen: a test that must see a stream's request keeps the hub in its page."""

    def __init__(self, page: Page) -> None:
        self.urls: list[str] = []
        page.context.on("request", self._seen)

    def _seen(self, request: Request) -> None:
        path = urlsplit(request.url).path
        if path.startswith("/api/") or path.startswith("/workflow/"):
            self.urls.append(request.url)

    def to(self, path: str) -> list[str]:
        return [u for u in self.urls if urlsplit(u).path.startswith(path)]


async def sign_in(page: Page, token: str) -> None:
    await expect(page.locator("#signin")).to_be_visible()
    await page.fill("#signin-token", token)
    await page.press("#signin-token", "Enter")
    await expect(page.locator(".app")).to_be_visible(timeout=15_000)
    await page.wait_for_selector("#app-ready", state="attached")


async def test_a_wrong_token_is_refused_and_a_viewer_reads_with_controls_disabled(
    access_pages: Pages, secured: Stack
) -> None:
    run = await secured.start("monty", SLOW_MONTY)
    page = await access_pages.open("/")

    # Not signed in: the sign-in view instead of the app, its field focused.
    await expect(page.locator("#signin")).to_be_visible()
    await expect(page.locator(".app")).to_be_hidden()
    await expect(page.get_by_label("Access token")).to_be_focused()
    await expect(page.get_by_label("Access token")).to_have_attribute("type", "password")
    await expect(page.locator("#signin-note")).to_be_hidden()  # nothing ended: nothing to say

    await page.fill("#signin-token", "not-the-token-at-all")
    await page.press("#signin-token", "Enter")
    await expect(page.locator("#signin-error")).to_contain_text("not accepted")
    await expect(page.locator("#signin-token")).to_have_attribute("aria-invalid", "true")
    await expect(page.locator(".app")).to_be_hidden()

    await sign_in(page, VIEWER)
    await expect(page.locator("#status-role")).to_have_text("Signed in: viewer (read-only)")
    await expect(page.locator("#sign-out")).to_be_visible()
    row = page.locator(f"#runs-body tr[data-id='{run['run_id']}']")
    await expect(row).to_be_visible()

    # Every control is disabled and says why; reading goes on.
    start = page.locator("#start-form button[type=submit]")
    for control in (page.locator("#start-monty"), start):
        await expect(control).to_be_disabled()
        await expect(control).to_have_attribute("title", READ_ONLY)
    await expect(page.locator("#start-readonly")).to_be_visible()
    await row.locator(".run-link").click()
    await expect(page.locator("#t-status")).to_have_text("running", timeout=15_000)
    await expect(page.locator("#t-events li").first).to_be_visible()
    for name in ("pause", "resume", "stop", "cancel"):
        await expect(page.locator(f"[data-signal={name}]")).to_be_disabled()
        await expect(page.locator(f"[data-signal={name}]")).to_have_attribute("title", READ_ONLY)
    await expect(page.locator("#t-share")).to_be_enabled()
    await page.click("#tab-chat")
    for control in ("#chat-input", "#chat-form button[type=submit]", "#chat-reset"):
        await expect(page.locator(control)).to_be_disabled()

    # Were a control reached anyway, the gateway's 403 is shown as its message says.
    await page.click("#tab-runs")
    await page.evaluate("document.getElementById('start-form').requestSubmit()")
    await expect(page.locator("#start-error")).to_contain_text("may read but not control")
    await expect(start).to_be_disabled()


async def test_an_admin_starts_a_run_and_follows_it_live_on_the_cookie_alone(
    access_pages: Pages, secured: Stack
) -> None:
    page = await access_pages.open("/")
    seen = Requests(page)
    await sign_in(page, ADMIN)
    await expect(page.locator("#status-role")).to_have_text("Signed in: admin")
    await expect(page.locator("#start-monty")).to_be_enabled()
    await page.select_option("#wf-select", "monty")
    for name, value in (("min_sleep_s", "0.2"), ("max_sleep_s", "0.4"), ("max_iterations", "3")):
        await page.fill(f"#wf-fields [name={name}]", value)
    await page.click("#start-form button[type=submit]")
    await expect(page).to_have_url(re.compile(r"#/runs/[0-9a-f-]{36}$"))
    run_id = page.url.rsplit("/", 1)[1]
    await expect(page.locator("#t-status")).to_have_text("completed", timeout=20_000)
    done = page.locator("#t-events li .type", has_text="iteration_completed")
    await expect(done).to_have_count(3)

    # A tab whose hub runs in the page (no SharedWorker), so its stream request shows here too.
    other = await page.context.new_page()
    await other.add_init_script("delete window.SharedWorker")
    await other.goto(f"{secured.url}/#/runs/{run_id}")
    await expect(other.locator("#t-events li .type", has_text="iteration_completed")).to_have_count(
        3, timeout=15_000
    )
    streams = seen.to("/api/streams")
    assert streams and all(run_id in parse_qs(urlsplit(u).query)["run"][0] for u in streams)
    assert seen.urls and not [u for u in seen.urls if "token" in u], seen.urls
    cookies = await page.context.cookies()
    assert [c["name"] for c in cookies] == ["tidings_session"]
    assert cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Strict"
    assert await page.evaluate("document.cookie") == ""
    stored = await page.evaluate("JSON.stringify([{...localStorage}, {...sessionStorage}])")
    assert ADMIN not in stored


async def test_sign_out_and_an_ended_session_bring_the_sign_in_view_back(
    access_pages: Pages, secured: Stack
) -> None:
    run = await secured.start("monty", SLOW_MONTY)
    page = await access_pages.open("/")
    await sign_in(page, ADMIN)
    await page.click("#sign-out")
    await expect(page.locator("#signin")).to_be_visible(timeout=15_000)
    await expect(page.locator("#signin-note")).to_have_text("You have signed out.")
    await expect(page.locator(".app")).to_be_hidden()
    assert await page.context.cookies() == []

    # Signed in again, the session goes (as when it expires): the next request brings the
    # sign-in view back, saying why, and the page stays there.
    await sign_in(page, VIEWER)
    await expect(page.locator(f"#runs-body tr[data-id='{run['run_id']}']")).to_be_visible()
    seen = Requests(page)
    await page.context.clear_cookies()
    await expect(page.locator("#signin")).to_be_visible(timeout=15_000)
    await expect(page.locator("#signin-note")).to_contain_text("session has ended")
    await expect(page.get_by_label("Access token")).to_be_focused()
    assert "/api/session" in {urlsplit(u).path for u in seen.urls}


async def test_a_refused_stream_says_so_once_and_follows_again_after_sign_in(
    browser: Browser, secured: Stack
) -> None:
    """live.js on its own: a stream answered 401 is not retried every few seconds; the next
    follower, once the browser has signed in, gets the stream."""
    run = await secured.start("monty", SLOW_MONTY)
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.add_init_script("delete window.SharedWorker")  # the hub in this page: visible
        seen = Requests(page)
        await page.goto(f"{secured.url}/js/live.js")  # the origin, without the app
        await page.evaluate(FOLLOW, run["run_id"])
        states = lambda: page.evaluate("window.states")  # noqa: E731
        await wait_for(lambda: _has(states, "unauthorized"))
        await page.wait_for_timeout(1500)  # longer than the first backoffs: nothing more comes
        assert len(seen.to("/api/streams")) == 1, seen.urls
        assert (await states())[-1] == "unauthorized"

        resp = await page.request.post(
            f"{secured.url}/api/session", data={"token": VIEWER}, headers={"Origin": secured.url}
        )
        assert resp.status == 200
        await page.evaluate(FOLLOW, run["run_id"])
        await wait_for(lambda: _has(states, "event"))
        assert "open" in await states()
    finally:
        await context.close()


async def _has(states: Callable[[], Any], value: str) -> bool:
    return value in (await states() or [])


async def share_link(page: Page, secured: Stack, run_id: str) -> str:
    await page.goto(f"{secured.url}/#/runs/{run_id}")
    await expect(page.locator("#t-status")).to_have_text("running", timeout=15_000)
    await page.click("#t-share")
    dialog = page.locator("#share-dialog")
    await expect(dialog).to_be_visible()
    link = page.locator("#share-link")
    pattern = rf"^{re.escape(secured.url)}/#/shared/r1\.{run_id}\.\d+\.[\w-]+$"
    await expect(link).to_have_value(re.compile(pattern))
    await expect(link).to_have_attribute("readonly", "")
    await expect(page.locator("#share-expiry")).to_contain_text(
        re.compile(r"^Expires .+ \(in 2[34] h")
    )
    return await link.input_value()


async def test_a_share_link_shows_one_run_live_and_read_only_without_a_session(
    access_pages: Pages, secured: Stack
) -> None:
    run = await secured.start("monty", SLOW_MONTY)
    other = await secured.start("monty", SLOW_MONTY)  # must never be asked for
    page = await access_pages.open("/")
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=secured.url)
    await sign_in(page, VIEWER)  # a viewer may share too
    link = await share_link(page, secured, run["run_id"])
    await page.click("#share-copy")
    await expect(page.locator("#share-status")).to_have_text("Copied to the clipboard.")
    assert await page.evaluate("navigator.clipboard.readText()") == link
    await page.keyboard.press("Escape")
    await expect(page.locator("#share-dialog")).to_be_hidden()
    await expect(page.locator("#t-share")).to_be_focused()

    # A browser with no session opens the link.
    token = link.split("#/shared/", 1)[1]
    requests: list[Requests] = []

    async def record(p: Page) -> None:
        requests.append(Requests(p))

    shared = await access_pages.open(link.removeprefix(secured.url), before=record)
    seen = requests[0]
    banner = shared.locator("#shared-banner")
    await expect(banner).to_contain_text(re.compile(r"^Shared read-only view, expires .+"))
    await expect(shared.locator("#t-id")).to_have_text(run["run_id"])
    await expect(shared.locator("#t-status")).to_have_text("running", timeout=15_000)
    for hidden in (".tabs", "#start-monty", "#trace .controls", "#t-share", "#status-who"):
        await expect(shared.locator(hidden)).to_be_hidden()
    assert await shared.evaluate("import('/js/live.js').then((l) => l.transportMode())") == "tab"

    # Live: events keep coming, and the end of the run shows.
    count = shared.locator("#t-events li")
    await expect(count.first).to_be_visible()
    before = await shared.locator("#t-count").text_content()
    await expect(shared.locator("#t-count")).not_to_have_text(before or "", timeout=15_000)
    resp = await secured.client.post(f"/api/runs/{run['run_id']}/signals/stop")
    assert resp.status_code == 202
    await expect(shared.locator("#t-status")).to_have_text("completed", timeout=20_000)
    await expect(shared.locator("#status-conn")).to_have_text("Run ended: the view is complete.")

    # Every request named the token, and only the shared run; nothing was kept.
    assert seen.urls
    for url in seen.urls:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        assert query.get("token") == [token], url
        assert other["run_id"] not in url, url
        if parts.path == "/api/streams":
            assert [r.split("/")[0] for r in query["run"]] == [run["run_id"]], url
            assert "feed" not in query, url
        else:
            assert parts.path.startswith(f"/api/runs/{run['run_id']}"), url
    assert seen.to(f"/api/runs/{run['run_id']}/events") or seen.to("/api/streams")
    stored = await shared.evaluate("JSON.stringify([{...localStorage}, {...sessionStorage}])")
    assert token not in stored and run["run_id"] not in stored


async def test_an_expired_or_broken_share_link_says_so(access_pages: Pages, secured: Stack) -> None:
    run = await secured.start("monty", SLOW_MONTY)
    access = Access(Settings(auth_tokens=TOKENS, secret=SECRET))
    expired, _ = access.share_token(run["run_id"], ttl_s=-60)
    good, _ = access.share_token(run["run_id"])
    broken = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    problem = "#shared-problem-text"

    requests: list[Requests] = []

    async def record(p: Page) -> None:
        requests.append(Requests(p))

    page = await access_pages.open(f"/#/shared/{expired}", before=record)
    await expect(page.locator(problem)).to_contain_text("This share link expired at")
    await expect(page.locator("#shared-banner")).to_contain_text("does not work")
    await expect(page.locator("#trace")).to_be_hidden()
    assert requests[0].urls == []  # said without asking
    await shot(page, "access-shared-expired-desktop")

    page = await access_pages.open(f"/#/shared/{broken}")
    await expect(page.locator(problem)).to_contain_text("no longer accepted")
    await expect(page.locator(problem)).to_contain_text("invalid share token")
    await expect(page.locator("#trace")).to_be_hidden()

    page = await access_pages.open("/#/shared/not-a-token")
    await expect(page.locator(problem)).to_contain_text("This share link is not valid")


async def test_open_mode_shows_no_sign_in_and_no_share(pages: Pages, stack: Stack) -> None:
    run = await stack.start("monty", SLOW_MONTY)
    page = await open_page(pages, f"/#/runs/{run['run_id']}")
    await expect(page.locator("#t-status")).to_have_text("running", timeout=15_000)
    await expect(page.locator("#signin")).to_be_hidden()
    await expect(page.locator(".app")).to_be_visible()
    for absent in ("#status-who", "#t-share", "#shared-banner"):
        await expect(page.locator(absent)).to_be_hidden()
    for name in ("pause", "stop", "cancel"):
        await expect(page.locator(f"[data-signal={name}]")).to_be_enabled()
        assert await page.get_attribute(f"[data-signal={name}]", "title") is None


async def test_sign_in_status_bar_share_dialog_and_shared_view_at_1280_and_390_px(
    access_pages: Pages, secured: Stack
) -> None:
    """Screenshots of each (in .screenshots/), with text contrast and nothing running off the
    right edge."""
    run = await secured.start("monty", SLOW_MONTY)
    checked: list[dict[str, Any]] = []
    for phone, tag in ((False, "desktop"), (True, "390")):
        width = 390 if phone else 1280

        async def look(
            page: Page, name: str, where: str, tag: str = tag, width: int = width
        ) -> None:
            await shot(page, f"access-{name}-{tag}")
            checked.extend(await contrast(page, where))
            scroll = await page.evaluate("document.documentElement.scrollWidth")
            assert scroll <= width, (name, tag, scroll)

        page = await open_page(access_pages, "/", phone=phone)
        await page.fill("#signin-token", "wrong-token-for-the-picture")
        await page.press("#signin-token", "Enter")
        await expect(page.locator("#signin-error")).to_contain_text("not accepted")
        await look(page, "signin", "#signin")
        await sign_in(page, VIEWER)
        await page.goto(f"{secured.url}/#/runs/{run['run_id']}")
        await expect(page.locator("#t-status")).to_have_text("running", timeout=15_000)
        await expect(page.locator("#status-role")).to_be_visible()
        await look(page, "viewer", "body")
        box = await page.locator("#sign-out").bounding_box()
        assert box is not None and box["x"] + box["width"] <= width, box
        link = await share_link(page, secured, run["run_id"])
        await look(page, "share-dialog", "#share-dialog")
        for el in ("#share-link", "#share-copy"):
            box = await page.locator(el).bounding_box()
            assert box is not None and box["x"] + box["width"] <= width, (el, box)

        shared = await open_page(access_pages, link.removeprefix(secured.url), phone=phone)
        await expect(shared.locator("#t-status")).to_have_text("running", timeout=15_000)
        await expect(shared.locator("#t-events li").first).to_be_visible()
        await look(shared, "shared", "body")

    low = [c for c in checked if c["ratio"] < 4.5]
    assert len(checked) > 50
    assert low == [], low[:10]
