"""Streaming a model's output into a run's log as coalesced `token` events.

Deltas are buffered and published about every `_COALESCE_S` (50 ms) as one `token` event with
data `{"text": <joined deltas>, "model": llm.name, "simulated": llm.simulated}`, plus a last flush
at the end: viewers see text arrive smoothly without an event per token, and every token says
which model wrote it, so a dashboard can label a simulated reply as such. Cancelling the consumer
(a `cancel` signal cancels the run's task) unwinds the model's generator, which closes its HTTP
response: the in-flight call is aborted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from tidings.events import EventType

from .llm import LLM
from .publisher import Publisher

__all__ = ["TokenBuffer", "stream_tokens"]

_COALESCE_S = 0.05


class TokenBuffer:
    """Text deltas buffered into one `token` event about every `_COALESCE_S`; a change of label
    (the data beside the text) publishes what was buffered under the old one first."""

    def __init__(
        self,
        publisher: Publisher,
        task: str | None,
        task_id: str | None,
        label: dict[str, Any] | None = None,
    ) -> None:
        self.publisher = publisher
        self.task = task
        self.task_id = task_id
        self.buffered: list[str] = []
        self.label: dict[str, Any] = label or {}
        self.last = asyncio.get_running_loop().time()

    async def add(self, text: str, label: dict[str, Any] | None = None) -> None:
        if label is not None and label != self.label:
            await self.flush()
            self.label = label
        self.buffered.append(text)
        if asyncio.get_running_loop().time() - self.last >= _COALESCE_S:
            await self.flush()

    async def flush(self) -> None:
        self.last = asyncio.get_running_loop().time()
        if not self.buffered:
            return
        text = "".join(self.buffered)
        self.buffered.clear()
        await self.publisher.send(
            EventType.TOKEN,
            task=self.task,
            task_id=self.task_id,
            data={"text": text, **self.label},
        )


async def stream_tokens(
    llm: LLM,
    publisher: Publisher,
    prompt: str,
    *,
    task: str | None,
    task_id: str | None = None,
    system: str | None = None,
    max_tokens: int = 400,
) -> AsyncIterator[str]:
    tokens = TokenBuffer(publisher, task, task_id, {"model": llm.name, "simulated": llm.simulated})
    async for delta in llm.stream(prompt, system=system, max_tokens=max_tokens):
        await tokens.add(delta)
        yield delta
    await tokens.flush()
