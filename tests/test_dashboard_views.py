"""The dashboard's views, driven as a user drives them: Start Monty, a research report, the task
editor, the chat, Compare, the Runs list's filters and paging, controls, deep links, markup."""

from __future__ import annotations

import asyncio
import re

import pytest
from playwright.async_api import Page, expect
from redis.asyncio import Redis

from tests.test_api_helpers import Stack
from tests.test_dashboard_support import Pages, browser, open_page, pages, shot, stack, wait_for
from tidings.bus import Bus
from tidings.events import EventType
from tidings.keys import Keys

__all__ = ["browser", "pages", "stack"]  # fixtures used by this module

pytestmark = pytest.mark.browser

EVIL = "<img src=x onerror=alert(1)>"


async def run_id_from_url(page: Page) -> str:
    await expect(page).to_have_url(re.compile(r"#/runs/[0-9a-f-]{36}$"))
    return page.url.rsplit("/", 1)[1]


async def progress_now(page: Page, bar: str = "#t-progress") -> float | None:
    value = await page.get_attribute(bar, "aria-valuenow")
    return None if value is None else float(value)


async def test_start_monty_with_one_click_the_bar_moves_stop_shows_totals(
    pages: Pages, stack: Stack
) -> None:
    page = await open_page(pages)
    await page.click("#start-monty")  # one click: seed 003's defaults (5-30 s per iteration)
    run_id = await run_id_from_url(page)
    await expect(page.locator("#t-status")).to_have_text("running", timeout=15_000)
    await expect(page.locator("#t-workflow")).to_have_text("monty")
    # This tab is a viewer as soon as it is live, not at the record's next refresh (every 5 s).
    await expect(page.locator("#t-live")).to_have_text("live")
    await expect(page.locator("#t-viewers")).to_have_text("1", timeout=3_000)

    # An endless run: the bar is the current iteration's progress, and it moves.
    await expect(page.locator("#t-progress-label")).to_contain_text("Iteration 1", timeout=10_000)
    first = await wait_for(lambda: progress_now(page))
    await wait_for(lambda: _moved_past(page, first), timeout=10)
    await expect(page.locator("#t-stats")).to_contain_text("Iterations: 1 | Quotes Delivered: 0")
    await expect(page.locator("#t-task")).to_contain_text("Iteration 1: Progress")
    await expect(page.locator("[data-signal=pause]")).to_be_enabled()
    await expect(page.locator("[data-signal=resume]")).to_be_disabled()
    await shot(page, "monty-running-desktop")

    # The Runs list shows the iteration and its progress, not a bar stuck at 0 %.
    await page.click("#tab-runs")
    row = page.locator(f"#runs-body tr[data-id='{run_id}']")
    await expect(row.locator(".mini-text")).to_contain_text(
        re.compile(r"iteration 1 · [1-9]\d*%"), timeout=10_000
    )
    # Chat shows seed 003's status bar and the running indicator for any running Monty.
    await page.click("#tab-chat")
    await expect(page.locator("#status-monty")).to_contain_text("Monty workflow is running")
    await expect(page.locator(".running-indicator")).to_be_visible()

    await page.click("#status-monty")  # the status bar leads to the trace
    await expect(page.locator("#view-trace")).to_be_visible()
    await page.click("[data-signal=stop]")
    await expect(page.locator("#t-status")).to_have_text("completed", timeout=20_000)
    await expect(page.locator("#t-result-title")).to_have_text("Totals")
    await expect(page.locator("#t-result .stat", has_text="iterations")).to_contain_text("1")
    await expect(page.locator("#t-result .stat", has_text="quotes delivered")).to_contain_text("1")
    await expect(page.locator("#t-stats")).to_contain_text("Quotes Delivered: 1")
    await expect(page.locator("#t-pct")).to_have_text("100%")
    await expect(page.locator("#t-task")).to_have_text("none (run ended)")
    for name in ("pause", "resume", "stop", "cancel"):
        await expect(page.locator(f"[data-signal={name}]")).to_be_disabled()
    await expect(page.locator(".running-indicator")).to_be_hidden()
    await shot(page, "monty-stopped-desktop")


