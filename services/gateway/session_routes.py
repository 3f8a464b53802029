"""Signing in and sharing: the dashboard's session cookie and one-run share tokens.

- `GET /api/session`: whether auth is on and who the caller is (never 401, so a page can decide
  to show its sign-in form).
- `POST /api/session {"token"}`: a valid token becomes an HttpOnly, SameSite=Strict session
  cookie (Secure over HTTPS, or behind a trusted proxy that says so), so an EventSource needs no
  token in its URL. `DELETE /api/session` signs out.
- `POST /api/runs/{id}/share {"ttl_s"?}`: a signed, expiring, read-only token for that one run,
  taken as `?token=` by its record, event stream, JSON page and the seeds' streams.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tidings.keys import check_run_id

from .access import (
    SESSION_COOKIE,
    Forbidden,
    Need,
    Unauthorized,
    access_of,
    authorize,
    is_https,
)
from .bodies import parse_model, read_json
from .context import gateway

__all__ = ["routes"]


class _SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=512)


class _Share(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ttl_s: int | None = Field(None, ge=60, le=366 * 86_400)


async def session_info(request: Request) -> JSONResponse:
    access = access_of(request)
    body: dict[str, Any] = {"auth": not access.open, "role": None, "via": None, "expires_at": None}
    try:
        who = access.identify(request)
    except Unauthorized as exc:
        body["problem"] = str(exc)
    else:
        body.update(role=who.role, via=who.via, expires_at=who.expires_at)
        if who.run_id:
            body["run_id"] = who.run_id
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


async def sign_in(request: Request) -> Response:
    access = access_of(request)
    body = parse_model(_SignIn, await read_json(request))
    if access.open:
        return JSONResponse({"auth": False, "role": "admin", "expires_at": None})
    value, expires = access.session_cookie(body.token)
    role = access.bearer_role(body.token)
    response = JSONResponse(
        {"auth": True, "role": role, "via": "session", "expires_at": expires},
        headers={"Cache-Control": "no-store"},
    )
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=access.session_ttl,
        path="/",
        secure=is_https(request, access.proxies),
        httponly=True,
        samesite="strict",
    )
    return response


async def sign_out(request: Request) -> Response:
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


async def share_run(request: Request) -> JSONResponse:
    run_id = check_run_id(request.path_params["run_id"])
    who = authorize(request, Need.READ, run_id)
    if who.role == "share":
        raise Forbidden("a share token cannot make share tokens")
    body = parse_model(_Share, await read_json(request, empty={}))
    await gateway(request).store.get(run_id)  # 404 for an unknown run
    token, expires = access_of(request).share_token(run_id, body.ttl_s)
    base = f"/api/runs/{run_id}"
    return JSONResponse(
        {
            "run_id": run_id,
            "token": token,
            "expires_at": expires,
            "links": {
                "record": f"{base}?token={token}",
                "events": f"{base}/events?token={token}",
                "dashboard": f"/#/shared/{token}",
            },
        },
        status_code=201,
        headers={"Cache-Control": "no-store"},
    )


routes: list[BaseRoute] = [
    Route("/api/session", session_info, methods=["GET"]),
    Route("/api/session", sign_in, methods=["POST"]),
    Route("/api/session", sign_out, methods=["DELETE"]),
    Route("/api/runs/{run_id}/share", share_run, methods=["POST"]),
]
