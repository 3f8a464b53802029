"""One node of a local cluster (`tidings.embedded_cluster`): its server process, its cluster bus
port, its id once the cluster knows it, and a plain connection to it alone (no redirection)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from .embedded import EmbeddedValkey

__all__ = ["EmbeddedNode"]


@dataclass(eq=False)
class EmbeddedNode:
    """One node: its server process, cluster bus port, and id once started."""

    name: str
    server: EmbeddedValkey
    bus_port: int
    node_id: str = ""
    _client: Redis | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.server.pid

    @property
    def running(self) -> bool:
        return self.server.running

    def call(self, *args: str | int) -> Any:
        """One command to this node alone, its reply as sent, decoded (no redirection)."""
        if self._client is None:
            self._client = Redis(
                host=self.host, port=self.port, decode_responses=True, socket_timeout=2.0
            )
            self._client.response_callbacks.clear()  # replies as the server sends them
        return self._client.execute_command(*args)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __str__(self) -> str:
        return f"{self.name} ({self.address}, pid {self.pid})"