async def _moved_past(page: Page, first: float) -> bool:
    now = await progress_now(page)
    return now is not None and now != first


async def test_research_report_tasks_timeline_and_deep_links(pages: Pages, stack: Stack) -> None:
    page = await open_page(pages)
    await page.select_option("#wf-select", "research")
    await expect(page.locator("#wf-fields [name=topic]")).to_have_value("AI in healthcare")
    await page.fill("#wf-fields [name=breadth]", "2")
    await page.click("#start-form button[type=submit]")
    run_id = await run_id_from_url(page)
    await expect(page.locator("#t-status")).to_have_text("completed", timeout=30_000)

    # The report, rendered as a report.
    await expect(page.locator("#t-result-title")).to_have_text("Research report")
    await expect(page.locator("#t-result h4")).to_have_text("Report: AI in healthcare")
    await expect(page.locator("#t-result .findings > li")).to_have_count(2)
    await expect(page.locator("#t-result .report-summary")).not_to_be_empty()

    # Tokens are gathered per task: a handful of log rows stand for every token event.
    events = (
        await stack.client.get(
            f"/api/runs/{run_id}/events?limit=1000", headers={"Accept": "application/json"}
        )
    ).json()["events"]
    tokens = [e for e in events if e["type"] == "token"]
    await page.select_option("#log-kind", "tokens")
    rows = page.locator("#t-events li")
    await expect(rows.first).to_be_visible()
    # One row per task execution that streamed (plan, 2 questions, synthesize; more only if a
    # busy machine made a lease lapse and a task or the run ran again), never one per token.
    executions = sum(1 for e in events if e["type"] in ("task_started", "workflow_started"))
    assert executions < len(tokens)
    # The list redraws after the filter changes: wait (bounded) for the filtered rows.
    deadline = asyncio.get_running_loop().time() + 10
    while not 1 <= (shown := await rows.count()) <= executions:
        assert asyncio.get_running_loop().time() < deadline, f"{shown} rows for {executions}"
        await asyncio.sleep(0.05)
    await page.select_option("#log-kind", "")

    # The Tasks panel: one row per step and task, with worker, tries, duration, streamed text.
    await page.click("#st-tasks")
    await expect(page.locator("#sp-tasks")).to_be_visible()
    names = page.locator("#t-tasks .t-name")
    for name in ("plan", "research 1.1", "research 1.2", "synthesize"):
        await expect(names.filter(has_text=re.compile(f"^{name}$"))).to_have_count(1)
    task = page.locator(
        "#t-tasks details.task", has=page.locator(".t-name", has_text="research 1.1")
    )
    await expect(task.locator(".t-state")).to_contain_text("completed")
    await expect(task.locator(".t-worker")).not_to_be_empty()
    await expect(task.locator(".t-dur")).to_contain_text(re.compile(r"\d"))
    await task.locator("summary").click()
    streamed = "".join(e["data"]["text"] for e in tokens if e["task_id"] == "p1.0")
    await expect(task.locator(".t-text")).not_to_be_empty()
    shown = await task.locator(".t-text").text_content() or ""
    assert "".join(shown.split()) == "".join(streamed.split())  # all of it; calls apart
    await page.click("#st-timeline")
    await expect(page.locator("#t-timeline .tl-bar", has_text="research 1.2")).to_be_visible()
    await page.click("#st-input")
    await expect(page.locator("#t-input")).to_contain_text("AI in healthcare")

    # Reload restores the view: tab, run and panel; the old #run= links still work.
    await page.reload()
    await expect(page.locator("#t-id")).to_have_text(run_id)
    await expect(page.locator("#sp-input")).to_be_visible()
    await expect(page.locator("#t-input")).to_contain_text("AI in healthcare")
    await page.goto(f"{stack.url}/#/runs")
    await page.goto(f"{stack.url}/#run={run_id}")
    await expect(page).to_have_url(re.compile(f"#/runs/{run_id}$"))
    await expect(page.locator("#t-result h4")).to_have_text("Report: AI in healthcare")
    await page.click("#st-events")
    await shot(page, "research-report-desktop")


