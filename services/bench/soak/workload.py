"""The load: runs of every shipped workflow, started the ways clients start them, their viewers,
chat conversations, and control signals that must not keep any run from ending.

Runs: `research` and `prompt_chain` through `POST /api/runs` and through seed 000's
create/execute; `monty` through `POST /api/runs` (bounded by `max_iterations`, or stopped by a
signal) and through `/monty/stream` (started by its viewer, some stopped through
`/workflow/{id}/signal/stop`); `chat` through `POST /api/runs`, continued through `POST /chat`
and `message` signals, one message per chat asking a tool to start a `prompt_chain` whose prompt
is a marker (a side effect the checks count), then stopped.

Every run can end by itself: monty always has `max_iterations` and chat an idle timeout, so a
start whose answer was lost to a fault (the run may exist without the soak knowing its id) still
ends. The checks read every run from the namespace, not only the ones the soak knows.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from .profile import Profile
from .viewers import ViewerLog, ViewerPlan, run_viewer
from .world import World

__all__ = ["Load", "RunPlan", "RunRecord"]

_log = logging.getLogger(__name__)

_ACCEPTED = {200, 201, 202}


@dataclass
class RunPlan:
    index: int
    workflow: str
    route: str  # api | seed000 | monty-stream
    input: dict[str, Any]
    at: float  # seconds into the load when it starts
    token: str  # in its input, and in no other run's: how the checks find its runs
    stop_after: float | None = None


@dataclass
class RunRecord:
    plan: RunPlan
    run_id: str | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)
    expect: set[str] = field(default_factory=lambda: {"completed"})
    markers: dict[str, bool] = field(default_factory=dict)  # chat: marker -> acknowledged
    problems: list[str] = field(default_factory=list)


def _monty_input(token: str, iterations: int) -> dict[str, Any]:
    return {
        "min_sleep_s": 0.4,
        "max_sleep_s": 1.6,
        "max_iterations": iterations,
        "progress_interval_s": 0.2,
        "quotes": [f"Quote {token}", "Always look on the bright side of life."],
    }


def _chain_tasks(token: str) -> list[dict[str, Any]]:
    return [
        {"name": "outline", "prompt": f"Outline soak report {token} in three points."},
        {"name": "draft", "prompt": "Expand this outline: {outline}", "depends_on": ["outline"]},
        {"name": "title", "prompt": "Give the report a title."},
    ]


def plan_runs(profile: Profile, rng: random.Random, seed: int) -> list[RunPlan]:
    """`profile.runs` runs: about 30 % research, 20 % prompt_chain, 30 % monty, 20 % chat, each
    workflow through every route that starts it; start times spread over the start window."""
    n = profile.runs
    counts = {"chat": max(1, n // 5), "prompt_chain": max(1, n // 5), "monty": max(2, 3 * n // 10)}
    counts["research"] = max(1, n - sum(counts.values()))
    plans: list[RunPlan] = []
    for workflow, count in counts.items():
        for k in range(count):
            i = len(plans)
            at = rng.uniform(0, profile.start_window_s)
            token = f"[soak run {seed}.{i}]"
            if workflow == "research":
                topic = f"soak topic {token}"
                if k % 3 == 0:
                    config = {"breadth": rng.randint(2, 3), "depth": 1}
                    body = {"name": f"Research {topic}", "topic": topic, "config": config}
                    plans.append(RunPlan(i, workflow, "seed000", body, at, token))
                else:
                    inp = {"topic": topic, "breadth": rng.randint(2, 3), "depth": rng.randint(1, 2)}
                    plans.append(RunPlan(i, workflow, "api", inp, at, token))
            elif workflow == "prompt_chain":
                if k % 2 == 0:
                    chain = {"name": f"chain {token}", "tasks": _chain_tasks(token)}
                    plans.append(RunPlan(i, workflow, "seed000", chain, at, token))
                else:
                    inp = {"tasks": _chain_tasks(token)}
                    plans.append(RunPlan(i, workflow, "api", inp, at, token))
            elif workflow == "monty":
                stop = rng.uniform(3, 8) if k % 4 in (1, 3) else None
                iterations = 40 if stop is not None else rng.randint(6, 10)
                route = "monty-stream" if k % 2 == 0 else "api"
                inp = _monty_input(token, iterations)
                plans.append(RunPlan(i, workflow, route, inp, at, token, stop))
            else:
                inp = {"message": f"hello from soak chat {token}", "idle_timeout_s": 20}
                plans.append(RunPlan(i, workflow, "api", inp, at, token))
    return plans


@dataclass
class _ViewerSpec:
    plan: ViewerPlan
    run_indices: list[int]


def plan_viewers(profile: Profile, runs: list[RunPlan], rng: random.Random) -> list[_ViewerSpec]:
    """One viewer per monty-stream run (it starts the run); the rest spread over the other runs:
    seed 000 streams for runs created through seed 000, about 15 % multiplexed over 2-4 runs,
    the others single-run streams; `slow_share` of them (single-run streams) read slowly; 5 %
    join late."""
    specs: list[_ViewerSpec] = []
    gateways = profile.gateways
    for run in runs:
        if run.route == "monty-stream":
            plan = ViewerPlan(
                len(specs),
                "monty",
                [],
                run.at,
                prefer=len(specs) % gateways,
                monty_input=run.input,
                monty_post=run.index % 3 != 0,
                stop_after=run.stop_after,
            )
            specs.append(_ViewerSpec(plan, [run.index]))
    watched = [r for r in runs if r.route != "monty-stream"]
    while len(specs) < profile.viewers:
        vid = len(specs)
        late = rng.random() < 0.05
        slow = vid % max(1, round(1 / profile.slow_share)) == 0 if profile.slow_share else False
        roll = rng.random()
        if roll < 0.15 and len(watched) >= 2 and not slow:  # slow ones follow one run each
            chosen = rng.sample(watched, min(len(watched), rng.randint(2, 4)))
            kind, feed = "mux", rng.random() < 0.25
        else:
            chosen, feed = [rng.choice(watched)], False
            seeded = chosen[0].route == "seed000"
            kind = "seed000" if seeded and rng.random() < 0.5 else "native"
        at = (
            max(r.at for r in chosen) + rng.uniform(0.05, 2.0) + (rng.uniform(8, 15) if late else 0)
        )
        plan = ViewerPlan(vid, kind, [], at, slow=slow, feed=feed, prefer=vid % gateways)
        specs.append(_ViewerSpec(plan, [r.index for r in chosen]))
    return specs


class Load:
    """Starts the planned runs and viewers, holds the conversations and the signals."""

    def __init__(self, world: World) -> None:
        self.world = world
        rng = random.Random(world.seed * 7919 + 1)  # the plan never depends on timing
        self.runs = [RunRecord(p) for p in plan_runs(world.profile, rng, world.seed)]
        self.specs = plan_viewers(world.profile, [r.plan for r in self.runs], rng)
        self.viewers = [ViewerLog(s.plan) for s in self.specs]
        self.signals_sent: dict[str, int] = {}

    async def run(self) -> None:
        world = self.world
        tasks = [
            world.spawn(self._start(rec), name=f"start-{i}") for i, rec in enumerate(self.runs)
        ]
        viewers = [
            asyncio.create_task(self._view(spec, log), name=f"viewer-{spec.plan.vid}")
            for spec, log in zip(self.specs, self.viewers, strict=True)
        ]
        signals = world.spawn(self._random_signals(), name="random-signals")
        await asyncio.gather(*tasks, signals, return_exceptions=True)
        _log.info("runs started, conversations and signals done at %.1f s", world.now())
        await asyncio.gather(*viewers, return_exceptions=True)
        _log.info("viewers done at %.1f s", world.now())
        for v in sorted(self.viewers, key=lambda v: v.finished_at)[-4:]:
            _log.info(
                "late viewer %d %s%s of %d run(s): done at %.1f s, %d connections",
                v.plan.vid,
                v.plan.kind,
                " (slow)" if v.plan.slow else "",
                len(v.plan.runs),
                v.finished_at,
                v.connects,
            )
        for task, log in zip(viewers, self.viewers, strict=True):
            if not task.cancelled() and task.exception() is not None:
                log.problems.append(f"viewer crashed: {task.exception()!r}")

    async def _view(self, spec: _ViewerSpec, log: ViewerLog) -> None:
        if spec.plan.kind != "monty":  # a monty stream starts its run itself
            for i in spec.run_indices:
                await self.runs[i].started.wait()
            spec.plan.runs[:] = [
                rid for i in spec.run_indices if (rid := self.runs[i].run_id) is not None
            ]
            if not spec.plan.runs:
                log.problems.append("none of its runs could be started")
                return
        await asyncio.sleep(max(0.0, spec.plan.at - self.world.now()))
        await run_viewer(spec.plan, log, self.world)
        if spec.plan.kind == "monty" and spec.plan.runs:
            rec = self.runs[spec.run_indices[0]]
            rec.run_id = spec.plan.runs[0]
            rec.started.set()

    # -- starting runs --------------------------------------------------------------------------

    async def _start(self, rec: RunRecord) -> None:
        world, plan = self.world, rec.plan
        await asyncio.sleep(max(0.0, plan.at - world.now()))
        if plan.route == "monty-stream":
            return  # its viewer starts it
        try:
            if plan.route == "seed000":
                rec.run_id = await self._start_seed000(plan)
            else:
                # A start whose answer was lost is sent again with the same key, as a careful
                # client does: the gateway answers with the run the first one started.
                resp = await world.call_until(
                    "start",
                    "POST",
                    "/api/runs",
                    done={200, 201},
                    json={"workflow": plan.workflow, "input": plan.input},
                    headers={"Idempotency-Key": f"soak {plan.token}"},
                )
                if resp is not None and resp.status_code in (200, 201):
                    rec.run_id = str(resp.json()["run_id"])
                elif resp is not None:
                    rec.problems.append(f"start: {resp.status_code} {resp.text[:200]}")
        finally:
            rec.started.set()
        if rec.run_id is None:
            rec.problems.append("could not be started")
            return
        if plan.workflow == "chat":
            await self._converse(rec)
        elif plan.stop_after is not None:
            await asyncio.sleep(plan.stop_after)
            path = (
                f"/workflow/{rec.run_id}/signal/stop"
                if plan.index % 2
                else f"/api/runs/{rec.run_id}/signals/stop"
            )
            await world.call_until("stop", "POST", path, done={200, 202, 409})

    async def _start_seed000(self, plan: RunPlan) -> str | None:
        world = self.world
        resp = await world.call_until(
            "seed000-create", "POST", "/api/v1/workflows/", done={201}, json=plan.input
        )
        if resp is None or resp.status_code != 201:
            return None
        def_id = str(resp.json()["id"])
        resp = await world.call_until(
            "seed000-execute",
            "POST",
            f"/api/v1/workflows/{def_id}/execute?stream=true",
            done={200, 409},
        )
        if resp is None or resp.status_code not in (200, 409):
            return None
        # 409: an execute whose answer was lost to a fault did start it (the run has its id).
        return def_id

    async def _converse(self, rec: RunRecord) -> None:
        world, run_id = self.world, rec.run_id
        assert run_id is not None
        marker = f"soak-marker-{uuid.UUID(int=world.rng.getrandbits(128)).hex[:12]}"
        lines = [
            ("chat", "calculate 2*(3+4)"),
            ("signal", f"start prompt_chain on {marker}"),
            ("chat", "tell me how event streams resume"),
            ("signal", "what time is it"),
        ]
        acked = 1  # the first message came with the input
        for how, text in lines:
            await asyncio.sleep(world.rng.uniform(0.5, 2.0))
            if how == "chat":
                body = {"message": text, "workflow_id": run_id, "timeout_s": 5}
                resp = await world.call_until("chat", "POST", "/chat", done={200, 202}, json=body)
            else:
                # Sent once: a message whose answer was lost may or may not have arrived, and
                # sending it again would be a second request, not a retry.
                resp = await world.call(
                    "message", "POST", f"/api/runs/{run_id}/signals/message", json={"text": text}
                )
            accepted = resp is not None and resp.status_code in _ACCEPTED
            acked += accepted
            if text.startswith("start "):
                rec.markers[marker] = accepted
        await self._replies(run_id, acked)
        await world.call_until("stop", "POST", f"/api/runs/{run_id}/signals/stop", done={202, 409})

    async def _replies(self, run_id: str, acked: int, wait_s: float = 30.0) -> None:
        """Until every message of the chat has its reply, as a user waits before leaving: a
        `stop` ends the conversation, and messages still queued then are never answered."""
        world = self.world
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while loop.time() < deadline and not world.past_deadline():
            resp = await world.call("history", "GET", f"/workflow/{run_id}/history")
            if resp is not None and resp.status_code == 200:
                messages = resp.json().get("messages", [])
                asked = sum(m.get("role") == "user" for m in messages)
                answered = sum(m.get("role") == "assistant" for m in messages)
                if asked >= acked and answered >= asked:
                    return
            await asyncio.sleep(0.3)

    # -- signals --------------------------------------------------------------------------------

    async def _random_signals(self) -> None:
        """Pause+resume pairs, a few cancels, messages and stops to runs that ignore them, and
        unknown signal names; bounded in count, spread over the start window."""
        world = self.world
        rng = random.Random(world.seed * 104729 + 3)
        targets = [r for r in self.runs if r.plan.workflow in ("research", "prompt_chain")]
        cancels = max(1, world.profile.random_signals // 12)
        jobs = []
        for k in range(world.profile.random_signals):
            rec = rng.choice(targets)
            kind = (
                "cancel"
                if k < cancels
                else rng.choice(["pause", "pause", "message", "stop", "bogus"])
            )
            at = rng.uniform(1.0, world.profile.start_window_s + 6.0)
            jobs.append(self._signal(rec, kind, at, rng.uniform(0.2, 1.5)))
        await asyncio.gather(*jobs)

    async def _signal(self, rec: RunRecord, kind: str, at: float, pause_s: float) -> None:
        world = self.world
        await asyncio.sleep(max(0.0, at - world.now()))
        await rec.started.wait()
        if rec.run_id is None:
            return
        base = f"/api/runs/{rec.run_id}/signals"
        self.signals_sent[kind] = self.signals_sent.get(kind, 0) + 1
        if kind == "pause":
            await world.call_until("signal", "POST", f"{base}/pause", done={202, 409})
            await asyncio.sleep(pause_s)
            # Always resumed, even when the pause's answer was lost: it may have been taken.
            await world.call_until("signal", "POST", f"{base}/resume", done={202, 409})
        elif kind == "cancel":
            resp = await world.call("signal", "POST", f"{base}/cancel")
            if resp is not None and resp.status_code == 202:
                rec.expect = {"cancelled"}
            elif resp is None or resp.status_code != 409:
                rec.expect = {"completed", "cancelled"}
        elif kind == "message":
            await world.call("signal", "POST", f"{base}/message", json={"text": "ignored"})
        elif kind == "stop":
            await world.call("signal", "POST", f"{base}/stop")
        else:
            name = "".join(world.rng.choice("abcdefghij") for _ in range(8))
            resp = await world.call("signal", "POST", f"{base}/{name}")
            if resp is not None and resp.status_code != 422:
                rec.problems.append(f"unknown signal {name}: {resp.status_code}")
