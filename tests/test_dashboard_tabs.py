"""Many dashboard tabs of one browser share one event-stream connection (frontend/js/live.js).

Each tab is a page on the gateway's origin, under the dashboard's Content-Security-Policy, that
drives live.js directly (the views come and go; live.js's contract is what they rely on) and
records what its followers receive. The runs are real: a gateway and a worker process.

Needs Debian's chromium at /usr/bin/chromium; without it the tests skip, except under CI
(`CI=true`), where a missing browser is a failure.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import psutil
import pytest
from playwright.async_api import Browser, BrowserContext, Page
from redis.asyncio import Redis

from tests.test_api_helpers import Stack, running_stack

# Importing the support module skips this one where there is no Chromium (and fails under CI).
from tests.test_dashboard_support import browser
from tidings.bus import Bus
from tidings.events import EventType
from tidings.keys import Keys
from tidings.runs import RunStore
from tidings.services.gateway.dashboard import SECURITY_HEADERS

__all__ = ["browser"]  # a fixture used by this module

pytestmark = pytest.mark.browser

SLOW_MONTY = {"min_sleep_s": 0.2, "max_sleep_s": 0.4}
LIVE = 30_000  # ms: a generous liveness limit, not a speed target

# An empty page on the gateway's origin: the tab's followers run in it, nothing else does.
BLANK = "<!doctype html><html lang=en><meta charset=utf-8><title>Tidings tab</title></html>"

# Follow `runs` (and the run list when `feed`) in this tab; what arrives is kept in `window.seen`
# under `key:run`, so two followers of one run in one tab stay apart.
FOLLOW = """async ([key, runs, feed]) => {
  const live = await import("/js/live.js");
  const seen = (window.seen ??= { runs: {}, snapshots: 0, summaries: 0 });
  for (const run of runs) {
    const got = (seen.runs[`${key}:${run}`] = { seqs: [], ids: [], states: [], resyncs: 0 });
    live.followRun(run, {
      onEvent: (e) => { got.seqs.push(e.seq); got.ids.push(e.id); },
      onResync: () => { got.resyncs += 1; },
      onState: (s) => got.states.push(s),
    });
  }
  if (feed) live.followRuns({
    onSnapshot: () => { seen.snapshots += 1; },
    onSummary: () => { seen.summaries += 1; },
  });
  return live.transportMode();
}"""


ERRORS: list[str] = []  # the tabs' uncaught errors and console errors


@pytest.fixture(autouse=True)
def no_page_errors() -> Iterator[None]:
    ERRORS.clear()
    yield
    assert ERRORS == [], ERRORS


# A tab that goes without its pagehide handlers running, as when it crashes or is killed.
NO_PAGEHIDE = """{
  const add = window.addEventListener.bind(window);
  window.addEventListener = (type, ...rest) => type === "pagehide" || add(type, ...rest);
}"""
NO_WEB_LOCKS = "delete Navigator.prototype.locks"  # as on plain http to a non-local host


@asynccontextmanager
async def tabs_stack(
    processes: Any, settings_env: Callable[..., dict[str, str]], **settings: object
) -> AsyncIterator[Stack]:
    """A running stack whose client drops idle connections after 1 s, long before the gateway's
    5 s keep-alive: these tests leave it idle for seconds while the tabs work, and a request must
    not race the gateway closing the connection it reuses."""
    async with running_stack(processes, settings_env, **settings) as s:
        limits = httpx.Limits(keepalive_expiry=1.0)
        async with httpx.AsyncClient(base_url=s.url, timeout=30, limits=limits) as client:
            yield dataclasses.replace(s, client=client)


@pytest.fixture
async def stack(
    processes: Any, settings_env: Callable[..., dict[str, str]]
) -> AsyncIterator[Stack]:
    async with tabs_stack(processes, settings_env) as s:
        yield s


@pytest.fixture
async def trimmed_stack(
    processes: Any, settings_env: Callable[..., dict[str, str]]
) -> AsyncIterator[Stack]:
    """Logs trimmed to about the last hundred events (Redis trims whole stream nodes)."""
    async with tabs_stack(processes, settings_env, events_maxlen=10) as s:
        yield s


async def open_tab(
    context: BrowserContext,
    stack: Stack,
    *runs: str,
    feed: bool = True,
    key: str = "main",
    init: str | None = None,
) -> tuple[Page, str]:
    """A new tab following `runs`; returns it and the transport live.js chose."""
    page = await context.new_page()
    if init:
        await page.add_init_script(init)
    page.on("pageerror", lambda exc: ERRORS.append(str(exc)))
    page.on("console", lambda msg: ERRORS.append(msg.text) if msg.type == "error" else None)
    await page.route(
        f"{stack.url}/tab",
        lambda route: route.fulfill(
            status=200, content_type="text/html", body=BLANK, headers=SECURITY_HEADERS
        ),
    )
    await page.goto(f"{stack.url}/tab#run={runs[0] if runs else ''}")
    mode = await page.evaluate(FOLLOW, [key, list(runs), feed])
    return page, mode


async def follow_more(page: Page, *runs: str, key: str) -> None:
    await page.evaluate(FOLLOW, [key, list(runs), False])


async def seen(page: Page, run: str, key: str = "main") -> dict[str, Any]:
    got: dict[str, Any] = await page.evaluate("(k) => window.seen.runs[k]", f"{key}:{run}")
    return got


async def wait_events(page: Page, run: str, count: int, key: str = "main") -> None:
    await page.wait_for_function(
        "([k, n]) => window.seen.runs[k].seqs.length >= n",
        arg=[f"{key}:{run}", count],
        timeout=LIVE,
    )


async def wait_closed(page: Page, run: str, key: str = "main") -> None:
    await page.wait_for_function(
        "(k) => window.seen.runs[k].states.includes('closed')", arg=f"{key}:{run}", timeout=LIVE
    )


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str | Callable[[], str], timeout: float = 30
) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not await check():  # noqa: ASYNC110 (polling the gateway and the browser)
                await asyncio.sleep(0.1)
    except TimeoutError:
        said = what if isinstance(what, str) else what()
        raise AssertionError(f"not within {timeout} s: {said}") from None


async def viewers(stack: Stack, run: str) -> int:
    body = (await stack.client.get(f"/api/runs/{run}")).json()
    return int(body["viewers"])


async def feed_viewers(stack: Stack) -> int:
    text = (await stack.client.get("/metrics")).text
    line = next(
        ln for ln in text.splitlines() if ln.startswith("tidings_gateway_lifecycle_viewers")
    )
    return int(float(line.split()[-1]))


async def one_connection(stack: Stack, runs: list[str], gone: tuple[str, ...] = ()) -> bool:
    """Each run carried exactly once and the run list once: one hub, one connection."""
    counts = [await viewers(stack, run) for run in runs]
    dropped = [await viewers(stack, run) for run in gone]
    return (
        counts == [1] * len(runs) and dropped == [0] * len(gone) and await feed_viewers(stack) == 1
    )


def _browser_connections(port: int) -> int:
    """ESTABLISHED TCP connections from this test's Chromium processes to `port`."""
    count = 0
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.name().startswith("chrom"):
                count += sum(
                    1
                    for c in proc.net_connections(kind="tcp")
                    if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
                )
        except psutil.Error:
            continue
    return count


