"""A small synchronous client of the gateway's REST API, turning every failure into a CliError
with one readable line (the gateway's JSON error message when there is one)."""

from __future__ import annotations

from typing import Any

import httpx

from .errors import CliError

__all__ = ["Api", "auth_headers", "error_message"]


def auth_headers(token: str | None) -> dict[str, str]:
    """The `Authorization` header for `token` (TIDINGS_TOKEN), or none."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def error_message(response: httpx.Response) -> str:
    """`{"error": {"code", "message"}}` → "message (code)"; anything else → status line."""
    try:
        err = response.json()["error"]
        text = f"{err['message']} ({err['code']})"
        details = err.get("details")
        if isinstance(details, list) and details:
            first = details[0]
            if isinstance(first, dict) and "msg" in first:
                loc = ".".join(str(p) for p in first.get("loc", ()))
                text += f": {loc + ': ' if loc else ''}{first['msg']}"
        return text
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code} {response.reason_phrase}"


class Api:
    def __init__(self, base_url: str, *, timeout: float = 10.0, token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = httpx.Client(
            base_url=self.base_url, timeout=timeout, headers=auth_headers(token)
        )

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise CliError(
                f"cannot reach the gateway at {self.base_url} ({type(exc).__name__}): "
                "is `tidings up` running? (or pass --url)"
            ) from None
        if response.status_code >= 400:
            raise CliError(error_message(response))
        return response.json() if response.content else None

    def start(self, workflow: str, input: dict[str, Any] | None) -> dict[str, Any]:
        body: dict[str, Any] = {"workflow": workflow, "input": input or {}}
        result: dict[str, Any] = self.request("POST", "/api/runs", json=body)
        return result

    def get(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/api/runs/{run_id}")
        return result

    def signal(self, run_id: str, name: str, payload: dict[str, Any] | None) -> Any:
        return self.request("POST", f"/api/runs/{run_id}/signals/{name}", json=payload or {})

    def list_runs(
        self, *, workflow: str | None, status: str | None, limit: int
    ) -> list[dict[str, Any]]:
        params: dict[str, str | int] = {"limit": limit}
        if workflow:
            params["workflow"] = workflow
        if status:
            params["status"] = status
        page = self.request("GET", "/api/runs", params=params)
        runs = page.get("runs", page.get("items", [])) if isinstance(page, dict) else page
        return [dict(r) for r in runs or []]
