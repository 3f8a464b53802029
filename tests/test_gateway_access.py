"""Authentication, roles, sessions, share tokens and the edge policy, on a real gateway process.

Runs are started without a worker: they stay queued, which is all these checks need (a queued
run has a record, an event log and a stream that stays open)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, Processes
from tests.test_gateway_support import Gateway, GatewayFactory
from tidings.embedded import free_port

ADMIN = "adm-0123456789abcdef-secret"
VIEWER = "vwr-0123456789abcdef-secret"
TOKENS = f"admin:{ADMIN},viewer:{VIEWER}"
EVENT_STREAM = {"Accept": "text/event-stream"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def secured(gateway_factory: GatewayFactory) -> Gateway:
    return await gateway_factory(auth_tokens=TOKENS, trusted_proxies="127.0.0.1")


async def start_run(gw: Gateway, token: str = ADMIN) -> str:
    async with gw.client(headers=bearer(token)) as client:
        resp = await client.post(
            "/api/runs", json={"workflow": "research", "input": {"topic": "tides"}}
        )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["run_id"])


async def stream_status(
    client: httpx.AsyncClient, path: str, **kwargs: Any
) -> tuple[int, str, dict[str, str]]:
    """Status, content type and headers of a GET that may be an endless stream."""
    async with client.stream("GET", path, **kwargs) as resp:
        if not resp.headers.get("content-type", "").startswith("text/event-stream"):
            await resp.aread()
        return resp.status_code, resp.headers.get("content-type", ""), dict(resp.headers)


READ_ROUTES = [
    "/api/workflows",
    "/api/runs",
    "/api/runs/{run}",
    "/api/runs/{run}/state",
    "/workflow/{run}/status",
    "/workflow/{run}/query",
    "/workflow/{run}/history",
    "/api/v1/workflows/{run}",
    "/metrics",
]
STREAM_ROUTES = [
    "/api/runs/{run}/events",
    "/api/runs/events",
    "/api/streams?run={run}",
    "/api/v1/workflows/{run}/stream",
]
CONTROL_ROUTES: list[tuple[str, dict[str, Any] | None]] = [
    ("/api/runs", {"workflow": "research", "input": {"topic": "tides"}}),
    ("/api/runs/{run}/signals/cancel", None),
    ("/workflow/{run}/signal/stop", None),
    ("/chat", {"message": "hello", "timeout_s": 0}),
    ("/monty/stream", None),
    ("/api/v1/workflows/", {"name": "w", "tasks": []}),
]


async def test_without_credentials_every_run_route_answers_401_json(secured: Gateway) -> None:
    run = await start_run(secured)
    async with secured.client() as client:
        for path in READ_ROUTES:
            resp = await client.get(path.format(run=run))
            assert resp.status_code == 401, path
            assert resp.json()["error"]["code"] == "unauthorized", path
            assert resp.headers["www-authenticate"].startswith("Bearer"), path
        for path in STREAM_ROUTES:
            status, ctype, _ = await stream_status(client, path.format(run=run))
            assert (status, ctype) == (401, "application/json"), path
        for path, body in CONTROL_ROUTES:
            resp = await client.post(path.format(run=run), json=body)
            assert resp.status_code == 401, path
        status, _, _ = await stream_status(client, "/monty/stream")
        assert status == 401
        # Health and readiness stay open for load balancers; so does the dashboard's shell.
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/")).status_code == 200


PUBLIC = {"/healthz", "/readyz", "/openapi.json", "/api/session"}


async def test_every_route_of_the_app_checks_its_caller(secured: Gateway) -> None:
    """Walks the app's own route table, so a route added later without `authorize` fails here."""
    from tidings.services.gateway.app import create_app
    from tidings.settings import Settings

    run = await start_run(secured)
    app = create_app(Settings(redis_url="redis://127.0.0.1:1"))
    checked = 0
    async with secured.client() as client:
        for route in app.routes:
            path = getattr(route, "path", "")
            methods = getattr(route, "methods", None)
            if not path or methods is None or path in PUBLIC:
                continue  # the dashboard's static files are public
            url = path.replace("{run_id}", run).replace("{id}", run).replace("{name}", "stop")
            for method in sorted(methods - {"HEAD"}):
                if method == "GET":
                    status, _, _ = await stream_status(client, url)
                else:
                    status = (await client.request(method, url)).status_code
                assert status == 401, (method, path, status)
                checked += 1
    assert checked >= 20