async def test_chat_starts_a_research_run_that_appears_in_runs_and_survives_reload(
    pages: Pages, stack: Stack, redis: Redis, keys: Keys
) -> None:
    page = await open_page(pages, "/#/chat")
    await page.fill("#chat-input", "start research on tides")
    await page.press("#chat-input", "Enter")
    await expect(page.locator(".msg.user")).to_have_text("start research on tides")
    card = page.locator(".msg.tool")
    await expect(card).to_contain_text(
        "start_run(workflow: research, topic: tides)", timeout=15_000
    )
    link = card.locator("a")
    research_id = (await link.get_attribute("href") or "").rsplit("/", 1)[1]
    await expect(link).to_have_text(research_id[:8])
    await expect(page.locator(".msg.assistant")).to_have_count(0)  # the card is the answer

    await page.fill("#chat-input", "what is 6*7")
    await page.press("#chat-input", "Enter")
    await expect(page.locator(".msg.tool").last).to_contain_text("= 42", timeout=15_000)
    await page.evaluate(
        "() => { window.thought = false; const el = document.getElementById('chat-thinking');"
        " new MutationObserver(() => { if (!el.hidden) window.thought = true; })"
        ".observe(el, { attributes: true }); }"
    )
    await page.fill("#chat-input", "Tell me about tides")
    await page.press("#chat-input", "Enter")
    reply = page.locator(".msg.assistant", has_text="simulated model").last
    await expect(reply).to_contain_text("tides", timeout=15_000)
    await expect(page.locator("#chat-thinking")).to_be_hidden()
    assert await page.evaluate("window.thought")  # "Thinking…" showed until the reply began
    chat_link = await page.locator("#chat-title a").get_attribute("href")
    await shot(page, "chat-desktop")

    # The research run the chat started is in the Runs list.
    await page.click("#tab-runs")
    await expect(page.locator(f"#runs-body tr[data-id='{research_id}']")).to_contain_text(
        "research"
    )

    # A reload reopens the same conversation with its messages; it goes on in the same run.
    await page.goto(f"{stack.url}/#/chat")
    await page.reload()
    await expect(page.locator("#view-chat")).to_be_visible()
    await expect(page.locator(".msg.user")).to_have_count(3)
    await expect(page.locator(".msg.assistant", has_text="6*7 = 42")).to_have_count(1)
    await expect(page.locator("#chat-title a")).to_have_attribute("href", chat_link or "")
    await page.fill("#chat-input", "calculate 1+1")
    await page.press("#chat-input", "Enter")
    await expect(page.locator(".msg.tool").last).to_contain_text("= 2", timeout=15_000)
    await expect(page.locator(".msg.user")).to_have_count(4)
    await expect(page.locator("#chat-title a")).to_have_attribute("href", chat_link or "")

    # A model failure is shown as one, in the conversation (published as the agent does).
    chat_id = (chat_link or "").rsplit("/", 1)[1]
    bus = Bus(redis, keys)
    await bus.publish(chat_id, EventType.LOG, "model error: the endpoint timed out", task="reply")
    await expect(page.locator(".msg.error")).to_contain_text("the endpoint timed out")

    # Its trace reads as a conversation, not as a bar stuck at 0 %.
    await page.click("#chat-title a")
    await expect(page.locator("#t-progress-label")).to_contain_text("Conversation: 4 turns")
    await expect(page.locator("#t-progress")).to_be_hidden()