async def browser_connections(stack: Stack) -> int:
    return await asyncio.to_thread(_browser_connections, int(stack.url.rsplit(":", 1)[1]))


async def log_of(stack: Stack, run: str) -> tuple[list[int], list[str]]:
    """The run's whole log from the JSON page API: seqs and stream ids."""
    seqs: list[int] = []
    ids: list[str] = []
    params: dict[str, Any] = {"limit": 1000}
    while True:
        resp = await stack.client.get(
            f"/api/runs/{run}/events", params=params, headers={"Accept": "application/json"}
        )
        page = resp.json()
        seqs += [e["seq"] for e in page["events"]]
        ids += [e["id"] for e in page["events"]]
        if len(page["events"]) < 1000:
            return seqs, ids
        params["after"] = page["next"]


async def assert_whole_log(page: Page, stack: Stack, run: str, key: str = "main") -> None:
    """The tab's follower got the run's log: from seq 1, no gap, no duplicate, to the end."""
    got = await seen(page, run, key)
    seqs, ids = await log_of(stack, run)
    assert seqs == list(range(1, len(seqs) + 1))
    assert got["seqs"] == seqs, (run, key)
    assert got["ids"] == ids
    assert got["resyncs"] == 0
    assert got["states"][0] == "connecting" and got["states"][-1] == "closed"


