"""The language-model interface workflows stream from, and its two providers.

`make_llm(settings)` picks one by `settings.llm_provider`:

- `simulated` (default, offline): a deterministic model. The same prompt always produces the same
  text (the generator is seeded from a hash of the prompt), built from the prompt's own words so
  replies stay on topic, paced like a real model (mean `llm_token_delay_ms` between tokens with
  jitter, a longer wait before the first). Its `name` is `simulated` and `simulated` is True, so
  whatever shows its output can say so. A prompt that asks for "N questions" gets a numbered list.
- `openai`: any OpenAI-compatible `/chat/completions` endpoint (OpenAI, Ollama, vLLM, llama.cpp)
  with `stream: true`; the SSE body is parsed with `tidings.sse.SSEParser` and each
  `choices[0].delta.content` is yielded. Transport and protocol failures become `LLMError`.
  Cancelling the consumer closes the HTTP response (the `async with` blocks unwind), so a
  cancelled run stops the server-side generation too.

A client is made per call rather than pooled: a completion takes seconds, a connection set-up
milliseconds, and a per-call client has no event-loop affinity to get wrong in worker processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

import httpx

from tidings.errors import TidingsError
from tidings.settings import Settings
from tidings.sse import SSEParser

__all__ = ["LLM", "LLMError", "OpenAICompatible", "SimulatedLLM", "make_llm"]

logger = logging.getLogger(__name__)

_DEFAULT_OPENAI_URL = "https://api.openai.com/v1"


class LLMError(TidingsError):
    """The model endpoint failed: unreachable, an HTTP error, or a malformed stream."""

    code = "llm_error"
    status = 502


@runtime_checkable
class LLM(Protocol):
    name: str
    simulated: bool

    def stream(
        self, prompt: str, *, system: str | None = None, max_tokens: int = 400
    ) -> AsyncIterator[str]:
        """Yield the completion of `prompt` as text deltas, as soon as each is available."""
        ...


def make_llm(settings: Settings) -> LLM:
    if settings.llm_provider == "openai":
        return OpenAICompatible(
            base_url=settings.llm_base_url or _DEFAULT_OPENAI_URL,
            model=settings.llm_model,
            api_key=settings.llm_api_key,
        )
    if settings.llm_provider == "simulated":
        return SimulatedLLM(token_delay_ms=settings.llm_token_delay_ms)
    raise ValueError(f"unknown llm_provider {settings.llm_provider!r}")


# --- simulated -----------------------------------------------------------------------------------

_STOPWORDS_TEXT = """
    a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers him his how i if in into is it its itself just
    list me more most my no nor not now of off on once only or other our out over own please
    same she should so some such than that the their them then there these they this those
    through to too under until up very was we were what when where which while who whom why will
    with would you your yours give write answer reply short brief one two three four five six
    seven eight nine ten using based following question questions research topic findings
    summary summarize summarise report explain tell make new per each into given affect affects
    change changes help helps use used uses like get gets know want need needs look looks way
    together cover covers line lines numbered concise concrete facts figures careful deeper
    found far synthesizing synthesize follow-up goes go assistant user conversation hello hi
    thanks thank okay yes sure really much many something anything describe say said talk
    compare versus poem
