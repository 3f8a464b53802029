"""The model providers workflows stream from, both implementing `tidings.sdk.model.Model`.

`make_llm(settings)` picks one by `settings.llm_provider`:

- `simulated` (default, offline): a deterministic model (`simulated_text`). The same prompt always
  produces the same text, built from the prompt's own words, paced like a real model (mean
  `llm_token_delay_ms` between tokens with jitter, a longer wait before the first). Its `name` is
  `simulated` and `simulated` is True, so whatever shows its output can say so. It cannot reason,
  so in `chat` it chooses a tool by the tools' own `match` (the first tool whose `match` accepts
  the user's message is called), and after a tool it answers with the tool's text verbatim.
- `openai`: any OpenAI-compatible `/chat/completions` endpoint (OpenAI, Ollama, vLLM, llama.cpp)
  with `stream: true`, and tools sent as `tools` of type `function`. The SSE body is parsed with
  `tidings.sse.SSEParser`: each `choices[0].delta.content` is yielded as it comes, and the
  `delta.tool_calls` fragments are gathered by `index` (id, name, argument text concatenated) into
  `ToolCall`s yielded when the stream ends. Transport and protocol failures (HTTP errors, error
  chunks, invalid JSON, malformed tool-call deltas, no bytes for `llm_timeout_s`) become
  `ModelError`; arguments that are not a JSON object become a call with `error` set, which the
  tool loop reports back to the model. Cancelling the consumer closes the HTTP response (the
  `async with` blocks unwind), so a cancelled run stops the server-side generation too.

A client is made per call rather than pooled: a completion takes seconds, a connection set-up
milliseconds, and a per-call client has no event-loop affinity to get wrong in worker processes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import httpx

from tidings.sdk.model import Message, Model, ModelError, Tool, ToolCall
from tidings.settings import Settings
from tidings.sse import SSEParser

from . import simulated_text

__all__ = ["LLM", "LLMError", "OpenAICompatible", "SimulatedLLM", "make_llm"]

logger = logging.getLogger(__name__)

_DEFAULT_OPENAI_URL = "https://api.openai.com/v1"

# The engine's names for the SDK's: one protocol, one error class.
LLM = Model
LLMError = ModelError


def make_llm(settings: Settings) -> Model:
    if settings.llm_provider == "openai":
        return OpenAICompatible(
            base_url=settings.llm_base_url or _DEFAULT_OPENAI_URL,
            model=settings.llm_model,
            api_key=settings.llm_api_key,
            timeout=settings.llm_timeout_s,
        )
    if settings.llm_provider == "simulated":
        return SimulatedLLM(token_delay_ms=settings.llm_token_delay_ms)
    raise ValueError(f"unknown llm_provider {settings.llm_provider!r}")


# --- simulated -----------------------------------------------------------------------------------


class SimulatedLLM:
    """A deterministic stand-in model for offline use, demos and tests."""

    simulated = True

    def __init__(
        self,
        *,
        token_delay_ms: float = 18.0,
        name: str = "simulated",
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.name = name
        self.token_delay_ms = token_delay_ms
        self._sleep = sleep  # the pacing clock; replaceable to observe the pacing

    def compose(self, prompt: str, *, system: str | None = None) -> str:
        """The full text this model answers `prompt` with (what `stream` yields, joined)."""
        return simulated_text.compose(prompt, system)

    async def stream(
        self, prompt: str, *, system: str | None = None, max_tokens: int = 400
    ) -> AsyncIterator[str]:
        rng = simulated_text.rng_for(prompt, system)
        pace = random.Random(rng.random())
        tokens = simulated_text.tokens(self.compose(prompt, system=system), rng)
        mean = self.token_delay_ms / 1000
        # A real model takes a moment before the first token (prompt processing).
        await self._sleep(mean * pace.uniform(2.0, 5.0))
        for token in tokens[: max(1, max_tokens)]:
            yield token
            # Jittered gaps around the mean, never negative, occasionally a longer stall.
            gap = max(0.0, pace.gauss(mean, mean * 0.35))
            if pace.random() < 0.03:
                gap += mean * 4
            await self._sleep(gap)

    async def chat(
        self, messages: Sequence[Message], *, tools: Sequence[Tool] = (), max_tokens: int = 400
    ) -> AsyncIterator[str | ToolCall]:
        if not messages:
            raise ModelError("no messages to answer")
        last = messages[-1]
        if last.role == "tool":
            results: list[Message] = []
            for message in reversed(messages):
                if message.role != "tool":
                    break
                results.insert(0, message)
            yield "\n".join(
                f"That did not work: {m.content}" if m.error else m.content for m in results
            )
            return
        if last.role == "user":
            for tool in tools:
                arguments = tool.match(last.content) if tool.match else None
                if arguments is not None:
                    yield ToolCall(tool.name, arguments, id=f"call_{len(messages)}")
                    return
        system = "\n\n".join(m.content for m in messages if m.role == "system") or None
        earlier = [
            f"{m.role}: {m.content}"
            for m in messages[:-1]
            if m.role in ("user", "assistant") and not m.tool_calls
        ]
        if earlier:
            system = (system or "") + "\n\nConversation so far:\n" + "\n".join(earlier)
        async for token in self.stream(last.content, system=system, max_tokens=max_tokens):
            yield token


# --- OpenAI-compatible ---------------------------------------------------------------------------


class OpenAICompatible:
    """Streams `POST {base_url}/chat/completions` from any OpenAI-compatible server."""

    simulated = False

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 120.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = model
        self.timeout_s = timeout
        self._api_key = api_key
        # `timeout` bounds each wait: connecting, and every read of the reply (a stalled stream).
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))

    async def stream(
        self, prompt: str, *, system: str | None = None, max_tokens: int = 400
    ) -> AsyncIterator[str]:
        messages = [Message("system", system)] if system else []
        messages.append(Message("user", prompt))
        async for item in self.chat(messages, max_tokens=max_tokens):
            if isinstance(item, str):
                yield item

    async def chat(
        self, messages: Sequence[Message], *, tools: Sequence[Tool] = (), max_tokens: int = 400
    ) -> AsyncIterator[str | ToolCall]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [_wire(m) for m in messages],
            "stream": True,
            "max_tokens": max_tokens,
        }
        if tools:
            body["tools"] = [{"type": "function", "function": t.spec()} for t in tools]
        calls = _CallParts()
        async for data in self._events(body):
            chunk = _chunk(data)
            content, tool_deltas = _delta(chunk, data)
            if tool_deltas is not None:
                calls.feed(tool_deltas)
            if content:
                yield content
        for call in calls.finish():
            yield call

    async def _events(self, body: dict[str, Any]) -> AsyncIterator[str]:
        """The `data` of each SSE message of the reply, up to `[DONE]` or the end of the body."""
        headers = {"Accept": "text/event-stream"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        url = f"{self.base_url}/chat/completions"
        try:
            async with (
                httpx.AsyncClient(timeout=self._timeout) as client,
                client.stream("POST", url, json=body, headers=headers) as response,
            ):
                if response.status_code >= 400:
                    detail = (await response.aread()).decode(errors="replace")[:300]
                    raise ModelError(
                        f"model endpoint {url} answered {response.status_code}: {detail}"
                    )
                kind = response.headers.get("content-type", "")
                if "json" in kind:  # an error object, or a server that ignored `stream`
                    detail = (await response.aread()).decode(errors="replace")[:300]
                    raise ModelError(f"model endpoint {url} did not stream ({kind}): {detail}")
                parser = SSEParser()
                async for raw in response.aiter_bytes():
                    for message in parser.feed(raw):
                        if message.event == "error":
                            raise ModelError(
                                f"model stream reported an error: {message.data}"[:400]
                            )
                        if message.data.strip() == "[DONE]":
                            return
                        if message.data.strip():
                            yield message.data
        except httpx.TimeoutException as exc:
            what = "connect" if isinstance(exc, httpx.ConnectTimeout) else "send the next bytes"
            raise ModelError(
                f"model endpoint {url} did not {what} within {self.timeout_s:g} s"
            ) from exc
        except httpx.HTTPError as exc:
            raise ModelError(f"model endpoint {url} failed: {exc!r}") from exc


def _wire(message: Message) -> dict[str, Any]:
    """A message as `/chat/completions` takes it."""
    if message.role == "tool":
        content = f"Error: {message.content}" if message.error else message.content
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": content}
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["content"] = message.content or None
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
            }
            for call in message.tool_calls
        ]
    return out


def _chunk(data: str) -> dict[str, Any]:
    try:
        chunk: Any = json.loads(data)
    except ValueError as exc:
        raise ModelError(f"model stream sent invalid JSON: {data[:200]!r}") from exc
    if not isinstance(chunk, dict):
        raise ModelError(f"model stream sent an unexpected chunk: {data[:200]!r}")
    if "error" in chunk:
        raise ModelError(f"model stream reported an error: {chunk['error']!r}"[:400])
    return chunk


def _delta(chunk: dict[str, Any], data: str) -> tuple[str, Any]:
    """(text, the raw `tool_calls` list or None) of one chunk's first choice."""
    choices = chunk.get("choices") or []
    if not isinstance(choices, list):
        raise ModelError(f"model stream sent an unexpected chunk: {data[:200]!r}")
    if not choices or not isinstance(choices[0], dict):
        return "", None  # e.g. a final usage-only chunk
    delta = choices[0].get("delta") or {}
    if not isinstance(delta, dict):
        raise ModelError(f"model stream sent an unexpected chunk: {data[:200]!r}")
    content = delta.get("content")
    return (content if isinstance(content, str) else ""), delta.get("tool_calls")