async def stop_all(stack: Stack, runs: list[str]) -> None:
    for run in runs:
        resp = await stack.client.post(f"/api/runs/{run}/signals/stop", json={})
        assert resp.status_code in (202, 409), resp.text


async def test_eight_tabs_share_one_event_stream_and_keep_every_event(
    browser: Browser, stack: Stack
) -> None:
    runs = [(await stack.start("monty", SLOW_MONTY))["run_id"] for _ in range(8)]
    context = await browser.new_context()
    tabs: list[Page] = []
    for i, run in enumerate(runs):
        # Tab 1 will go as if it crashed (only its Web Lock tells); tab 8 has no Web Locks (only
        # its pagehide message tells).
        init = NO_PAGEHIDE if i == 0 else NO_WEB_LOCKS if i == 7 else None
        page, mode = await open_tab(context, stack, run, init=init)
        assert mode == "shared-worker"
        tabs.append(page)

    # Every tab shows its run live, far past the six connections a browser allows per origin.
    for page, run in zip(tabs, runs, strict=True):
        await wait_events(page, run, 3)
    await eventually(lambda: one_connection(stack, runs), "one connection carries everything")
    assert [await t.evaluate("() => window.seen.snapshots") for t in tabs] == [1] * len(tabs)
    # Once the connections the page loads used are closed as idle (by the gateway after 5 s, by
    # Chromium after 10 s if never used), the stream is the browser's only one to the gateway.
    counts: list[int] = []

    async def one_browser_connection() -> bool:
        counts.append(await browser_connections(stack))
        return counts[-1] == 1

    await eventually(one_browser_connection, lambda: f"one connection, saw {counts}", timeout=60)

    # A late follower of a run the hub already carries still gets it from seq 1. An unknown or
    # malformed run closes that follower only.
    await follow_more(tabs[1], runs[2], "no-such-run", "not a run id!", key="late")
    await wait_closed(tabs[1], "no-such-run", key="late")
    await wait_closed(tabs[1], "not a run id!", key="late")
    assert (await seen(tabs[1], "no-such-run", key="late"))["seqs"] == []

    # A control request from a tab is never stuck behind streams: stop run 5 from tab 5.
    status = await tabs[4].evaluate(
        """(run) => fetch(`/api/runs/${run}/signals/stop`, {method: "POST",
             headers: {"Content-Type": "application/json"}, body: "{}"}).then((r) => r.status)""",
        runs[4],
    )
    assert status == 202
    await wait_closed(tabs[4], runs[4])
    assert (await stack.wait_status(runs[4], "completed", timeout=15))["status"] == "completed"

    # Close the tab that subscribed first, and the one without Web Locks: the hub notices both and
    # lets their runs go; the other tabs carry on.
    rest = list(zip(tabs[1:7], runs[1:7], strict=True))
    before = {run: len((await seen(page, run))["seqs"]) for page, run in rest}
    await tabs[0].close()
    await tabs[7].close()
    live = [run for run in runs[1:7] if run != runs[4]]
    await eventually(
        lambda: one_connection(stack, live, gone=(runs[0], runs[7])), "closed tabs released"
    )
    for page, run in rest:
        if run != runs[4]:
            await wait_events(page, run, before[run] + 2)

    await stop_all(stack, live)
    for page, run in rest:
        await wait_closed(page, run)
        await assert_whole_log(page, stack, run)
    await wait_closed(tabs[1], runs[2], key="late")
    await assert_whole_log(tabs[1], stack, runs[2], key="late")
    await context.close()