"""
_STOPWORDS = frozenset(_STOPWORDS_TEXT.split())

# Angles any subject has: what a question or a paragraph can be about when the prompt says little.
_ASPECTS = (
    "costs",
    "safety",
    "regulation",
    "adoption",
    "the evidence base",
    "day-to-day practice",
    "access and equity",
    "data quality",
    "the workforce",
    "long-term outcomes",
)

_QUESTION_FORMS = (
    "What is the current state of {t}?",
    "How does {t} affect {x}?",
    "What measurable outcomes has {t} produced so far?",
    "Which risks and limitations of {t} matter most for {x}?",
    "Who are the main actors shaping {t}, and what are they betting on?",
    "What evidence compares {t} with conventional approaches to {x}?",
    "How much does {t} cost, and who bears that cost?",
    "What will {t} look like in five years?",
    "Which open problems block wider adoption of {t}?",
    "How do regulation and policy constrain {t}?",
    "What do practitioners report about {t} in day-to-day work?",
    "Where has {t} failed, and what was learned?",
    "How does {x} change the economics of {t}?",
    "What data does {t} depend on, and how reliable is it?",
    "Which communities benefit least from {t}?",
    "What would change the consensus on {t} and {x}?",
)

_SENTENCE_FORMS = (
    "{T} is increasingly shaped by {x}, and most recent work treats the two together.",
    "Studies of {t} report gains of {n}% on measures tied to {x}.",
    "The strongest evidence on {t} comes from deployments where {x} was measured before and after.",
    "Critics point out that {t} depends heavily on {x}, which is uneven across settings.",
    "In practice, {t} changes who does the work more than how much work there is.",
    "Costs associated with {t} fell by roughly {n}% over the last few years, largely through {x}.",
    "The open question is whether gains in {x} hold up outside the pilots that made {t} look good.",
    "Teams working on {t} tend to underestimate the effort needed for {x}.",
    "Compared with older approaches, {t} is faster but harder to audit.",
    "Regulators increasingly ask how {t} handles {x}, and the answers are still forming.",
    "About {n} in 100 organisations surveyed report some use of {t}, often alongside {x}.",
    "The most cited setback for {t} came from ignoring {x}.",
    "Taken together, the findings on {t} and {x} point to steady rather than sudden change.",
    "Where {x} is weak, the benefits of {t} shrink considerably.",
    "Early results on {x} are promising, but sample sizes remain small.",
)

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'+-]*")
_ASK_QUESTIONS = re.compile(r"\b(\d{1,2})\s+(?:[\w-]+\s+){0,2}questions\b", re.IGNORECASE)
_TOPIC_LINE = re.compile(r"^\s*topic\s*:\s*(.+)$", re.IGNORECASE | re.MULTILINE)


def _keywords(text: str) -> list[str]:
    """Content words by frequency (first appearance breaks ties); acronyms keep their case."""
    counts: dict[str, int] = {}
    for word in _WORD.findall(text):
        low = word.lower().strip("'-")
        if word.isupper() and 2 <= len(word) <= 6:
            key = word  # AI, GDPR
        elif len(low) >= 4 and low not in _STOPWORDS and not low.isdigit():
            key = low
        else:
            continue
        counts[key] = counts.get(key, 0) + 1
    order = {w: i for i, w in enumerate(counts)}
    return sorted(counts, key=lambda w: (-counts[w], order[w]))


def _subject(prompt: str) -> tuple[str, list[str]]:
    """(the prompt's subject, other terms worth mentioning)."""
    match = _TOPIC_LINE.search(prompt)
    if match:
        topic = match.group(1).strip().rstrip(".")[:120]
        rest = prompt[: match.start()] + prompt[match.end() :]
        topic_words = {w.lower() for w in _WORD.findall(topic)}
        terms = [w for w in _keywords(rest) if w.lower() not in topic_words]
        return topic, terms[:6]
    words = _keywords(prompt)
    if not words:
        return "this", []
    return " and ".join(words[:2]), words[2:8]


def _tokens(text: str, rng: random.Random) -> list[str]:
    """Split like a subword tokenizer would: words with their leading space, long words in two."""
    out: list[str] = []
    for line_no, line in enumerate(text.split("\n")):
        if line_no:
            out.append("\n")
        for i, word in enumerate(line.split(" ")):
            piece = word if i == 0 else " " + word
            if len(word) > 8 and rng.random() < 0.5:
                cut = len(piece) - len(word) + rng.randint(3, len(word) - 3)
                out.extend((piece[:cut], piece[cut:]))
            elif piece:
                out.append(piece)
    return out


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
        rng = self._rng(prompt, system)
        topic, terms = _subject(prompt)
        asked = _ASK_QUESTIONS.search(prompt)
        if asked:
            return self._questions(rng, int(asked.group(1)), topic, terms)
        return self._prose(rng, topic, terms)

    async def stream(
        self, prompt: str, *, system: str | None = None, max_tokens: int = 400
    ) -> AsyncIterator[str]:
        rng = self._rng(prompt, system)
        pace = random.Random(rng.random())
        tokens = _tokens(self.compose(prompt, system=system), rng)[: max(1, max_tokens)]
        mean = self.token_delay_ms / 1000
        # A real model takes a moment before the first token (prompt processing).
        await self._sleep(mean * pace.uniform(2.0, 5.0))
        for token in tokens:
            yield token
            # Jittered gaps around the mean, never negative, occasionally a longer stall.
            gap = max(0.0, pace.gauss(mean, mean * 0.35))
            if pace.random() < 0.03:
                gap += mean * 4
            await self._sleep(gap)

    @staticmethod
    def _rng(prompt: str, system: str | None) -> random.Random:
        digest = hashlib.sha256(f"{system or ''}\x00{prompt}".encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "big"))

    @staticmethod
    def _angle(rng: random.Random, terms: list[str]) -> str:
        """A term from the prompt about two times in three, else a generic aspect."""
        if terms and rng.random() < 0.65:
            return rng.choice(terms)
        return rng.choice(_ASPECTS)

    def _questions(self, rng: random.Random, n: int, topic: str, terms: list[str]) -> str:
        forms = list(_QUESTION_FORMS)
        rng.shuffle(forms)
        lines = []
        for i in range(max(1, min(n, 20))):
            question = forms[i % len(forms)].format(t=topic, x=self._angle(rng, terms))
            lines.append(f"{i + 1}. {question}")
        return "\n".join(lines)

    def _prose(self, rng: random.Random, topic: str, terms: list[str]) -> str:
        forms = list(_SENTENCE_FORMS)
        rng.shuffle(forms)
        sentences = []
        for form in forms[: rng.randint(3, 6)]:
            x = self._angle(rng, terms)
            t = topic
            sentences.append(form.format(t=t, T=t[:1].upper() + t[1:], x=x, n=rng.randint(12, 60)))
        return " ".join(sentences)


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
        timeout: httpx.Timeout | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = model
        self._api_key = api_key
        self._timeout = timeout or httpx.Timeout(120.0, connect=10.0)

    async def stream(
        self, prompt: str, *, system: str | None = None, max_tokens: int = 400
    ) -> AsyncIterator[str]:
        messages: list[dict[str, str]] = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": prompt})
        body = {"model": self.model, "messages": messages, "stream": True, "max_tokens": max_tokens}
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
                    raise LLMError(
                        f"model endpoint {url} answered {response.status_code}: {detail}"
                    )
                parser = SSEParser()
                async for chunk in response.aiter_bytes():
                    for message in parser.feed(chunk):
                        if message.data.strip() == "[DONE]":
                            return
                        delta = _delta(message.data)
                        if delta:
                            yield delta
        except httpx.HTTPError as exc:
            raise LLMError(f"model endpoint {url} failed: {exc!r}") from exc


def _delta(data: str) -> str:
    try:
        chunk: Any = json.loads(data)
    except ValueError as exc:
        raise LLMError(f"model stream sent invalid JSON: {data[:200]!r}") from exc
    if not isinstance(chunk, dict):
        raise LLMError(f"model stream sent an unexpected chunk: {data[:200]!r}")
    if "error" in chunk:
        raise LLMError(f"model stream reported an error: {chunk['error']!r}"[:400])
    choices = chunk.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return ""  # e.g. a final usage-only chunk
    delta = choices[0].get("delta") or {}
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else ""