async def test_a_viewer_reads_everything_and_controls_nothing(secured: Gateway) -> None:
    run = await start_run(secured)
    async with secured.client(headers=bearer(VIEWER)) as client:
        for path in READ_ROUTES:
            assert (await client.get(path.format(run=run))).status_code == 200, path
        for path in STREAM_ROUTES:
            status, ctype, _ = await stream_status(client, path.format(run=run))
            assert (status, ctype) == (200, "text/event-stream; charset=utf-8"), path
        for path, body in CONTROL_ROUTES:
            resp = await client.post(path.format(run=run), json=body)
            assert resp.status_code == 403, (path, resp.text)
            assert resp.json()["error"]["code"] == "forbidden"
        status, _, _ = await stream_status(client, "/monty/stream")
        assert status == 403
    async with secured.client(headers=bearer(ADMIN)) as client:
        resp = await client.post(f"/api/runs/{run}/signals/cancel")
        assert resp.status_code == 202, resp.text


@pytest.mark.parametrize(
    "header",
    [f"Bearer {ADMIN}x", f"Bearer {ADMIN[:-1]}", "Bearer", f"Basic {ADMIN}", ADMIN],
)
async def test_a_wrong_or_malformed_token_is_401(secured: Gateway, header: str) -> None:
    async with secured.client(headers={"Authorization": header}) as client:
        resp = await client.get("/api/runs")
    assert resp.status_code == 401
    assert ADMIN not in resp.text


async def test_sign_in_sets_a_strict_httponly_cookie_that_streams_use(secured: Gateway) -> None:
    run = await start_run(secured)
    async with secured.client() as client:
        assert (await client.get("/api/session")).json()["auth"] is True
        bad = await client.post("/api/session", json={"token": "not-a-token-at-all-no"})
        assert bad.status_code == 401 and "set-cookie" not in bad.headers
        resp = await client.post("/api/session", json={"token": VIEWER})
        assert resp.status_code == 200, resp.text
        cookie = resp.headers["set-cookie"]
        assert cookie.startswith("tidings_session=")
        attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")}
        assert {"httponly", "path"} <= attributes and "samesite=strict" in cookie.lower()
        assert "secure" not in attributes  # plain HTTP: a Secure cookie would never come back
        assert VIEWER not in cookie
        # The client now holds the cookie: reads and streams work, control does not.
        who = (await client.get("/api/session")).json()
        assert (who["role"], who["via"]) == ("viewer", "session")
        assert (await client.get("/api/runs")).status_code == 200
        status, ctype, _ = await stream_status(client, f"/api/runs/{run}/events")
        assert (status, ctype) == (200, "text/event-stream; charset=utf-8")
        assert (await client.post(f"/api/runs/{run}/signals/cancel")).status_code == 403
        # A tampered cookie is refused; signing out forgets it.
        value = client.cookies["tidings_session"]
        forged = value.replace(".viewer.", ".admin.")
        async with secured.client(cookies={"tidings_session": forged}) as other:
            assert (await other.get("/api/runs")).status_code == 401
        assert (await client.delete("/api/session")).status_code == 204
        assert (await client.get("/api/runs")).status_code == 401


async def test_the_cookie_is_secure_behind_a_trusted_tls_proxy(secured: Gateway) -> None:
    async with secured.client(headers={"X-Forwarded-Proto": "https"}) as client:
        resp = await client.post("/api/session", json={"token": ADMIN})
    assert "secure" in {a.strip().lower() for a in resp.headers["set-cookie"].split(";")}