async def test_without_shared_worker_a_leader_tab_holds_the_stream_and_hands_it_over(
    browser: Browser, stack: Stack
) -> None:
    runs = [(await stack.start("monty", SLOW_MONTY))["run_id"] for _ in range(3)]
    context = await browser.new_context()
    await context.add_init_script("delete window.SharedWorker")
    tabs: list[Page] = []
    for run in runs:
        page, mode = await open_tab(context, stack, run)
        assert mode == "leader"
        tabs.append(page)
    await follow_more(tabs[1], runs[0], key="late")  # so the leader's run outlives its tab
    for page, run in zip(tabs, runs, strict=True):
        await wait_events(page, run, 3)
    await wait_events(tabs[1], runs[0], 3, key="late")
    await eventually(lambda: one_connection(stack, runs), "one connection carries everything")

    # The first tab leads (it took the lock first). Close it: another tab takes over and every
    # follower resumes from its own cursor.
    before = len((await seen(tabs[1], runs[0], key="late"))["seqs"])
    await tabs[0].close()
    await wait_events(tabs[1], runs[0], before + 3, key="late")
    for page, run in zip(tabs[1:], runs[1:], strict=True):
        await wait_events(page, run, len((await seen(page, run))["seqs"]) + 2)
    await eventually(lambda: one_connection(stack, runs), "the new leader's one connection")
    # The new hub knows run 2 only from tab 2's cursor: a follower from seq 1 makes it reopen the
    # run from the start, and tab 2's own follower drops the replay it already has.
    await follow_more(tabs[2], runs[1], key="rewound")
    await wait_events(tabs[2], runs[1], 3, key="rewound")

    await stop_all(stack, runs)
    for page, run in zip(tabs[1:], runs[1:], strict=True):
        await wait_closed(page, run)
        await assert_whole_log(page, stack, run)
    for page, run, key in ((tabs[1], runs[0], "late"), (tabs[2], runs[1], "rewound")):
        await wait_closed(page, run, key=key)
        await assert_whole_log(page, stack, run, key=key)
    await context.close()


async def test_without_event_source_the_tab_polls_the_log(browser: Browser, stack: Stack) -> None:
    context = await browser.new_context()
    await context.add_init_script(
        "delete window.SharedWorker; delete window.EventSource; delete Navigator.prototype.locks"
    )
    page, mode = await open_tab(context, stack)  # the run list only, for now
    assert mode == "tab"
    await page.wait_for_function("() => window.seen.snapshots === 1", timeout=LIVE)
    run = (await stack.start("monty", {**SLOW_MONTY, "max_iterations": 3}))["run_id"]
    await follow_more(page, run, key="main")
    await wait_closed(page, run)
    await assert_whole_log(page, stack, run)
    assert "polling" in (await seen(page, run))["states"]
    # The new run reached the list as changes, without a second snapshot.
    await page.wait_for_function("() => window.seen.summaries >= 1", timeout=LIVE)
    assert await page.evaluate("() => window.seen.snapshots") == 1
    await context.close()


async def test_tabs_resume_from_their_cursors_after_the_gateway_restarts(
    browser: Browser, stack: Stack, processes: Any
) -> None:
    run = (await stack.start("monty", SLOW_MONTY))["run_id"]
    context = await browser.new_context()
    page, _ = await open_tab(context, stack, run)
    await wait_events(page, run, 3)

    gateway = next(p for p in processes.procs if "tidings.services.gateway" in p.args)
    gateway.terminate()
    await asyncio.to_thread(gateway.wait, 15)
    await page.wait_for_function(
        "(k) => window.seen.runs[k].states.includes('reconnecting')", arg=f"main:{run}"
    )
    processes.python("tidings.services.gateway", env=stack.env, name="gateway")
    before = len((await seen(page, run))["seqs"])
    await wait_events(page, run, before + 3)  # the run went on meanwhile; so does the tab

    await stop_all(stack, [run])
    await wait_closed(page, run)
    await assert_whole_log(page, stack, run)
    states = (await seen(page, run))["states"]
    assert states[states.index("reconnecting") :][:2] == ["reconnecting", "open"], states
    await context.close()


async def test_tabs_that_come_after_the_log_was_trimmed_get_a_resync_then_the_rest(
    browser: Browser, trimmed_stack: Stack
) -> None:
    stack = trimmed_stack
    fast = {"min_sleep_s": 0.05, "max_sleep_s": 0.05, "progress_interval_s": 0.05}
    run = (await stack.start("monty", fast))["run_id"]

    async def trimmed() -> bool:
        seqs, _ = await log_of(stack, run)
        return bool(seqs) and seqs[0] > 1

    await eventually(trimmed, "the log trimmed")
    context = await browser.new_context()
    first, _ = await open_tab(context, stack, run)
    await wait_events(first, run, 5)
    # The hub's cache starts after the trim too: the second tab's follower reopens the run.
    second, _ = await open_tab(context, stack, run)
    await wait_events(second, run, 5)

    await stop_all(stack, [run])
    for page in (first, second):
        await wait_closed(page, run)
    seqs, _ = await log_of(stack, run)
    for page in (first, second):
        got = await seen(page, run)
        assert got["resyncs"] == 1
        assert got["seqs"][0] > 1
        assert got["seqs"] == list(range(got["seqs"][0], got["seqs"][-1] + 1))
        assert got["seqs"][-len(seqs) :] == seqs  # to the end, like the log
    await context.close()


