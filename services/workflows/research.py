"""`research`: plan questions, research them in parallel across the pool, synthesize a report.

The shape is that of deep research: a short plan, then per-question work that dominates the run,
then a moderate synthesis. Each question (`research_question`, one job on any worker) drafts 2-3
search queries, takes notes on each (a streamed model call per query) and distils one finding,
with a `task_progress` event between the steps. Planning asks for a short numbered list and
synthesis for a report of moderate length, so more workers shorten the run nearly in proportion.

The progress bar follows the flow users expect from a research assistant: planning fills 0-20 %,
the research iterations share 20-90 % evenly and advance as their questions complete
(`run.parallel(..., progress=span)`), synthesis takes the last 10 %. Each iteration after the
first asks the model for follow-up questions drawn from the findings so far, so `depth` deepens
the research rather than repeating it. Questions the model did not produce (a terse model, a
malformed list) are filled from templates so `breadth` is always honoured.

Findings are published as `task_progress` events with data `{"finding", "question", "model",
"simulated"}` and the message `Found: …`, as the seed's event log shows them.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, Field

from tidings.events import EventType
from tidings.sdk import Run, TaskContext, activity, workflow

from ._runtime import model_info

__all__ = ["ResearchInput", "parse_queries", "parse_questions", "research", "research_question"]

_PLAN_END = 20.0
_RESEARCH_END = 90.0
_SYSTEM = "You are a careful research assistant."
_QUERIES = 3  # asked for; 2 or 3 are used
_PLAN_TOKENS = 120
_QUERY_TOKENS = 80
_NOTE_TOKENS = 100
_FINDING_TOKENS = 70
_REPORT_TOKENS = 250
_LIST_ITEM = re.compile(r"^\s*(?:\d{1,2}[.)]|[-*•])\s*(.+?)\s*$")
_FALLBACK_QUESTIONS = (
    "What is the current state of {t}?",
    "What evidence exists on the impact of {t}?",
    "What are the main risks and limitations of {t}?",
    "Who are the key actors in {t}?",
    "How is {t} likely to change in the next five years?",
    "What does {t} cost, and who pays?",
    "Which open problems block progress in {t}?",
    "How do regulation and policy shape {t}?",
)


class ResearchInput(BaseModel):
    topic: str = Field(min_length=1, max_length=500, description="What to research.")
    breadth: int = Field(3, ge=1, le=16, description="Questions researched in parallel per round.")
    depth: int = Field(1, ge=1, le=5, description="Rounds of research; later rounds follow up.")


def _list_items(text: str) -> list[str]:
    """The items of a numbered or bulleted list, deduplicated (case-insensitively)."""
    found: list[str] = []
    for line in text.splitlines():
        match = _LIST_ITEM.match(line)
        item = match.group(1) if match else ""
        if item and item.lower() not in {q.lower() for q in found}:
            found.append(item[:300])
    return found


def parse_questions(text: str, count: int, topic: str, *, offset: int = 0) -> list[str]:
    """The model's numbered or bulleted list, deduplicated, padded from templates to `count`."""
    found = _list_items(text)
    i = offset
    while len(found) < count:
        candidate = _FALLBACK_QUESTIONS[i % len(_FALLBACK_QUESTIONS)].format(t=topic)
        if i >= len(_FALLBACK_QUESTIONS):
            candidate = f"{candidate} (angle {i // len(_FALLBACK_QUESTIONS) + 1})"
        if candidate not in found:
            found.append(candidate)
        i += 1
    return found[:count]


def parse_queries(text: str, question: str, topic: str) -> list[str]:
    """Two or three search queries from the model's list; the question itself fills in."""
    queries = _list_items(text)[:_QUERIES]
    for extra in (question, f"{topic}: {question}"):
        if len(queries) < 2 and extra not in queries:
            queries.append(extra)
    return queries


def _plan_tokens(breadth: int) -> int:
    """A short list, but room for every question: a cut-off last line would be a broken one."""
    return max(_PLAN_TOKENS, 20 * breadth)