async def test_compare_two_prompt_chains_started_from_the_task_editor(
    pages: Pages, stack: Stack
) -> None:
    page = await open_page(pages)
    await page.select_option("#wf-select", "prompt_chain")
    tasks = page.locator(".chain-task")
    await expect(tasks).to_have_count(4)  # the example: idea -> outline, title -> post
    await expect(tasks.nth(1).locator("input[type=checkbox][value=idea]")).to_be_checked()
    await page.click("#start-form button[type=submit]")
    first = await run_id_from_url(page)
    await expect(page.locator("#t-status")).to_have_text("completed", timeout=30_000)
    await expect(page.locator("#t-result-title")).to_have_text("Outputs")
    await expect(page.locator("#t-result .output h5")).to_have_text(
        ["idea", "outline", "title", "post"]
    )

    # A second chain: the first prompt edited, a task removed.
    await page.click("#tab-runs")
    await tasks.nth(0).locator("textarea").fill("Suggest one topic about the tides.")
    await tasks.nth(3).get_by_role("button", name="Remove task").click()
    await expect(tasks).to_have_count(3)
    await page.click("#start-form button[type=submit]")
    second = await run_id_from_url(page)
    await expect(page.locator("#t-status")).to_have_text("completed", timeout=30_000)

    await page.click("#tab-runs")
    for run_id in (first, second):
        await page.locator(f"#runs-body tr[data-id='{run_id}'] input[type=checkbox]").check()
    await page.click("#runs-compare")
    await expect(page).to_have_url(re.compile(f"#/compare/({first},{second}|{second},{first})$"))
    out = page.locator("#cmp-out")
    await expect(out.locator("table.compare").first).to_contain_text("Duration", timeout=15_000)
    for run_id in (first, second):
        await expect(out.locator("thead").first).to_contain_text(run_id[:8])
    steps = out.locator("section", has_text="Steps and tasks: time and tries")
    for name in ("idea", "outline", "title"):
        await expect(steps.locator("tbody th", has_text=re.compile(f"^{name}$"))).to_have_count(1)
    post = steps.locator("tr", has=page.locator("th", has_text=re.compile("^post$")))
    await expect(post.locator("td").filter(has_text="—")).to_have_count(1)  # absent in one run
    inputs = out.locator("section", has_text="Input differences")
    await expect(inputs.locator("tr.differs th", has_text="tasks[0].prompt")).to_have_count(1)
    results = out.locator("section", has_text="Result differences")
    await expect(results.locator("tr.differs th", has_text=re.compile("^post$"))).to_have_count(1)
    await page.reload()  # the comparison is in the URL
    await expect(out.locator("table.compare").first).to_contain_text("Duration", timeout=15_000)
    await shot(page, "compare-desktop")


async def test_runs_list_empty_state_filters_paging_find_and_keyboard(
    pages: Pages, stack: Stack
) -> None:
    page = await open_page(pages)
    await expect(page.locator("#runs-empty")).to_contain_text("No runs yet.")
    quick = {"min_sleep_s": 0.05, "max_sleep_s": 0.05, "max_iterations": 1}
    ids = [(await stack.start("monty", quick))["run_id"] for _ in range(27)]
    research = (await stack.start("research", {"topic": "paging", "breadth": 1}))["run_id"]
    for run_id in (research, *ids):
        await stack.wait_status(run_id, "completed")

    rows = page.locator("#runs-body tr:not([hidden])")
    await expect(rows.first).to_have_attribute("data-id", research, timeout=10_000)
    await expect(page.locator("#runs-empty")).to_be_hidden()
    await page.select_option("#runs-workflow", "research")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("completed")
    await page.select_option("#runs-workflow", "monty")
    await page.select_option("#runs-status", "failed")
    await expect(page.locator("#runs-empty")).to_contain_text("No runs match these filters.")
    await page.select_option("#runs-status", "completed")
    await expect(rows).to_have_count(25)
    await page.click("#runs-older")
    await expect(rows).to_have_count(2)
    await expect(page.locator("#runs-page")).to_have_text("Page 2")
    await expect(rows.nth(1)).to_have_attribute("data-id", ids[0])  # the oldest, last
    await page.click("#runs-newer")
    await expect(rows).to_have_count(25)
    await expect(rows.first).to_have_attribute("data-id", ids[-1])

    # Columns: duration and viewers are filled in.
    cells = rows.first.locator("td")
    await expect(cells.nth(6)).to_contain_text(re.compile(r"\d"))
    await expect(cells.nth(7)).to_have_text(re.compile(r"^\d+$"))

    # Keyboard: arrows move between runs, Enter opens one.
    await rows.nth(0).locator(".run-link").focus()
    await page.keyboard.press("ArrowDown")
    await page.keyboard.press("ArrowDown")
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(re.compile(f"#/runs/{ids[-3]}$"))
    await expect(page.locator("#t-id")).to_have_text(ids[-3])

    # Find by id (the browser logs the lookup's 404 as a console error).
    pages.allowed.append("status of 404")
    await page.click("#tab-runs")
    await page.fill("#runs-id", "no-such-run")
    await page.press("#runs-id", "Enter")
    await expect(page.locator("#runs-note")).to_contain_text("No run with id")
    await page.fill("#runs-id", research)
    await page.press("#runs-id", "Enter")
    await expect(page.locator("#t-id")).to_have_text(research)


