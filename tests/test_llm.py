"""The LLM interface: the simulated model's determinism and pacing, and the OpenAI-compatible
client against a real HTTP server streaming `chat.completion.chunk` SSE on a local port."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tidings.services.worker.llm import LLM, LLMError, OpenAICompatible, SimulatedLLM, make_llm
from tidings.settings import Settings


async def _collect(llm: LLM, prompt: str, **kwargs: Any) -> list[str]:
    return [token async for token in llm.stream(prompt, **kwargs)]


class _Clock:
    """Records the pacing the simulated model asks for, without waiting for it."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


# --- simulated -----------------------------------------------------------------------------------


async def test_simulated_is_deterministic_per_prompt() -> None:
    llm = SimulatedLLM(token_delay_ms=0)
    prompt = "Topic: tidal energy\nExplain the main engineering challenges of tidal turbines."
    first = await _collect(llm, prompt)
    second = await _collect(SimulatedLLM(token_delay_ms=0), prompt)
    assert first == second
    assert len(first) > 10
    other = await _collect(llm, "Topic: honey bees\nExplain colony collapse disorder.")
    assert "".join(other) != "".join(first)


async def test_simulated_text_is_about_the_prompt() -> None:
    llm = SimulatedLLM(token_delay_ms=0)
    text = "".join(await _collect(llm, "Topic: tidal energy\nWhat limits tidal turbines?"))
    assert "tidal" in text.lower()
    assert llm.name == "simulated" and llm.simulated is True


async def test_simulated_answers_a_request_for_questions_with_a_numbered_list() -> None:
    llm = SimulatedLLM(token_delay_ms=0)
    text = "".join(await _collect(llm, "Topic: urban beekeeping\nList 4 research questions."))
    lines = text.splitlines()
    assert [line.split(".")[0] for line in lines] == ["1", "2", "3", "4"]
    assert all(line.endswith("?") for line in lines)


async def test_simulated_respects_max_tokens() -> None:
    llm = SimulatedLLM(token_delay_ms=0)
    assert len(await _collect(llm, "Topic: volcanoes\nDescribe them.", max_tokens=5)) == 5


async def test_simulated_pacing_has_a_first_token_wait_and_jittered_gaps() -> None:
    clock = _Clock()
    llm = SimulatedLLM(token_delay_ms=20, sleep=clock)
    tokens = await _collect(llm, "Topic: glaciers\nHow fast are glaciers retreating?")
    assert len(clock.delays) == len(tokens) + 1
    first, gaps = clock.delays[0], clock.delays[1:]
    assert 0.040 <= first <= 0.100  # 2-5x the mean: prompt processing
    assert all(gap >= 0 for gap in gaps)
    assert 0.015 <= statistics.median(gaps) <= 0.025
    assert statistics.pstdev(gaps) > 0.002  # jitter, not a metronome
    again = _Clock()
    await _collect(SimulatedLLM(token_delay_ms=20, sleep=again), "Topic: glaciers\nHow fast?")
    assert again.delays != clock.delays  # pacing follows the prompt too


async def test_simulated_streams_with_real_sleeps() -> None:
    llm = SimulatedLLM(token_delay_ms=1)
    tokens = await _collect(llm, "Topic: coral reefs\nWhy do reefs bleach?")
    assert "".join(tokens).strip()


def test_make_llm_selects_the_provider() -> None:
    simulated = make_llm(Settings(llm_token_delay_ms=3))
    assert isinstance(simulated, SimulatedLLM) and simulated.token_delay_ms == 3
    real = make_llm(
        Settings(
            llm_provider="openai",
            llm_base_url="http://127.0.0.1:1/v1/",
            llm_model="m",
            llm_api_key="k",
        )
    )
    assert isinstance(real, OpenAICompatible)
    assert (real.base_url, real.name, real.simulated) == ("http://127.0.0.1:1/v1", "m", False)


# --- OpenAI-compatible against a real server -----------------------------------------------------


@dataclass
class _Upstream:
    """A tiny OpenAI-compatible server: what it received and how it should answer."""

    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    mode: str = "ok"
    pieces: list[str] = field(default_factory=lambda: ["Hello", ", ", "wor", "ld", "!"])
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)