async def test_a_share_token_reads_its_own_run_and_nothing_else(secured: Gateway) -> None:
    run, other = await start_run(secured), await start_run(secured)
    async with secured.client(headers=bearer(VIEWER)) as client:
        resp = await client.post(f"/api/runs/{run}/share", json={"ttl_s": 600})
    assert resp.status_code == 201, resp.text
    share = resp.json()
    token = share["token"]
    assert share["links"]["dashboard"] == f"/#/shared/{token}"
    async with secured.client() as client:
        assert (await client.get(f"/api/runs/{run}?token={token}")).status_code == 200
        page = await client.get(
            f"/api/runs/{run}/events?token={token}", headers={"Accept": "application/json"}
        )
        assert page.status_code == 200 and page.json()["run"]["run_id"] == run
        for path in (f"/api/runs/{run}/events?", f"/api/streams?run={run}&"):
            status, ctype, _ = await stream_status(
                client, f"{path}token={token}", headers=EVENT_STREAM
            )
            assert (status, ctype) == (200, "text/event-stream; charset=utf-8"), path
        refused = [
            f"/api/runs/{other}?",
            f"/api/runs/{other}/events?",
            f"/api/streams?run={run}&run={other}&",
            f"/api/streams?run={run}&feed=runs&",
            "/api/runs?",
            "/api/runs/events?",
            "/api/workflows?",
        ]
        for path in refused:
            status, _, _ = await stream_status(client, f"{path}token={token}")
            assert status == 403, path
        for path in (f"/api/runs/{run}/signals/cancel", f"/api/runs/{run}/share"):
            assert (await client.post(f"{path}?token={token}")).status_code == 403, path
    async with secured.client(params={"token": token[:-2] + "xx"}) as client:
        assert (await client.get(f"/api/runs/{run}")).status_code == 401


async def test_tokens_never_reach_the_gateway_log(secured: Gateway) -> None:
    run = await start_run(secured)
    async with secured.client(headers=bearer(ADMIN)) as client:
        share = (await client.post(f"/api/runs/{run}/share")).json()["token"]
    async with secured.client() as client:
        await client.get(f"/api/runs/{run}", params={"token": share})
        await client.get("/api/runs", headers=bearer(VIEWER + "wrong"))
        await client.post("/api/session", json={"token": ADMIN})
    log = secured.log()
    for secret in (ADMIN, VIEWER, share):
        assert secret not in log


# -- exposure: open mode binds loopback only ---------------------------------------------------


