"""A scripted OpenAI-compatible server on a free loopback port, for the model tests.

It speaks the real wire format: `POST /v1/chat/completions` answered with `text/event-stream`
chunks (`data: {...}` then `data: [DONE]`), each piece written separately so the client must
reassemble events split across reads. Each request takes the next reply of the script:

- a list of pieces (bytes), or a function of the request body returning one;
- `STALL` among the pieces: the server writes nothing more until the client goes away;
- an int: that HTTP status with an OpenAI-style JSON error body;
- a dict: that JSON body with status 200 (a server that does not stream).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = [
    "DONE",
    "STALL",
    "FakeModel",
    "chunk",
    "finish",
    "serve_model",
    "split",
    "text",
    "tool_call",
]

DONE = b"data: [DONE]\n\n"
STALL = b"<stall>"

Pieces = list[bytes]
Reply = Pieces | Callable[[dict[str, Any]], Pieces] | int | dict[str, Any]


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "fake-1",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def text(*pieces: str) -> Pieces:
    return [chunk({"content": p}) for p in pieces]


def finish(reason: str = "stop") -> Pieces:
    return [chunk({}, reason), DONE]


def tool_call(index: int, call_id: str, name: str, arguments: str, parts: int = 3) -> Pieces:
    """One call as OpenAI streams it: id and name first, then the argument text in `parts`."""
    first = {"index": index, "id": call_id, "type": "function"}
    out = [chunk({"tool_calls": [{**first, "function": {"name": name, "arguments": ""}}]})]
    step = max(1, -(-len(arguments) // parts))
    for i in range(0, len(arguments), step):
        piece = arguments[i : i + step]
        out.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
    return out


def split(pieces: Sequence[bytes], at: int = 9) -> Pieces:
    """Every piece cut in two writes: an SSE event arrives in halves."""
    out: Pieces = []
    for piece in pieces:
        out.extend((piece[:at], piece[at:]) if piece not in (STALL, DONE) else (piece,))
    return out


@dataclass
class FakeModel:
    replies: list[Reply] = field(default_factory=list)
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> Starlette:
        async def completions(request: Request) -> Response:
            body = await request.json()
            self.requests.append(body)
            if not self.replies:
                return JSONResponse({"error": {"message": "script exhausted"}}, status_code=500)
            reply = self.replies.pop(0)
            if isinstance(reply, int):
                error = {"error": {"message": f"fake failure {reply}", "type": "server_error"}}
                return JSONResponse(error, status_code=reply)
            if isinstance(reply, dict):
                return JSONResponse(reply)
            pieces = reply(body) if callable(reply) else reply

            async def stream() -> AsyncIterator[bytes]:
                try:
                    for piece in pieces:
                        if piece == STALL:
                            await asyncio.Event().wait()  # until the client goes away
                        yield piece
                        await asyncio.sleep(0)
                finally:
                    self.disconnected.set()

            return StreamingResponse(stream(), media_type="text/event-stream")

        return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])


@asynccontextmanager
async def serve_model(*replies: Reply) -> AsyncIterator[FakeModel]:
    model = FakeModel(list(replies))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(model.app(), log_level="warning", lifespan="off", ws="none")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:  # noqa: ASYNC110 (uvicorn exposes a flag, not an event)
            await asyncio.sleep(0.01)
        model.url = f"http://127.0.0.1:{port}/v1"
        yield model
    finally:
        server.should_exit = True
        server.force_exit = True  # a stalled stream would hold the shutdown
        await asyncio.wait_for(task, 10)
        sock.close()
