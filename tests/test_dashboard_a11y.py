"""The dashboard for everyone: 390 px screens, WCAG 2.1 AA contrast, ARIA tabs and progress bars,
a live region, keyboard access with visible focus. Screenshots of every tab with live runs, at
1280x800 and 390x844, land in .screenshots/."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.async_api import Page, expect

from tests.test_api_helpers import Stack
from tests.test_dashboard_support import Pages, browser, open_page, pages, shot, stack

__all__ = ["browser", "pages", "stack"]  # fixtures used by this module

pytestmark = pytest.mark.browser

# Every visible text node's colour against the background it is painted on (alpha-blended up
# the ancestors), with the WCAG 2.1 contrast ratio. Disabled controls are exempt (1.4.3).
CONTRAST_JS = """
(root) => {
  const parse = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const lin = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
  const lum = ([r, g, b]) => 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
  const blend = (top, under) => {
    const a = top.length > 3 ? top[3] : 1;
    return [0, 1, 2].map((i) => top[i] * a + under[i] * (1 - a));
  };
  function background(el) {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c.length > 3 && c[3] === 0) continue;
      layers.push(c);
      if (c.length === 3 || c[3] === 1) break;
    }
    let out = [255, 255, 255];
    for (const c of layers.reverse()) out = blend(c, out);
    return out;
  }
  const results = [];
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  const seen = new Set();
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!n.textContent.trim() || !el || seen.has(el)) continue;
    seen.add(el);
    const rects = el.getClientRects();
    const style = getComputedStyle(el);
    if (!rects.length || style.visibility === "hidden") continue;
    if (el.closest("[hidden], [aria-hidden=true], :disabled, .sr-only")) continue;
    const fg = blend(parse(style.color), background(el));
    const bg = background(el);
    const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
    results.push({ text: n.textContent.trim().slice(0, 40), cls: el.className,
                   ratio: (a + 0.05) / (b + 0.05), fg: style.color, bg: bg.join(",") });
  }
  return results;
}
"""


async def contrast(page: Page, where: str) -> list[dict[str, Any]]:
    pairs: list[dict[str, Any]] = await page.evaluate(
        CONTRAST_JS, await page.locator(where).element_handle()
    )
    return pairs


async def live_runs(stack: Stack) -> dict[str, str]:
    monty = await stack.start("monty", {"min_sleep_s": 2, "max_sleep_s": 4})
    research = await stack.start("research", {"topic": "tidal energy", "breadth": 3})
    chain = [
        await stack.start(
            "prompt_chain", {"tasks": [{"name": "a", "prompt": p}, {"name": "b", "prompt": "{a}!"}]}
        )
        for p in ("Say hi.", "Say hello.")
    ]
    for run in (research, *chain):
        await stack.wait_status(run["run_id"], "completed")
    return {
        "monty": monty["run_id"],
        "research": research["run_id"],
        "c1": chain[0]["run_id"],
        "c2": chain[1]["run_id"],
    }


async def test_every_tab_at_390px_and_1280px_with_live_runs_and_text_contrast(
    pages: Pages, stack: Stack
) -> None:
    runs = await live_runs(stack)
    checked: list[dict[str, Any]] = []  # text/background pairs of every view, at 1280 px
    for phone, tag in ((False, "desktop"), (True, "390")):
        page = await open_page(pages, "/#/runs", phone=phone)
        width = 390 if phone else 1280

        async def look(name: str, page: Page = page, tag: str = tag, phone: bool = phone) -> None:
            await shot(page, f"{name}-{tag}")
            if not phone:
                checked.extend(await contrast(page, "body"))

        await expect(page.locator(f"#runs-body tr[data-id='{runs['monty']}']")).to_be_visible()
        await look("runs")
        if phone:
            # Runs are cards: nothing is cut off at the right edge.
            for box in [await r.bounding_box() for r in await page.locator("#runs-body tr").all()]:
                assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width + 1
        await page.goto(f"{stack.url}/#/runs/{runs['monty']}")
        await expect(page.locator("#t-status")).to_have_text("running", timeout=15_000)
        await expect(page.locator("#t-events li").first).to_be_visible()
        await expect(page.locator("#t-stats")).to_be_visible(timeout=15_000)
        await look("trace-monty")
        # The message column of the trace is readable: most of the row's width, wrapping.
        msg = await page.locator("#t-events li .ev-msg").last.bounding_box()
        assert msg is not None and msg["width"] >= (280 if phone else 500), msg
        for sub in ("tasks", "timeline"):
            await page.click(f"#st-{sub}")
            await look(f"trace-monty-{sub}")
        await page.goto(f"{stack.url}/#/runs/{runs['research']}")
        await page.click("#st-events")
        await expect(page.locator("#t-result h4")).to_contain_text("tidal energy")
        await look("trace-research")
        await page.click("#st-tasks")
        await page.locator("#t-tasks summary", has_text="research 1.1").click()
        await page.locator("#t-tasks details[open]").scroll_into_view_if_needed()
        await look("trace-research-tasks")
        await page.goto(f"{stack.url}/#/chat")
        await page.fill("#chat-input", "list runs")
        await page.press("#chat-input", "Enter")
        await expect(page.locator(".msg.tool")).to_contain_text("list_runs", timeout=15_000)
        await look("chat")
        await page.goto(f"{stack.url}/#/compare/{runs['c1']},{runs['c2']}")
        await expect(page.locator("#cmp-out table.compare").first).to_be_visible(timeout=15_000)
        await look("compare")
        # No view makes the page itself scroll sideways.
        for view in ("runs", "trace", "chat", "compare"):
            await page.click(f"#tab-{view}")
            overflow = await page.evaluate(
                "(v) => { const el = document.getElementById('view-' + v);"
                " return [document.documentElement.scrollWidth, el.scrollWidth, el.clientWidth]; }",
                view,
            )
            assert overflow[0] <= width and overflow[1] <= overflow[2] + 1, (view, tag, overflow)

    low = [c for c in checked if c["ratio"] < 4.5]
    ratios = sorted(c["ratio"] for c in checked)
    print(
        f"\ncontrast: {len(checked)} text/background pairs, lowest {ratios[0]:.2f}:1, "
        f"median {ratios[len(ratios) // 2]:.2f}:1"
    )
    assert len(checked) > 200
    assert low == [], low[:10]


async def test_tabs_progressbars_live_region_and_keyboard_focus(pages: Pages, stack: Stack) -> None:
    run = await stack.start("monty", {"min_sleep_s": 1, "max_sleep_s": 2})
    page = await open_page(pages, "/#/runs")
    tabs = page.locator(".tabs [role=tab]")
    await expect(page.locator(".tabs")).to_have_attribute("role", "tablist")
    await expect(tabs).to_have_count(4)
    for tab in await tabs.all():
        panel = await tab.get_attribute("aria-controls")
        await expect(page.locator(f"#{panel}")).to_have_attribute("role", "tabpanel")
        await expect(page.locator(f"#{panel}")).to_have_attribute(
            "aria-labelledby", await tab.get_attribute("id") or ""
        )
    await expect(page.locator(".tabs [aria-selected=true]")).to_have_text("Runs")

    # Arrow keys, Home and End move between tabs and show their panels; focus is visible.
    await page.locator("#tab-runs").focus()
    await page.keyboard.press("ArrowRight")
    await expect(page.locator("#tab-trace")).to_be_focused()
    await expect(page.locator("#tab-trace")).to_have_attribute("aria-selected", "true")
    await expect(page.locator("#view-trace")).to_be_visible()
    await expect(page.locator("#view-runs")).to_be_hidden()
    await page.keyboard.press("End")
    await expect(page.locator("#tab-compare")).to_be_focused()
    await expect(page).to_have_url(re.compile("#/compare$"))
    await page.keyboard.press("ArrowRight")  # wraps around
    await expect(page.locator("#tab-runs")).to_be_focused()
    await expect(page.locator("#tab-runs")).to_have_attribute("tabindex", "0")
    await expect(page.locator("#tab-chat")).to_have_attribute("tabindex", "-1")

    # Every control of the Runs tab is reachable with Tab, and focus shows.
    reached: set[str] = set()
    outlines: list[str] = []
    for _ in range(60):
        await page.keyboard.press("Tab")
        info = await page.evaluate(
            "() => { const e = document.activeElement; const s = getComputedStyle(e);"
            " return [e.id || e.name || e.textContent.trim().slice(0, 20),"
            " s.outlineStyle + ' ' + s.outlineWidth, e.tagName]; }"
        )
        reached.add(info[0])
        if info[2] not in ("BODY", "HTML"):
            outlines.append(f"{info[0]} ({info[2]}): {info[1]}")
    wanted = await page.evaluate(
        "() => [...document.querySelectorAll('#view-runs button:not(:disabled), #view-runs input,"
        " #view-runs select, #view-runs a, #view-runs summary, #start-monty')]"
        ".filter((e) => e.getClientRects().length)"
        ".map((e) => e.id || e.name || e.textContent.trim().slice(0, 20))"
    )
    assert set(wanted) <= reached, set(wanted) - reached
    unseen = [o for o in outlines if ": solid" not in o or o.endswith(" 0px")]
    assert unseen == [], unseen

    # A run's trace: role=progressbar with its value and bounds, a polite live region.
    await page.goto(f"{stack.url}/#/runs/{run['run_id']}")
    bar = page.locator("#t-progress")
    await expect(bar).to_have_attribute("role", "progressbar")
    await expect(bar).to_have_attribute("aria-valuemin", "0")
    await expect(bar).to_have_attribute("aria-valuemax", "100")
    await expect(bar).to_have_attribute("aria-valuenow", re.compile(r"^\d+$"), timeout=15_000)
    await expect(page.locator("#runs-body .mini[role=progressbar]").first).to_have_attribute(
        "aria-valuenow", re.compile(r"^\d+$")
    )
    await expect(page.locator("#announcer")).to_have_attribute("aria-live", "polite")
    await expect(page.locator("#status-bar")).to_have_attribute("role", "status")
    await page.click("[data-signal=cancel]")
    await expect(page.locator("#announcer")).to_contain_text("is cancelled", timeout=15_000)
    # The trace's own panels are ARIA tabs too.
    await page.locator("#st-events").focus()
    await page.keyboard.press("ArrowRight")
    await expect(page.locator("#st-tasks")).to_have_attribute("aria-selected", "true")
    await expect(page.locator("#sp-tasks")).to_be_visible()


async def test_a_tab_switch_never_pulls_focus_back_when_the_keyboard_moved_on(
    pages: Pages, stack: Stack
) -> None:
    """The route of a tab selection runs on `hashchange`, after the key press: a Tab pressed in
    between must keep its focus (the view used to take it, with no outline shown)."""
    page = await open_page(pages, "/#/runs")
    await page.locator("#tab-runs").focus()
    focused = await page.evaluate(
        """() => new Promise((done) => {
            window.addEventListener("hashchange", () => setTimeout(() => done(
                document.activeElement.id || document.activeElement.tagName)), { once: true });
            document.activeElement.dispatchEvent(
                new KeyboardEvent("keydown", { key: "ArrowRight", bubbles: true }));
            document.activeElement.blur();  // the keyboard moves on before hashchange fires
        })"""
    )
    await expect(page.locator("#view-trace")).to_be_visible()
    assert focused == "BODY"