async def test_controls_are_enabled_only_when_their_signal_is_possible(
    pages: Pages, stack: Stack
) -> None:
    run = await stack.start("monty", {"min_sleep_s": 0.3, "max_sleep_s": 0.5})
    page = await open_page(pages, f"/#/runs/{run['run_id']}")
    pause, resume = page.locator("[data-signal=pause]"), page.locator("[data-signal=resume]")
    stop, cancel = page.locator("[data-signal=stop]"), page.locator("[data-signal=cancel]")
    await expect(page.locator("#t-status")).to_have_text("running", timeout=15_000)
    await expect(pause).to_be_enabled()
    await expect(resume).to_be_disabled()
    await pause.click()
    await expect(page.locator("#t-status")).to_have_text("paused", timeout=15_000)
    await expect(pause).to_be_disabled()
    await expect(resume).to_be_enabled()
    await expect(page.locator("#t-progress-label")).to_contain_text("Paused")
    await resume.click()
    await expect(page.locator("#t-status")).to_have_text("running", timeout=15_000)
    await expect(pause).to_be_enabled()
    await expect(resume).to_be_disabled()
    await cancel.click()
    await expect(page.locator("#t-status")).to_have_text("cancelled", timeout=15_000)
    for button in (pause, resume, stop, cancel):
        await expect(button).to_be_disabled()
    kinds = page.locator("#t-events li.k-ctrl .type")
    await page.select_option("#log-kind", "control")
    await expect(kinds.filter(has_text="signal_received")).to_have_count(3)
    await expect(kinds.filter(has_text="workflow_paused")).to_have_count(1)


async def test_markup_in_quotes_inputs_and_messages_is_shown_as_text(
    pages: Pages, stack: Stack
) -> None:
    page = await open_page(pages)
    await page.select_option("#wf-select", "monty")
    await page.fill("#wf-fields [name=min_sleep_s]", "0.1")
    await page.fill("#wf-fields [name=max_sleep_s]", "0.2")
    await page.fill("#wf-fields [name=max_iterations]", "2")
    await page.fill("#wf-fields [name=quotes]", f"{EVIL}\n<script>alert(2)</script>")
    await page.click("#start-form button[type=submit]")
    await expect(page.locator("#t-status")).to_have_text("completed", timeout=20_000)
    await expect(page.locator("#t-quote")).to_contain_text(re.compile(r"<img src=x|<script>"))
    await expect(page.locator("#t-events")).to_contain_text(re.compile(r"Iteration 2: \"<"))
    await page.click("#st-input")
    await expect(page.locator("#t-input .quotes li").first).to_have_text(EVIL)

    topic = f"{EVIL} tides"
    run = await stack.start("research", {"topic": topic, "breadth": 1})
    await page.goto(f"{stack.url}/#/runs/{run['run_id']}")
    await expect(page.locator("#t-result h4")).to_have_text(f"Report: {topic}", timeout=30_000)

    await page.click("#tab-chat")
    await page.fill("#chat-input", EVIL)
    await page.press("#chat-input", "Enter")
    await expect(page.locator(".msg.user")).to_have_text(EVIL)
    await expect(page.locator(".msg.assistant").last).to_be_visible(timeout=15_000)

    assert await page.locator("main img, main script").count() == 0
    assert await page.title() == "Tidings"
