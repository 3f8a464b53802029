"""A real Tidings stack for end-to-end tests: a gateway and a worker process on this test's Redis
namespace, a client for it, and an SSE reader. Other test modules import the `stack` fixture."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tidings.catalog import Catalog
from tidings.redis import connect
from tidings.settings import Settings
from tidings.sse import SSEMessage, SSEParser

__all__ = ["Stack", "free_port", "running_stack", "stack"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    url: str
    client: httpx.AsyncClient
    logs: Callable[[], str]
    env: dict[str, str]  # the services' environment, to start more workers
    worker: Any  # the first worker's Popen

    async def start(self, workflow: str, input: dict[str, Any] | None = None) -> dict[str, Any]:
        resp = await self.client.post("/api/runs", json={"workflow": workflow, "input": input})
        assert resp.status_code == 201, resp.text
        body: dict[str, Any] = resp.json()
        return body

    async def sse(
        self,
        method: str,
        path: str,
        *,
        until: Callable[[list[SSEMessage]], bool] | None = None,
        on_message: Callable[[SSEMessage], Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60,
        **kwargs: Any,
    ) -> list[SSEMessage]:
        """Read an event stream until it ends or `until(messages)` holds; bounded in time."""
        out: list[SSEMessage] = []
        async with asyncio.timeout(timeout):
            async with self.client.stream(
                method, path, headers={"Accept": "text/event-stream", **(headers or {})}, **kwargs
            ) as resp:
                if resp.status_code != 200:
                    raise AssertionError(f"{resp.status_code}: {(await resp.aread()).decode()}")
                assert resp.headers["content-type"].startswith("text/event-stream")
                parser = SSEParser()
                async for chunk in resp.aiter_bytes():
                    for message in parser.feed(chunk):
                        out.append(message)
                        if on_message is not None:
                            result = on_message(message)
                            if asyncio.iscoroutine(result):
                                await result
                        if until is not None and until(out):
                            return out
        return out

    async def events(self, run_id: str, **kwargs: Any) -> list[dict[str, Any]]:
        """The native stream of a run, to its end, as parsed events."""
        messages = await self.sse("GET", f"/api/runs/{run_id}/events", **kwargs)
        return [json.loads(m.data) for m in messages]

    async def wait_status(self, run_id: str, *statuses: str, timeout: float = 60) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                resp = await self.client.get(f"/api/runs/{run_id}")
                body: dict[str, Any] = resp.json()
                if resp.status_code == 200 and body.get("status") in statuses:
                    return body
                await asyncio.sleep(0.05)


@asynccontextmanager
async def running_stack(
    processes: Any, settings_env: Callable[..., dict[str, str]], **settings: object
) -> AsyncIterator[Stack]:
    """Gateway + worker with `settings` (as TIDINGS_* variables) over this test's namespace."""
    port = free_port()
    env = settings_env(
        **{"port": port, "llm_token_delay_ms": 1, "log_level": "warning", **settings}
    )
    gateway = processes.python("tidings.services.gateway", env=env, name="gateway")
    worker = processes.python("tidings.services.worker", env=env, name="worker")

    def logs() -> str:
        return "\n".join(
            f"--- {name}:\n{processes.output(p)[-4000:]}"
            for name, p in (("gateway", gateway), ("worker", worker))
        )

    url = f"http://127.0.0.1:{port}"
    cluster = env.get("TIDINGS_REDIS_CLUSTER") == "true"
    catalog_redis = connect(env["REDIS_URL"], cluster=cluster)
    keys = Settings(namespace=env["TIDINGS_NAMESPACE"], redis_cluster=cluster).keys()
    catalog = Catalog(catalog_redis, keys)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        try:
            async with asyncio.timeout(30):
                while True:
                    for proc in (gateway, worker):
                        if proc.poll() is not None:
                            raise AssertionError(f"a process exited early\n{logs()}")
                    try:
                        # Ready: the gateway answers and the worker has published its workflows
                        # (read in Redis: the listing may need credentials).
                        if (await client.get("/healthz")).status_code == 200:
                            listed = (await catalog.read(fresh=True)).entries()
                            if any(entry.served for entry in listed):
                                break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.1)
        finally:
            await catalog_redis.aclose()
        yield Stack(url, client, logs, env, worker)


@pytest.fixture
async def stack(
    processes: Any, settings_env: Callable[..., dict[str, str]]
) -> AsyncIterator[Stack]:
    async with running_stack(processes, settings_env) as running:
        yield running