def _first_sentences(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text.rfind(". ", 0, limit)
    return text[: cut + 1] if cut > 40 else text[:limit].rstrip() + "…"


@activity
async def research_question(
    ctx: TaskContext, topic: str, question: str, iteration: int = 1
) -> dict[str, Any]:
    """Research one question: draft search queries, take notes on each, distil a finding."""
    await ctx.progress(0.0, f"Researching: {question}", question=question)
    drafted = await ctx.complete(
        f"Topic: {topic}\nQuestion: {question}\n"
        f"Give {_QUERIES} short questions to look up for it, numbered, one per line.",
        system=_SYSTEM,
        max_tokens=_QUERY_TOKENS,
    )
    queries = parse_queries(drafted, question, topic)
    await ctx.progress(0.2, "Searching: " + "; ".join(queries), queries=queries)
    notes: list[dict[str, str]] = []
    for i, query in enumerate(queries, start=1):
        text = await ctx.complete(
            f"Topic: {topic}\nAnswer with concrete facts and figures: {query}",
            system=_SYSTEM,
            max_tokens=_NOTE_TOKENS,
        )
        notes.append({"query": query, "notes": text.strip()})
        await ctx.progress(0.2 + 0.6 * i / len(queries), f"Notes taken ({i}/{len(queries)})")
    digest = "\n".join(f"- {n['query']}: {_first_sentences(n['notes'], 400)}" for n in notes)
    distilled = await ctx.complete(
        f"Topic: {topic}\nQuestion: {question}\nNotes:\n{digest}\n"
        "Give the answer these notes support, in one or two short sentences.",
        system=_SYSTEM,
        max_tokens=_FINDING_TOKENS,
    )
    finding = _first_sentences(distilled)
    info = model_info(ctx)
    await ctx.progress(
        1.0, f"Found: {finding}", finding=finding, question=question, iteration=iteration, **info
    )
    return {
        "question": question,
        "finding": finding,
        "queries": queries,
        "notes": notes,
        "iteration": iteration,
    }


@workflow(
    "research",
    Input=ResearchInput,
    description="Plan research questions on a topic, research them in parallel, synthesize.",
)
async def research(run: Run, input: ResearchInput) -> dict[str, Any]:
    info = model_info(run)
    topic = input.topic.strip()
    await run.progress(0, "Planning research approach...")

    async def plan() -> list[str]:
        prompt = (
            f"Topic: {topic}\n"
            f"List {input.breadth} short research questions that together cover the topic, "
            "one per line, numbered."
        )
        deltas = run.stream_llm(prompt, task="plan", max_tokens=_plan_tokens(input.breadth))
        text = "".join([d async for d in deltas])
        return parse_questions(text, input.breadth, topic)

    questions = await run.step("plan", plan)
    await run.progress(_PLAN_END, "Plan complete: will research " + "; ".join(questions))

    findings: list[dict[str, Any]] = []
    span = (_RESEARCH_END - _PLAN_END) / input.depth
    for n in range(1, input.depth + 1):
        start = _PLAN_END + span * (n - 1)
        await run.emit(
            EventType.ITERATION_STARTED,
            f"Iteration {n}/{input.depth}: researching {len(questions)} questions",
            progress=start,
            data={"iteration": n, "depth": input.depth, "questions": questions, **info},
        )
        tasks = [
            run.task(research_question, topic, q, n).options(name=f"research {n}.{i + 1}")
            for i, q in enumerate(questions)
        ]
        results = await run.parallel(tasks, progress=(start, start + span))
        findings.extend(results)
        await run.emit(
            EventType.ITERATION_COMPLETED,
            f"Completed {n} of {input.depth} iterations ({len(findings)} findings)",
            progress=start + span,
            data={"iteration": n, "findings": [r["finding"] for r in results], **info},
        )
        if n < input.depth:
            questions = await run.step("follow_up", _follow_up, run, topic, findings, input.breadth)

    await run.progress(_RESEARCH_END, "Synthesizing findings...")

    async def synthesize() -> str:
        notes = "\n".join(f"- {f['question']}: {f['finding']}" for f in findings)
        prompt = f"Topic: {topic}\nWrite a concise report synthesizing these findings:\n{notes}"
        deltas = run.stream_llm(prompt, task="synthesize", max_tokens=_REPORT_TOKENS)
        parts = [d async for d in deltas]
        return "".join(parts).strip()

    summary = await run.step("synthesize", synthesize)
    await run.progress(100, "Report ready")
    return {
        "topic": topic,
        "findings": [
            {
                "question": f["question"],
                "finding": f["finding"],
                "queries": f.get("queries", []),
                "iteration": f["iteration"],
            }
            for f in findings
        ],
        "summary": summary,
        **info,
    }


async def _follow_up(
    run: Run, topic: str, findings: list[dict[str, Any]], breadth: int
) -> list[str]:
    known = "\n".join(f"- {f['finding']}" for f in findings[-breadth:])
    prompt = (
        f"Topic: {topic}\nWhat we found so far:\n{known}\n"
        f"List {breadth} follow-up questions that go deeper, one per line, numbered."
    )
    deltas = run.stream_llm(prompt, task="follow_up", max_tokens=_plan_tokens(breadth))
    text = "".join([d async for d in deltas])
    return parse_questions(text, breadth, topic, offset=len(findings))
