"""`research`: plan questions, research them in parallel across the pool, synthesize a report.

The progress bar follows the flow users expect from a research assistant: planning fills 0-20 %,
the research iterations share 20-90 % evenly, synthesis takes the last 10 %. Each iteration after
the first asks the model for follow-up questions drawn from the findings so far, so `depth`
deepens the research rather than repeating it. Questions the model did not produce (a terse
model, a malformed list) are filled from templates so `breadth` is always honoured.

Findings are published as `task_progress` events with data `{"finding", "question", "model",
"simulated"}` and the message `Found: …`, as the seed's event log shows them.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, Field

from shared.events import EventType
from shared.workflow import Run, TaskContext, activity, workflow

from ._runtime import model_info

__all__ = ["ResearchInput", "parse_questions", "research", "research_question"]

_PLAN_END = 20.0
_RESEARCH_END = 90.0
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


def parse_questions(text: str, count: int, topic: str, *, offset: int = 0) -> list[str]:
    """The model's numbered or bulleted list, deduplicated, padded from templates to `count`."""
    found: list[str] = []
    for line in text.splitlines():
        match = _LIST_ITEM.match(line)
        question = match.group(1) if match else ""
        if question and question.lower() not in {q.lower() for q in found}:
            found.append(question[:300])
    i = offset
    while len(found) < count:
        candidate = _FALLBACK_QUESTIONS[i % len(_FALLBACK_QUESTIONS)].format(t=topic)
        if i >= len(_FALLBACK_QUESTIONS):
            candidate = f"{candidate} (angle {i // len(_FALLBACK_QUESTIONS) + 1})"
        if candidate not in found:
            found.append(candidate)
        i += 1
    return found[:count]


def _first_sentences(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text.rfind(". ", 0, limit)
    return text[: cut + 1] if cut > 40 else text[:limit].rstrip() + "…"


@activity("research_question")
async def research_question(
    ctx: TaskContext, topic: str, question: str, iteration: int = 1
) -> dict[str, Any]:
    """Research one question: stream the model's answer, publish the finding."""
    await ctx.progress(0.05, f"Researching: {question}")
    prompt = (
        f"Topic: {topic}\n"
        f"Research this question and answer with concrete facts and figures: {question}"
    )
    answer = await ctx.complete(
        prompt, system="You are a careful research assistant.", max_tokens=220
    )
    finding = _first_sentences(answer)
    info = model_info(ctx)
    await ctx.progress(
        1.0, f"Found: {finding}", finding=finding, question=question, iteration=iteration, **info
    )
    return {"question": question, "finding": finding, "answer": answer, "iteration": iteration}


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
            f"List {input.breadth} research questions that together cover the topic, "
            "one per line, numbered."
        )
        text = "".join([d async for d in run.stream_llm(prompt, task="plan", max_tokens=300)])
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
            run.task("research_question", topic, q, n, name=f"research {n}.{i + 1}")
            for i, q in enumerate(questions)
        ]
        results: list[dict[str, Any]] = await run.parallel(tasks)
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
        parts = [d async for d in run.stream_llm(prompt, task="synthesize", max_tokens=400)]
        return "".join(parts).strip()

    summary = await run.step("synthesize", synthesize)
    await run.progress(100, "Report ready")
    return {
        "topic": topic,
        "findings": [
            {"question": f["question"], "finding": f["finding"], "iteration": f["iteration"]}
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
    text = "".join([d async for d in run.stream_llm(prompt, task="follow_up", max_tokens=300)])
    return parse_questions(text, breadth, topic, offset=len(findings))
