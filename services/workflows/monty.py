"""`monty`: the endless demonstration loop. Sleep a random while, then deliver a quote. Forever.

Each iteration sleeps between `min_sleep_s` and `max_sleep_s`, publishing a `task_progress` every
`progress_interval_s` (500 ms by default), then an `iteration_completed` carrying the quote. Every
event's data carries the fields the seed's trace view reads (`iteration`, `progress`, `status`,
`quotes_delivered`, `current_quote`, `elapsed`) and the names its query returns
(`iteration_count`, `total_quotes_delivered`, `total_elapsed`, `should_exit`). `progress` there
is the current iteration's progress; the run's own progress (which never decreases) only moves
when `max_iterations` bounds the run.

`stop` finishes the current iteration: the sleep is cut short, the quote is still delivered, and
the run completes with `{total_iterations, total_quotes_delivered, total_elapsed}`. `cancel`
aborts at once. The sleep durations and quotes are drawn from a generator seeded by the run ID and
iteration, so a run re-executed after a crash continues the same sequence from its saved state.
"""

from __future__ import annotations

import asyncio
import random
from typing import Annotated, Any

from pydantic import BaseModel, Field, model_validator

from tidings.events import EventType
from tidings.sdk import Run, workflow

__all__ = ["QUOTES", "MontyInput", "monty"]

QUOTES = (
    "Nobody expects the Spanish Inquisition!",
    "It's just a flesh wound.",
    "We are the Knights who say... Ni!",
    "Your mother was a hamster and your father smelt of elderberries!",
    "This parrot is no more! It has ceased to be!",
    "And now for something completely different.",
    "What is the airspeed velocity of an unladen swallow?",
    "Always look on the bright side of life.",
    "He's not the Messiah, he's a very naughty boy!",
    "I fart in your general direction!",
    "Bring out your dead!",
    "Tis but a scratch.",
    "Strange women lying in ponds distributing swords is no basis for a system of government.",
    "I'm not dead yet!",
    "Run away! Run away!",
    "My hovercraft is full of eels.",
    "Help! Help! I'm being repressed!",
    "We want... a shrubbery!",
    "Ni! Ni! Ni!",
    "Spam, spam, spam, spam, lovely spam! Wonderful spam!",
    "I didn't vote for you.",
    "None shall pass.",
    "I'd like to have an argument, please.",
    "Nudge nudge, wink wink, say no more!",
)


class MontyInput(BaseModel):
    min_sleep_s: float = Field(5.0, gt=0, le=3_600, description="Shortest sleep per iteration.")
    max_sleep_s: float = Field(30.0, gt=0, le=3_600, description="Longest sleep per iteration.")
    # What the schema can say is said there (the gateway checks it); min <= max is checked here.
    quotes: list[Annotated[str, Field(min_length=1, max_length=1_000, pattern=r"\S")]] | None = (
        Field(
            None,
            min_length=1,
            max_length=1_000,
            description="Your own quotes instead of the classics.",
        )
    )
    max_iterations: int | None = Field(None, ge=1, description="Stop after this many iterations.")
    progress_interval_s: float = Field(0.5, ge=0.05, le=60, description="Progress event interval.")

    @model_validator(mode="after")
    def _bounds(self) -> MontyInput:
        if self.min_sleep_s > self.max_sleep_s:
            raise ValueError("min_sleep_s must not exceed max_sleep_s")
        if self.quotes is not None:
            cleaned = [q.strip() for q in self.quotes]
            if any(not q or len(q) > 1_000 for q in cleaned):
                raise ValueError("each quote must have 1 to 1000 characters")
            self.quotes = cleaned
        return self


def _fields(state: _StateView, iteration: int, progress: float, elapsed: float) -> dict[str, Any]:
    """Event data: the seed's trace-view names plus its query names."""
    return {
        "iteration": iteration,
        "progress": progress,
        "status": state["status"],
        "quotes_delivered": state["total_quotes_delivered"],
        "current_quote": state["current_quote"],
        "elapsed": round(elapsed, 3),
        "iteration_count": state["iteration_count"],
        "total_quotes_delivered": state["total_quotes_delivered"],
        "total_elapsed": round(elapsed, 3),
        "should_exit": state["should_exit"],
    }


@workflow(
    "monty",
    Input=MontyInput,
    description="Endless loop: sleep a random while, deliver a Monty Python quote; stop to end.",
)
async def monty(run: Run, input: MontyInput) -> dict[str, Any]:
    quotes = input.quotes or list(QUOTES)
    defaults: dict[str, Any] = {
        "iteration_count": 0,
        "total_quotes_delivered": 0,
        "current_quote": None,
        "total_elapsed": 0.0,
        "status": "starting",
        "progress": 0,
        "should_exit": False,
    }
    await run.save_state(**{k: run.state.get(k, v) for k, v in defaults.items()})
    loop = asyncio.get_running_loop()
    state = _StateView(run)

    while not run.stop_requested:
        n = state["iteration_count"] + 1
        if state["status"] == f"iteration_{n - 1}_sleeping":
            n -= 1  # re-executed mid-iteration: that iteration's quote is still owed
        elif input.max_iterations is not None and n > input.max_iterations:
            break
        rng = random.Random(f"{run.run_id}:{n}")
        duration = rng.uniform(input.min_sleep_s, input.max_sleep_s)
        base = float(state["total_elapsed"])
        await run.save_state(iteration_count=n, status=f"iteration_{n}_sleeping", progress=0)
        await run.emit(
            EventType.ITERATION_STARTED,
            f"Iteration {n}: Activity sleeping for {duration:.1f} seconds...",
            task="monty",
            data={**_fields(state, n, 0, base), "sleep_s": round(duration, 3)},
        )

        started = loop.time()
        while (slept := loop.time() - started) < duration and not run.stop_requested:
            await run.sleep(min(input.progress_interval_s, duration - slept))
            slept = min(loop.time() - started, duration)
            pct = round(100 * slept / duration) if duration else 100
            await run.save_state(
                progress=pct, total_elapsed=round(base + slept, 3), should_exit=run.stop_requested
            )
            await run.emit(
                EventType.TASK_PROGRESS,
                f"Iteration {n}: Progress {pct}%",
                task="monty",
                data=_fields(state, n, pct, base + slept),
            )

        await run.checkpoint()
        quote = rng.choice(quotes)
        elapsed = base + min(loop.time() - started, duration)
        await run.save_state(
            current_quote=quote,
            total_quotes_delivered=state["total_quotes_delivered"] + 1,
            total_elapsed=round(elapsed, 3),
            status=f"iteration_{n}_complete",
            progress=100,
            should_exit=run.stop_requested,
        )
        await run.emit(
            EventType.ITERATION_COMPLETED,
            f'Iteration {n}: "{quote}"',
            task="monty",
            progress=_overall(n, input.max_iterations),
            data=_fields(state, n, 100, elapsed),
        )

    await run.save_state(status="completed", should_exit=True)
    return {
        "total_iterations": state["iteration_count"],
        "total_quotes_delivered": state["total_quotes_delivered"],
        "total_elapsed": state["total_elapsed"],
    }


class _StateView:
    """Reads through to `run.state` each time, whatever object the engine keeps it in."""

    def __init__(self, run: Run) -> None:
        self._run = run

    def __getitem__(self, key: str) -> Any:
        return self._run.state[key]


def _overall(iteration: int, max_iterations: int | None) -> float | None:
    if max_iterations is None:
        return None
    return min(100.0, 100 * iteration / max_iterations)
