"""Finding this machine's `tidings up`: its embedded Valkey and its gateway.

`tidings up` writes the embedded server's URL to `<data_dir>/redis.url`; `tidings gateway` and
`tidings worker` started later on the same machine without `REDIS_URL` join that server, so
`tidings up --workers 0` plus a few `tidings worker` in other terminals just works. The file stays
after shutdown so a restart can reuse the same port; readers check that the server answers.
"""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlsplit

from tidings.settings import Settings

from .errors import CliError

__all__ = ["gateway_url", "redis_answers", "redis_url_file", "with_redis_url"]


def redis_url_file(settings: Settings) -> Path:
    return settings.data_dir / "redis.url"


def gateway_url(settings: Settings, flag: str | None = None) -> str:
    """The gateway to talk to: `--url`, else the host/port settings (a wildcard bind means
    this machine, reached over loopback)."""
    if flag:
        return flag.rstrip("/")
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def redis_answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or 6379), timeout=0.5
        ) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def with_redis_url(settings: Settings) -> Settings:
    """`settings` with a Redis URL: its own, else the running local `tidings up`'s."""
    if settings.redis_url:
        return settings
    path = redis_url_file(settings)
    url = path.read_text().strip() if path.exists() else ""
    if not url:
        raise CliError(
            "no Redis: set REDIS_URL, or start `tidings up` on this machine "
            f"(it writes {path} for other commands to find)"
        )
    if not redis_answers(url):
        raise CliError(f"the embedded Valkey at {url} (from {path}) is not running: `tidings up`")
    return settings.model_copy(update={"redis_url": url})