def _gateway_exit(processes: Processes, env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = processes.start(
        [sys.executable, "-m", "tidings.services.cli", "gateway", *args], env=env
    )
    try:
        code = proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        return -1, processes.output(proc)
    return code, processes.output(proc)


@pytest.mark.parametrize("via", ["env", "flag"])
def test_open_mode_refuses_a_public_address(
    processes: Processes, settings_env: Callable[..., dict[str, str]], via: str
) -> None:
    env = settings_env(port=free_port())
    args = ["--host", "0.0.0.0"] if via == "flag" else []
    if via == "env":
        env["TIDINGS_HOST"] = "0.0.0.0"
    code, output = _gateway_exit(processes, env, *args)
    assert code == 2, output
    assert "TIDINGS_AUTH_TOKENS" in output and "--insecure" in output


async def test_insecure_serves_open_on_a_public_address_and_says_so_loudly(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(host="0.0.0.0", insecure="true")
    async with gw.client() as client:
        assert (await client.get("/api/runs")).status_code == 200
    assert "RUNNING OPEN on 0.0.0.0" in gw.log()


async def test_tokens_allow_a_public_address(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(host="0.0.0.0", auth_tokens=TOKENS)
    async with gw.client() as client:
        assert (await client.get("/api/runs")).status_code == 401


def test_a_malformed_token_list_stops_start_up_without_echoing_it(
    processes: Processes, settings_env: Callable[..., dict[str, str]]
) -> None:
    env = settings_env(port=free_port(), auth_tokens="root:hunter2-hunter2-hunter2")
    code, output = _gateway_exit(processes, env)
    assert code == 2, output
    assert "TIDINGS_AUTH_TOKENS" in output and "hunter2" not in output


# -- the edge: hosts, origins, CORS, headers ---------------------------------------------------


@pytest.fixture
async def open_gateway(gateway_factory: GatewayFactory) -> Gateway:
    return await gateway_factory(cors_origins="http://app.example:3000")


@pytest.mark.parametrize(
    "path", ["/api/runs", "/api/runs/events", "/api/streams?feed=runs", "/", "/healthz"]
)
async def test_a_foreign_host_name_is_refused(open_gateway: Gateway, path: str) -> None:
    async with open_gateway.client(headers={"Host": "attacker.example"}) as client:
        status, _, headers = await stream_status(client, path)
    assert status == 400
    assert headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]"])
async def test_loopback_names_are_served(open_gateway: Gateway, host: str) -> None:
    async with open_gateway.client(headers={"Host": f"{host}:{open_gateway.port}"}) as client:
        assert (await client.get("/api/runs")).status_code == 200


async def test_cross_site_posts_are_refused_and_same_origin_ones_pass(
    open_gateway: Gateway,
) -> None:
    body = {"workflow": "research", "input": {"topic": "tides"}}
    async with open_gateway.client() as client:
        evil = await client.post("/api/runs", json=body, headers={"Origin": "http://evil.example"})
        assert evil.status_code == 403 and evil.json()["error"]["code"] == "cross_origin"
        sneaky = await client.post("/api/runs", json=body, headers={"Sec-Fetch-Site": "cross-site"})
        assert sneaky.status_code == 403
        same = await client.post("/api/runs", json=body, headers={"Origin": open_gateway.url})
        assert same.status_code == 201, same.text
        assert "access-control-allow-origin" not in same.headers
        assert (await client.post("/api/runs", json=body)).status_code == 201  # curl, the CLI


async def test_cors_is_opt_in_per_origin(open_gateway: Gateway, workers: Any) -> None:
    await workers(1)
    allowed = {"Origin": "http://app.example:3000"}
    async with open_gateway.client() as client:
        pre = await client.options(
            "/workflow/x/signal/stop",
            headers={**allowed, "Access-Control-Request-Method": "POST"},
        )
        assert pre.status_code == 204
        assert pre.headers["access-control-allow-origin"] == "http://app.example:3000"
        assert "POST" in pre.headers["access-control-allow-methods"]
        denied = await client.options(
            "/api/runs",
            headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert denied.status_code == 403
        assert "access-control-allow-origin" not in denied.headers
        # Seed 003's page, served from its own origin, starts monty and stops it with no body.
        async with client.stream("GET", "/monty/stream", headers=allowed) as stream:
            assert stream.headers["access-control-allow-origin"] == "http://app.example:3000"
            run = None
            async for line in stream.aiter_lines():
                if line.startswith("id: "):
                    run = line[4:].partition("/")[0]
                    break
        assert run
        stop = await client.post(f"/workflow/{run}/signal/stop", headers=allowed)
        assert stop.status_code == 200, stop.text
        assert stop.headers["access-control-allow-origin"] == "http://app.example:3000"


async def test_every_response_says_nosniff_and_carries_a_policy(open_gateway: Gateway) -> None:
    async with open_gateway.client() as client:
        for path in ("/api/runs", "/nope/missing.html", "/", "/api/runs/events"):
            _, _, headers = await stream_status(client, path)
            assert headers["x-content-type-options"] == "nosniff", path
            assert "default-src 'none'" in headers["content-security-policy"], path


# -- the CLI ---------------------------------------------------------------------------------


async def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "tidings.services.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_the_cli_sends_its_token_and_makes_share_links(
    secured: Gateway, settings_env: Callable[..., dict[str, str]]
) -> None:
    env = {**os.environ, **settings_env(port=secured.port)}
    refused = await _cli(env, "ls")
    assert refused.returncode == 1 and "authentication required" in refused.stderr
    env["TIDINGS_TOKEN"] = ADMIN
    started = await _cli(env, "run", "research", "--input", '{"topic": "tides"}')
    assert started.returncode == 0, started.stderr
    run = started.stdout.strip()
    listed = await _cli(env, "ls", "--json")
    assert run in listed.stdout
    shared = await _cli(env, "share", run)
    assert shared.returncode == 0, shared.stderr
    link = shared.stdout.strip()
    assert link.startswith(f"{secured.url}/#/shared/r1.{run}.")
    token = link.rpartition("/")[2]
    async with secured.client(params={"token": token}) as client:
        assert (await client.get(f"/api/runs/{run}")).status_code == 200
