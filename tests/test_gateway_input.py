"""No input gets a 5xx: hostile bodies, cursors, paths, query strings and headers are answered
with a 4xx JSON error (or served), never a server error.

Most tests speak to the gateway app in-process (its real routes, lifespan and Redis), as
property tests: hypothesis generates the input, the examples are derandomized so a run is
reproducible. A schemathesis run checks every operation of `/openapi.json` against the app the
same way. What only a real server sees (raw bytes on the wire) goes to a gateway process.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis as sync_redis
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from pydantic import BaseModel, Field, ValidationError
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.applications import Starlette
from starlette.routing import Match, Route

from tests.test_gateway_support import GatewayFactory, publish_catalog
from tidings import codec
from tidings.bus import Bus
from tidings.echo import ECHO_CHARS
from tidings.errors import BadCursor, InvalidInput
from tidings.events import EventType
from tidings.runs import RunStore
from tidings.services.gateway.app import create_app
from tidings.settings import Settings
from tidings.sse import SSEParser
from tidings.streamid import MAX_ID, parse_cursor

JSON_BODY = {"content-type": "application/json"}
ACCEPT_JSON = {"accept": "application/json"}
MAX = f"{MAX_ID[0]}-{MAX_ID[1]}"
PAST_MAX = f"{MAX_ID[0] + 1}-0"

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Cursors: anything at all, near-misses of the stream-id form, and the edges of its range.
_U65 = st.integers(0, 2**65)
CURSORS = st.one_of(
    st.text(),
    st.from_regex(r"\A[0-9]{1,22}(-[0-9]{1,22})?\Z"),
    st.tuples(_U65, _U65).map(lambda p: f"{p[0]}-{p[1]}"),
    st.sampled_from([MAX, PAST_MAX, "0", "0-0", "-1", "1-", "\uff11-2", " 5-1 ", "5-1\n"]),
)
# What an HTTP header value may carry: visible latin-1 octets and inner spaces.
HEADER_VALUES = st.binary(max_size=80).map(
    lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F).strip()
)
# Text with lone surrogates in it as often as not.
SURROGATE_TEXT = st.text(
    alphabet=st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=20
)


@dataclass
class Api:
    client: httpx.AsyncClient
    app: Starlette
    finished: str  # a finished run: its streams end
    ids: list[str]  # its events' ids


@pytest.fixture
async def api(settings: Settings, redis: Any, bus: Bus, store: RunStore) -> AsyncIterator[Api]:
    await publish_catalog(settings.redis_url or "", settings.namespace, settings.redis_cluster)
    run = await store.create("demo", None)
    ids = [
        (await bus.publish(run.run_id, EventType.WORKFLOW_STARTED, "go")).id,
        (await bus.publish(run.run_id, EventType.LOG, "half way", progress=50)).id,
        (await bus.publish(run.run_id, EventType.WORKFLOW_COMPLETED, "done")).id,
    ]
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://127.0.0.1", timeout=10
        ) as client:
            yield Api(client, app, run.run_id, ids)


def no_server_error(resp: httpx.Response) -> None:
    """A status under 500, and every error in the gateway's JSON shape."""
    assert resp.status_code < 500, (resp.status_code, resp.text[:500])
    if resp.status_code >= 400:
        error = resp.json()["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str), error


def error_code(resp: httpx.Response) -> str:
    code: str = resp.json()["error"]["code"]
    return code


def sse_ids(resp: httpx.Response) -> list[str]:
    return [m.id for m in SSEParser().feed(resp.content) if m.id]


# --- cursors ---------------------------------------------------------------------------------


@PROPERTY
@given(text=CURSORS)
def test_a_cursor_is_a_stream_id_of_two_unsigned_64_bit_parts_or_bad(text: str) -> None:
    try:
        ms, sq = parse_cursor(text)
    except BadCursor as exc:
        assert exc.status == 400 and "not a stream ID" in str(exc)
        codec.dumps({"message": str(exc)})  # always encodable
        return
    assert re.fullmatch(r"[0-9]+(-[0-9]+)?", text.strip(), re.ASCII)
    assert 0 <= ms <= MAX_ID[0] and 0 <= sq <= MAX_ID[1]
    assert parse_cursor(f"{ms}-{sq}") == (ms, sq)


@PROPERTY
@given(text=CURSORS)
async def test_any_cursor_of_a_json_page_is_400_or_the_events_after_it(api: Api, text: str) -> None:
    path, header = f"/api/runs/{api.finished}/events", _header(text)
    for sent, resp in (
        (text, await api.client.get(path, params={"after": text}, headers=ACCEPT_JSON)),
        (header, await api.client.get(path, headers={**ACCEPT_JSON, "last-event-id": header})),
    ):
        no_server_error(resp)
        if resp.status_code == 400:
            assert error_code(resp) == "bad_cursor"
            continue
        assert resp.status_code == 200
        page = resp.json()
        assert set(page) == {"events", "next", "gap", "run"}
        after = (
            parse_cursor(sent.decode("latin-1") if isinstance(sent, bytes) else sent)
            if sent
            else (0, 0)
        )
        assert [e["id"] for e in page["events"]] == [i for i in api.ids if parse_cursor(i) > after]


@PROPERTY
@given(text=CURSORS)
async def test_any_cursor_of_an_event_stream_is_400_before_it_starts_or_a_stream(
    api: Api, text: str
) -> None:
    value, run = _header(text), api.finished
    for path, headers, cursor in (
        (f"/api/runs/{run}/events", {"last-event-id": value}, value.decode("latin-1")),
        (f"/api/streams?run={run}/{quote(text, safe='')}", {}, text),
        (
            f"/api/streams?run={run}",
            {"last-event-id": run.encode() + b"/" + value},
            value.decode("latin-1"),
        ),
    ):
        resp = await api.client.get(path, headers=headers)
        no_server_error(resp)
        if resp.status_code == 400:
            assert error_code(resp) == "bad_cursor"
            continue
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        # An empty cursor is none: the stream starts at the beginning.
        after = parse_cursor(cursor) if cursor.strip() else (0, 0)
        shown = [i.rpartition("/")[2] for i in sse_ids(resp)]
        assert shown == [i for i in api.ids if parse_cursor(i) > after], (path, cursor)


async def test_the_greatest_stream_id_is_a_cursor_with_nothing_after_it(api: Api, bus: Bus) -> None:
    """Redis refuses `XRANGE key (<max>-<max> +`: the page was a 500 and the stream died
    after its 200 head."""
    run = api.finished
    assert await bus.read(run, MAX_ID) == []
    page = await api.client.get(f"/api/runs/{run}/events?after={MAX}", headers=ACCEPT_JSON)
    assert page.status_code == 200
    assert page.json()["events"] == [] and page.json()["next"] is None
    for path, headers in (
        (f"/api/runs/{run}/events", {"last-event-id": MAX}),
        (f"/api/runs/{run}/events?after={MAX}", {}),
        (f"/api/streams?run={run}/{MAX}", {}),
        (f"/api/streams?run={run}", {"last-event-id": f"{run}/{MAX}"}),
    ):
        resp = await api.client.get(path, headers=headers)
        assert resp.status_code == 200, (path, resp.text)
        assert sse_ids(resp) == [], path
    # The seeds' streams: the run ended before that id, so EventSource is told to stop.
    seed = await api.client.get(f"/api/v1/workflows/{run}/stream", headers={"last-event-id": MAX})
    assert seed.status_code == 204
    monty = await api.client.get("/monty/stream", headers={"last-event-id": f"{run}/{MAX}"})
    assert monty.status_code == 204
    # One past it is not a stream id, wherever it is sent.
    for path, headers in (
        (f"/api/runs/{run}/events?after={PAST_MAX}", ACCEPT_JSON),
        (f"/api/runs/{run}/events", {"last-event-id": PAST_MAX}),
        (f"/api/streams?run={run}/{PAST_MAX}", {}),
        (f"/api/v1/workflows/{run}/stream", {"last-event-id": PAST_MAX}),
        ("/monty/stream", {"last-event-id": f"{run}/{PAST_MAX}"}),
        ("/monty/stream", {"last-event-id": f"no such id!/{MAX}"}),
    ):
        resp = await api.client.get(path, headers=headers)
        assert resp.status_code == 400 and error_code(resp) == "bad_cursor", (path, resp.text)


def _header(text: str) -> bytes:
    """`text` as an HTTP header value can carry it (latin-1, no control characters)."""
    raw = text.encode("latin-1", "replace")
    return bytes(c for c in raw if c >= 0x20 and c != 0x7F).strip()


# --- bodies ----------------------------------------------------------------------------------


# Every JSON route, with a body that would otherwise be accepted (bar the nested part).
def _body_routes(api: Api) -> list[str]:
    return [
        "/api/runs",
        f"/api/runs/{api.finished}/signals/message",
        "/api/v1/workflows/",
        "/chat",
        "/api/session",
        f"/api/runs/{api.finished}/share",
    ]


def _nest(depth: int, kind: str) -> str:
    return ('{"a":' * depth + "1" + "}" * depth) if kind == "{" else "[" * depth + "]" * depth


@PROPERTY
@given(depth=st.integers(1, 3_000), kind=st.sampled_from("[{"))
async def test_deeply_nested_bodies_are_400_never_500(api: Api, depth: int, kind: str) -> None:
    nested = _nest(depth, kind)
    for path in _body_routes(api):
        body = '{"workflow": "no-such-workflow", "input": {"x": ' + nested + "}}"
        resp = await api.client.post(path, content=body, headers=JSON_BODY)
        no_server_error(resp)
        if depth >= 250:
            assert resp.status_code == 400 and error_code(resp) == "malformed_json", path
    monty = '{"min_sleep_s": ' + nested + "}"  # never valid: no run is started
    resp = await api.client.post("/monty/stream", content=monty, headers=JSON_BODY)
    no_server_error(resp)
    if depth >= 250:
        assert resp.status_code == 400
    elif depth <= 150:  # the parser's limit is about 200 levels, wrapping included
        assert resp.status_code == 422


@PROPERTY
@given(digits=st.integers(1, 12_000), sign=st.sampled_from(["", "-"]), frac=st.booleans())
async def test_huge_numbers_are_4xx_never_500(api: Api, digits: int, sign: str, frac: bool) -> None:
    number = sign + "9" * digits + (".5" if frac else "")
    for path in _body_routes(api):
        for body in (
            '{"workflow": "research", "input": {"topic": "t", "breadth": ' + number + "}}",
            '{"name": "n", "config": {"breadth": ' + number + '}, "timeout_s": ' + number + "}",
            '{"message": "hi", "timeout_s": ' + number + ', "ttl_s": ' + number + "}",
        ):
            resp = await api.client.post(path, content=body, headers=JSON_BODY)
            no_server_error(resp)
            if digits > 4_300 and not frac:
                assert resp.status_code == 400 and error_code(resp) == "malformed_json"


async def test_numbers_json_has_no_room_for_are_400(api: Api) -> None:
    for number in ("1e999", "-1e400", "NaN", "Infinity", "-Infinity", "9" * 400 + ".0"):
        body = '{"name": "n", "tasks": [{"x": ' + number + "}]}"
        resp = await api.client.post("/api/v1/workflows/", content=body, headers=JSON_BODY)
        assert resp.status_code == 400 and error_code(resp) == "malformed_json", number


@PROPERTY
@given(text=SURROGATE_TEXT, key=SURROGATE_TEXT)
async def test_lone_surrogates_in_any_string_are_400_never_500(
    api: Api, text: str, key: str
) -> None:
    for path in _body_routes(api):
        for value in (
            {"workflow": text},
            {"workflow": "no-such-workflow", "input": {"topic": text, key: 1}},
            {"name": text, "tasks": [{"prompt": text, "name": key}], "nope": 1},
            {"message": text, "workflow_id": key, "token": text},
            {key: text},
        ):
            body = json.dumps(value)  # ASCII: surrogates travel as \udXXX escapes
            resp = await api.client.post(path, content=body, headers=JSON_BODY)
            no_server_error(resp)
            if _has_lone_surrogate(value):
                assert resp.status_code == 400 and error_code(resp) == "malformed_json"


def _has_lone_surrogate(value: Any) -> bool:
    """Does the JSON of `value` hold a surrogate escape that is not half of a pair?"""
    try:
        json.dumps(json.loads(json.dumps(value)), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


async def test_a_lone_surrogate_is_400_where_it_used_to_break_the_422(api: Api) -> None:
    for path, body in (
        ("/api/runs", rb'{"workflow": "\ud800"}'),
        ("/api/runs", rb'{"workflow": "research", "input": {"topic": 1, "breadth": "\udfff"}}'),
        ("/chat", rb'{"message": "a\ud800b"}'),
        ("/api/v1/workflows/", rb'{"name": "\ud800"}'),
    ):
        resp = await api.client.post(path, content=body, headers=JSON_BODY)
        assert resp.status_code == 400 and error_code(resp) == "malformed_json", path
    # A well-formed pair is just a character.
    resp = await api.client.post(
        "/api/runs", content=rb'{"workflow": "\ud83d\ude00"}', headers=JSON_BODY
    )
    assert resp.status_code == 404 and "\U0001f600" in resp.json()["error"]["message"]


def test_field_errors_render_whatever_the_input_holds() -> None:
    class Model(BaseModel):
        name: str = Field(max_length=5)
        n: int

    for bad in (
        {"name": "a\ud800" * 50_000, "n": "\udfff"},
        {"name": 10**5000, "n": [1] * 10_000},
        {"name": {"\ud800": float("nan")}, "n": float("inf")},
    ):
        with pytest.raises(ValidationError) as caught:
            Model.model_validate(bad)
        errors = InvalidInput.from_validation("invalid", caught.value).errors
        encoded = codec.dumps(errors)
        assert len(encoded) < 2_000, encoded[:300]
        for error in errors:
            assert _echo_size(error["input"]) <= ECHO_CHARS + 1


def _echo_size(value: Any) -> int:
    return len(value) if isinstance(value, str) else len(json.dumps(value, ensure_ascii=False))


async def test_422_details_echo_a_100kb_input_cut_short(api: Api) -> None:
    huge = "x" * 100_000
    for path, value in (
        ("/api/runs", {"workflow": huge}),
        ("/api/runs", {"workflow": "research", huge: 1}),
        ("/api/runs", {"workflow": "research", "input": {"topic": [huge[:20_000]] * 3}}),
        ("/chat", {"message": "hi", "workflow_id": huge}),
        ("/api/v1/workflows/", {"name": huge}),
    ):
        resp = await api.client.post(path, json=value)
        assert resp.status_code == 422, (path, resp.text[:300])
        assert len(resp.content) < 4_000, (path, len(resp.content))
        for error in resp.json()["error"]["details"]:
            assert _echo_size(error.get("input")) <= ECHO_CHARS + 1
            assert all(len(str(part)) <= 120 for part in error["loc"])
    detail = (await api.client.post("/api/runs", json={"workflow": huge})).json()["error"]
    assert detail["details"][0]["input"] == "x" * ECHO_CHARS + "…"
    # Short inputs come back as they were sent.
    short = await api.client.post(
        "/api/runs", json={"workflow": "research", "input": {"breadth": "x"}}
    )
    assert {"input": "x", "loc": ["breadth"]}.items() <= short.json()["error"]["details"][
        -1
    ].items()


# --- content types ---------------------------------------------------------------------------


async def test_json_bodies_must_say_so_bodiless_posts_need_nothing(
    api: Api, bus: Bus, store: RunStore
) -> None:
    run = await store.create("demo", None)
    await bus.publish(run.run_id, EventType.WORKFLOW_STARTED, "go")
    signal = f"/api/runs/{run.run_id}/signals/message"
    for content_type in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "text/json",
        None,
    ):
        headers = {"content-type": content_type} if content_type else {}
        for path in (signal, *_body_routes(api), "/monty/stream"):
            resp = await api.client.post(path, content=b'{"text": "hi"}', headers=headers)
            assert resp.status_code == 415, (path, content_type, resp.status_code)
            assert error_code(resp) == "unsupported_media_type"
    # The same body as JSON, however the type is spelled.
    for content_type in (
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/vnd.tidings.signal+json",
    ):
        resp = await api.client.post(
            signal, content=b'{"text": "hi"}', headers={"content-type": content_type}
        )
        assert resp.status_code == 202, (content_type, resp.text)
    # Without a body the type does not matter: no body, an empty one, chunked nothing.

    async def nothing() -> AsyncIterator[bytes]:
        yield b""

    for kwargs in (
        {},
        {"content": b"", "headers": {"content-type": "text/plain"}},
        {"content": nothing(), "headers": {"content-type": "text/plain"}},
    ):
        resp = await api.client.post(signal, **kwargs)
        assert resp.status_code == 202, (kwargs, resp.text)
        assert resp.json()["event"]["data"]["payload"] == {}


# --- paths, query strings, headers -----------------------------------------------------------


@PROPERTY
@given(segment=st.text(min_size=1), other=st.text())
async def test_any_path_parameter_is_4xx_never_500(api: Api, segment: str, other: str) -> None:
    seg, oth = quote(segment, safe=""), quote(other, safe="") or "x"
    for method, path in (
        ("GET", f"/api/runs/{seg}"),
        ("GET", f"/api/runs/{seg}/state"),
        ("GET", f"/api/runs/{seg}/events"),
        ("POST", f"/api/runs/{seg}/signals/{oth}"),
        ("POST", f"/api/runs/{api.finished}/signals/{seg}"),
        ("POST", f"/api/runs/{seg}/share"),
        ("GET", f"/api/v1/workflows/{seg}"),
        ("POST", f"/api/v1/workflows/{seg}/execute"),
        ("GET", f"/api/v1/workflows/{seg}/stream"),
        ("POST", f"/workflow/{seg}/signal/stop"),
        ("GET", f"/workflow/{seg}/status"),
        ("GET", f"/workflow/{seg}/query"),
        ("GET", f"/workflow/{seg}/history"),
        ("GET", f"/{seg}"),
    ):
        resp = await api.client.request(method, path, headers=ACCEPT_JSON)
        no_server_error(resp)


@PROPERTY
@given(values=st.lists(st.text(), min_size=5, max_size=5))
async def test_any_query_string_is_4xx_or_served_never_500(api: Api, values: list[str]) -> None:
    workflow, status, before, limit, after = values
    feed = status if status != "runs" else "x"  # the run-list feed never ends
    for path, params in (
        ("/api/runs", {"workflow": workflow, "status": status, "before": before, "limit": limit}),
        (f"/api/runs/{api.finished}/events", {"after": after, "limit": limit}),
        ("/api/streams", {"run": [workflow, f"{api.finished}/{after}"], "feed": feed}),
        (f"/api/v1/workflows/{api.finished}/execute", {"stream": status}),
    ):
        method = "POST" if path.endswith("/execute") else "GET"
        resp = await api.client.request(method, path, params=params, headers=ACCEPT_JSON)
        no_server_error(resp)


@PROPERTY
@given(value=HEADER_VALUES)
async def test_any_header_value_is_4xx_or_served_never_500(api: Api, value: bytes) -> None:
    for name in (b"last-event-id", b"accept", b"content-type", b"authorization", b"cookie"):
        for method, path in (
            ("GET", f"/api/runs/{api.finished}/events"),
            ("GET", "/api/streams?run=" + api.finished),
            ("GET", f"/api/v1/workflows/{api.finished}/stream"),
            ("GET", "/monty/stream"),
            ("POST", "/api/runs"),
            ("GET", "/api/runs"),
        ):
            headers = [(name, value)]
            if path == "/monty/stream":
                if name != b"last-event-id":
                    continue  # a monty stream without a resume point starts a run
                headers = [(name, api.finished.encode() + b"/" + value)]
            if name != b"accept" and "events" in path:
                headers.append((b"accept", b"application/json"))
            resp = await api.client.request(
                method, path, headers=headers, content=b"{}" if method == "POST" else None
            )
            no_server_error(resp)


async def test_crlf_and_raw_bytes_on_the_wire_are_never_a_500(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory()
    requests = [
        b"GET /api/runs/x/events HTTP/1.1\r\nHost: 127.0.0.1\r\nLast-Event-ID: 1\r2-0\r\n\r\n",
        b"GET /api/runs/x/events HTTP/1.1\r\nHost: 127.0.0.1\r\nLast-Event-ID: 1\n X: 2\r\n\r\n",
        b"GET /api/runs/x\r\n/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /api/runs/\xc3\xa9\xff HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /api/runs/%0D%0A HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /api/runs/x%0A HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /api/runs?workflow=%0D%0A%ff HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /api/runs/x/events HTTP/1.1\r\nHost: 127.0.0.1\r\nLast-Event-ID: \xc3\xa9\r\n\r\n",
        b"GET /api/streams?run=x/%ff HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: \xff\r\n\r\n",
    ]
    for request in requests:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            writer.write(request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
            answer = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 "), (request, answer[:300])
        assert int(answer.split(b" ", 2)[1]) < 500, (request, answer[:300])
    assert "Traceback" not in gw.log()


# --- 405 -------------------------------------------------------------------------------------


async def test_405_allows_every_method_of_the_path_not_only_the_first_routes(api: Api) -> None:
    """Starlette's router answers a 405 with the methods of the first route matching the path:
    `DELETE /api/runs` said `allow: POST` although GET is served there too."""
    checked = 0
    for route in api.app.routes:
        if not isinstance(route, Route) or not route.methods:
            continue
        path = re.sub(r"\{[^}]+\}", "x", route.path)
        scope = {"type": "http", "path": path, "root_path": "", "method": "PATCH"}
        expected = set().union(
            *(
                r.methods or ()
                for r in api.app.routes
                if isinstance(r, Route) and r.matches(scope)[0] is not Match.NONE
            )
        )
        resp = await api.client.request("PATCH", path)
        assert resp.status_code == 405, (path, resp.status_code)
        assert error_code(resp) == "method_not_allowed"
        assert set(resp.headers["allow"].split(", ")) == expected, path
        checked += 1
    assert checked > 20
    runs = await api.client.delete("/api/runs")
    assert runs.headers["allow"] == "GET, HEAD, POST"
    static = await api.client.delete("/index.html")  # the dashboard's files
    assert static.status_code == 405 and static.headers["allow"] == "GET, HEAD"


# --- the OpenAPI description -----------------------------------------------------------------


@pytest.fixture
def served_schema(settings: Settings, redis_url: str, namespace: str) -> Iterator[Any]:
    """The app's own `/openapi.json`, loaded by schemathesis, which runs the app in-process (its
    lifespan on schemathesis' event loop thread) until the test ends."""
    # The workflows' input schemas are in the document: they come from the catalog.
    asyncio.run(
        publish_catalog(settings.redis_url or "", settings.namespace, settings.redis_cluster)
    )
    app = create_app(settings)
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
    finally:
        shutdown_lifespans()
        client = sync_redis.Redis.from_url(redis_url)
        try:
            for key in client.scan_iter(match=f"{namespace}:*", count=1000):
                client.delete(key)
        finally:
            client.close()


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_every_operation_of_the_openapi_spec_answers_as_described(served_schema: Any) -> None:
    """Generated requests, valid and invalid, for every operation: no 5xx, only documented
    statuses and content types, bodies matching their schemas. The run-list stream is left out
    (it never ends)."""
    schema = served_schema.exclude(path="/api/runs/events")
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @seed(20261205)
            @settings(
                max_examples=40,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case: Any) -> None:
                case.call_and_validate(checks=CHECKS)

            try:
                check()
            except Unsatisfiable:
                # Nothing to make invalid (an operation without parameters or body).
                assert mode is GenerationMode.NEGATIVE, operation.label
    assert operations >= 7


async def test_the_json_page_is_the_object_the_spec_describes(
    served_schema: Any, bus: Bus, store: RunStore
) -> None:
    """The spec said an array of events; the page is `{events, next, gap, run}`."""
    run = await store.create("demo", {"n": 1})
    await bus.publish(run.run_id, EventType.WORKFLOW_STARTED, "go")
    await bus.publish(run.run_id, EventType.LOG, "line\nbreak")
    operation = served_schema["/api/runs/{run_id}/events"]["GET"]
    for query in ({}, {"limit": 1}, {"after": MAX}):
        case = operation.Case(path_parameters={"run_id": run.run_id}, query=query)
        response = await asyncio.to_thread(
            case.call_and_validate, headers={"Accept": "application/json"}, checks=CHECKS
        )
        assert response.status_code == 200
        page = response.json()
        assert isinstance(page, dict) and isinstance(page["events"], list)
        assert page["run"]["run_id"] == run.run_id
    responses = operation.definition.raw["responses"]
    assert {"200", "400", "404"} <= set(responses)
    start = served_schema["/api/runs"]["POST"].definition.raw["responses"]
    assert {"400", "413", "415", "422"} <= set(start)