def _chunk(content: str | None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "test-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _app(up: _Upstream) -> Starlette:
    async def completions(request: Request) -> Response:
        up.requests.append(await request.json())
        up.headers.append(dict(request.headers))
        if up.mode == "status":
            return JSONResponse({"error": {"message": "model overloaded"}}, status_code=503)

        async def body() -> AsyncIterator[bytes]:
            try:
                yield b": keep-alive\n\n" + _chunk(None)  # role-only first chunk, as OpenAI sends
                if up.mode == "garbage":
                    yield b"data: {not json\n\n"
                    return
                if up.mode == "echo":
                    last = up.requests[-1]["messages"][-1]["content"]
                    for piece in ("ECHO:", last):
                        yield _chunk(piece)
                    yield b"data: [DONE]\n\n"
                    return
                if up.mode == "endless":
                    n = 0
                    while True:
                        n += 1
                        yield _chunk(f"t{n} ")
                        await asyncio.sleep(0.01)
                for piece in up.pieces:
                    # Split one event across two writes: the parser must reassemble it.
                    raw = _chunk(piece)
                    yield raw[:7]
                    yield raw[7:]
                yield _chunk(None, "stop")
                yield b"data: [DONE]\n\n"
            finally:
                up.disconnected.set()

        return StreamingResponse(body(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])


@asynccontextmanager
async def _serve(up: _Upstream) -> AsyncIterator[_Upstream]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(_app(up), log_level="warning", lifespan="off", ws="none")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:  # noqa: ASYNC110 (uvicorn exposes a flag, not an event)
            await asyncio.sleep(0.01)
        up.url = f"http://127.0.0.1:{port}/v1"
        yield up
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@pytest.fixture
async def upstream() -> AsyncIterator[_Upstream]:
    async with _serve(_Upstream()) as up:
        yield up


def _client(up: _Upstream, **kwargs: Any) -> OpenAICompatible:
    return OpenAICompatible(base_url=up.url, model="test-model", **kwargs)


async def test_openai_streams_deltas_and_sends_the_chat_request(upstream: _Upstream) -> None:
    llm = _client(upstream, api_key="sk-test")
    tokens = await _collect(llm, "Say hello", system="Be terse.", max_tokens=12)
    assert tokens == ["Hello", ", ", "wor", "ld", "!"]
    sent = upstream.requests[0]
    assert sent["stream"] is True and sent["model"] == "test-model" and sent["max_tokens"] == 12
    assert sent["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Say hello"},
    ]
    assert upstream.headers[0]["authorization"] == "Bearer sk-test"


async def test_openai_without_key_sends_no_authorization(upstream: _Upstream) -> None:
    await _collect(_client(upstream), "hi")
    assert "authorization" not in upstream.headers[0]
    assert upstream.requests[0]["messages"] == [{"role": "user", "content": "hi"}]


async def test_openai_error_status_is_an_llm_error(upstream: _Upstream) -> None:
    upstream.mode = "status"
    with pytest.raises(LLMError, match=r"503.*model overloaded"):
        await _collect(_client(upstream), "hi")


async def test_openai_malformed_chunk_is_an_llm_error(upstream: _Upstream) -> None:
    upstream.mode = "garbage"
    with pytest.raises(LLMError, match="invalid JSON"):
        await _collect(_client(upstream), "hi")


async def test_openai_unreachable_endpoint_is_an_llm_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connection refused
        llm = OpenAICompatible(base_url=f"http://127.0.0.1:{port}/v1", model="m")
        with pytest.raises(LLMError, match="failed"):
            await _collect(llm, "hi")


async def test_openai_cancelling_the_consumer_closes_the_http_stream(upstream: _Upstream) -> None:
    upstream.mode = "endless"
    got: list[str] = []
    started = asyncio.Event()

    async def consume() -> None:
        async for token in _client(upstream).stream("count forever"):
            got.append(token)
            if len(got) == 3:
                started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The server sees the client go away and stops generating.
    await asyncio.wait_for(upstream.disconnected.wait(), 10)
    assert got[:3] == ["t1 ", "t2 ", "t3 "]


async def test_openai_early_break_closes_the_http_stream(upstream: _Upstream) -> None:
    upstream.mode = "endless"
    stream = _client(upstream).stream("count forever")
    first = await anext(aiter(stream))
    assert first == "t1 "
    await stream.aclose()  # type: ignore[attr-defined]
    await asyncio.wait_for(upstream.disconnected.wait(), 10)