async def _drop_gateway_subscription(redis: Redis, processes: Any) -> None:
    """Close the test's gateway's pub/sub connection on the server (as a failover does): the
    gateway subscribes again and its viewers catch up from their cursors."""
    names = {f"tidings-gateway:{proc.pid}" for proc in processes.procs}
    clients = await redis.client_list(_type="pubsub")
    ours = [c["id"] for c in clients if c.get("name") in names]
    assert ours, clients
    for client_id in ours:
        await redis.client_kill_filter(_id=client_id)


async def test_a_tab_whose_run_log_went_back_in_time_starts_again_from_a_resync(
    browser: Browser, stack: Stack, redis: Redis, keys: Keys, processes: Any
) -> None:
    """A promoted replica that lacked the last writes, played on one Valkey: the run's newest
    events vanish from its log after the tab showed them, and the events written next reuse
    their seqs. The tab gets a resync and then shows exactly the log, not the old events with
    the new ones dropped as repeats."""
    if keys.clustered:
        pytest.skip("plays a failover's rollback on the one Valkey the gateway subscribes to")
    store, bus = RunStore(redis, keys), Bus(redis, keys)
    run = (await store.create("demo", None)).run_id
    kept = [await bus.publish(run, EventType.LOG, f"kept {i}") for i in range(10)]
    context = await browser.new_context()
    page, _ = await open_tab(context, stack, run)
    await wait_events(page, run, 10)
    lost = [await bus.publish(run, EventType.LOG, f"lost {i}") for i in range(3)]
    await wait_events(page, run, 13)

    await redis.xdel(keys.events(run), *(e.id for e in lost))
    await redis.hset(keys.run(run), mapping={"seq": 10, "last_event_id": kept[-1].id})
    await _drop_gateway_subscription(redis, processes)
    for i in range(5):
        await bus.publish(run, EventType.LOG, f"after {i}")
    await bus.publish(run, EventType.WORKFLOW_COMPLETED, "done")

    await wait_closed(page, run)
    seqs, _ = await log_of(stack, run)
    assert seqs == list(range(1, 17))  # 11..13 written anew
    got = await seen(page, run)
    assert got["resyncs"] == 1
    assert got["seqs"][:13] == list(range(1, 14)) and got["seqs"][13:] == seqs
    await context.close()


async def test_more_runs_than_one_stream_carries_are_split_over_connections(
    browser: Browser, processes: Any, settings_env: Callable[..., dict[str, str]]
) -> None:
    """Past the gateway's TIDINGS_STREAM_MAX_RUNS (64) per stream, the hub opens another stream
    instead of asking for more than one may carry (a 400, retried forever)."""
    # 70 unfinished runs of one client: more than TIDINGS_ACTIVE_RUNS_PER_CLIENT allows.
    async with tabs_stack(processes, settings_env, active_runs_per_client=100) as stack:
        runs = [(await stack.start("monty", SLOW_MONTY))["run_id"] for _ in range(70)]
        # The worker runs the first ones (the rest wait for a slot): follow those last, so the
        # second stream carries runs that publish.
        order = runs[6:] + runs[:6]
        context = await browser.new_context()
        page, _ = await open_tab(context, stack, *order, feed=False)
        await eventually(lambda: _all_viewed(stack, runs), "each of the 70 runs has its viewer", 60)
        for run in (order[0], order[30], order[64], order[-1]):
            await wait_events(page, run, 2)
        for run in runs:
            await stack.client.post(f"/api/runs/{run}/signals/cancel")
        await context.close()


async def _all_viewed(stack: Stack, runs: list[str]) -> bool:
    counts = await asyncio.gather(*(viewers(stack, run) for run in runs))
    return all(n == 1 for n in counts)