class _CallParts:
    """Tool calls gathered from streamed fragments: by `index`, the id and name taken when they
    come, the argument text concatenated. Servers that omit `index` (one call per chunk, or the
    same call continued) are followed by id."""

    def __init__(self) -> None:
        self.parts: dict[int, dict[str, str]] = {}
        self.last: int | None = None

    def feed(self, deltas: Any) -> None:
        if not isinstance(deltas, list):
            raise ModelError(f"malformed tool call delta: {_short(deltas)}")
        for delta in deltas:
            if not isinstance(delta, dict):
                raise ModelError(f"malformed tool call delta: {_short(delta)}")
            index = delta.get("index")
            if index is None:
                index = self._index_of(delta.get("id"))
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 128:
                raise ModelError(f"malformed tool call delta (index): {_short(delta)}")
            part = self.parts.setdefault(index, {"id": "", "name": "", "arguments": ""})
            self.last = index
            function = delta.get("function") or {}
            if not isinstance(function, dict):
                raise ModelError(f"malformed tool call delta: {_short(delta)}")
            call_id, name = delta.get("id"), function.get("name")
            arguments = function.get("arguments")
            if not all(v is None or isinstance(v, str) for v in (call_id, name, arguments)):
                raise ModelError(f"malformed tool call delta: {_short(delta)}")
            part["id"] = part["id"] or call_id or ""
            if name and name != part["name"]:  # some servers repeat the whole name
                part["name"] += name
            part["arguments"] += arguments or ""

    def _index_of(self, call_id: Any) -> int:
        if self.last is None:
            return 0
        if call_id and call_id != self.parts[self.last]["id"]:
            return len(self.parts)
        return self.last

    def finish(self) -> list[ToolCall]:
        calls = []
        for index in sorted(self.parts):
            part = self.parts[index]
            if not part["name"]:
                raise ModelError(f"the model sent a tool call without a name: {_short(part)}")
            call_id = part["id"] or f"call_{index}"
            raw = part["arguments"].strip() or "{}"
            try:
                arguments = json.loads(raw)
            except ValueError:
                calls.append(ToolCall(part["name"], {}, call_id, f"not valid JSON: {raw[:200]!r}"))
                continue
            if not isinstance(arguments, dict):
                calls.append(ToolCall(part["name"], {}, call_id, f"not a JSON object: {raw[:200]}"))
                continue
            calls.append(ToolCall(part["name"], arguments, call_id))
        return calls


def _short(value: Any) -> str:
    return json.dumps(value, default=repr)[:200]
