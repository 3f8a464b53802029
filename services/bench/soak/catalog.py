"""The abusive requests: malformed JSON, wrong content types, oversized bodies, bad cursors,
unknown runs and ids that are not ids, signal names that are not signals, wrong methods, hosts
and origins, the seeds' routes with bad input, and raw bytes that are not HTTP (or are HTTP sent
too slowly).

Each carries the statuses it should get. Every body that could pass one check by mistake is
invalid in another way too, so no abusive request can start a run, with one kind of exception:
input a JSON schema cannot refuse (monty's `min_sleep_s` above `max_sleep_s`, a cycle among
prompt_chain's tasks) is accepted by the gateway, which validates with the catalog's schema only,
and the worker fails the run as it starts (`workflow_failed`, "invalid input for workflow …").
Those are `FAILS_AT_START`: their start must be accepted, and the checks (`checks.py`) expect
every run with such an input to have failed naming the problem, never to have run.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from tidings.settings import Settings

__all__ = ["FAILS_AT_START", "FailsAtStart", "Item", "catalog"]

_J = {"Content-Type": "application/json"}
_SSE = {"Accept": "text/event-stream"}
_PAGE = {"Accept": "application/json"}
_MAX_U64 = 18_446_744_073_709_551_615


@dataclass
class Item:
    name: str
    method: str = "GET"
    path: str = "/"
    ok: frozenset[int] = frozenset({400})
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    json: Any = None
    chunked: int = 0  # send this many bytes as a chunked body instead of `content`
    raw: list[tuple[bytes, float]] | None = None  # bytes to write, each with a pause after it


def _ok(*codes: int) -> frozenset[int]:
    return frozenset(codes)


@dataclass(frozen=True)
class FailsAtStart:
    """Input only the worker can refuse: the run starts, then fails at once naming `problem`."""

    workflow: str
    input: dict[str, Any]
    problem: str  # in the run's error, after "invalid input for workflow '<workflow>'"

    def matches(self, workflow: str, input: Any) -> bool:
        return workflow == self.workflow and input == self.input


FAILS_AT_START = {
    "monty-bounds": FailsAtStart(
        "monty", {"min_sleep_s": 5, "max_sleep_s": 1}, "min_sleep_s must not exceed max_sleep_s"
    ),
    "chain-cycle": FailsAtStart(
        "prompt_chain",
        {
            "tasks": [
                {"name": "a", "prompt": "{b}", "depends_on": ["b"]},
                {"name": "b", "prompt": "{a}", "depends_on": ["a"]},
            ]
        },
        "the tasks form a cycle",
    ),
}


def catalog(run: str, seed_run: str | None, max_body: int) -> list[Item]:
    """The requests, given a real run id (`run`) and a seed-000 run id if there is one."""
    nope = f"nope-{uuid.uuid4().hex[:8]}"
    bad_topic = {"workflow": "research", "input": {"topic": ""}}  # 422 if it ever got parsed
    items = [
        # malformed JSON
        Item("json-truncated", "POST", "/api/runs", headers=_J, content=b'{"workflow": '),
        Item("json-trailing-comma", "POST", "/api/runs", headers=_J, content=b'{"a": 1,}'),
        Item("json-not-utf8", "POST", "/api/runs", headers=_J, content=b'{"workflow": "\xff\xfe"}'),
        Item("json-empty", "POST", "/api/runs", _ok(400, 422), headers=_J, content=b""),
        Item("json-deep", "POST", "/api/runs", headers=_J, content=b"[" * 5000 + b"]" * 5000),
        Item(
            "json-huge-int",
            "POST",
            "/api/runs",
            headers=_J,
            content=b'{"workflow": "research", "input": {"breadth": ' + b"9" * 5000 + b"}}",
        ),
        Item(
            "json-nan",
            "POST",
            "/api/runs",
            headers=_J,
            content=b'{"workflow": "research", "input": {"topic": "", "breadth": NaN}}',
        ),
        Item(
            "json-inf",
            "POST",
            "/api/runs",
            headers=_J,
            content=b'{"workflow": "research", "input": {"topic": "", "breadth": 1e999}}',
        ),
        Item(
            "json-lone-surrogate",
            "POST",
            "/api/runs",
            headers=_J,
            content=b'{"workflow": "research", "input": {"topic": "\\ud800"}}',
        ),
        # well-formed JSON, wrong shape
        Item("shape-number", "POST", "/api/runs", _ok(422), json={"workflow": 5}),
        Item("shape-list", "POST", "/api/runs", _ok(422), json=[]),
        Item("shape-null", "POST", "/api/runs", _ok(400, 422), headers=_J, content=b"null"),
        Item("unknown-workflow", "POST", "/api/runs", _ok(404, 422), json={"workflow": nope}),
        Item(
            "research-breadth",
            "POST",
            "/api/runs",
            _ok(422),
            json={"workflow": "research", "input": {"topic": "x", "breadth": 99}},
        ),
        # accepted, then refused by the worker at start (FAILS_AT_START)
        *[
            Item(
                name, "POST", "/api/runs", _ok(201), json={"workflow": f.workflow, "input": f.input}
            )
            for name, f in FAILS_AT_START.items()
        ],
        # wrong content types
        Item(
            "ctype-text",
            "POST",
            "/api/runs",
            _ok(415),
            headers={"Content-Type": "text/plain"},
            content=b'{"workflow": "research", "input": {"topic": ""}}',
        ),
        Item(
            "ctype-form",
            "POST",
            "/api/runs",
            _ok(415),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            content=b"workflow=research&input=",
        ),
        Item(
            "ctype-multipart",
            "POST",
            "/api/runs",
            _ok(415),
            headers={"Content-Type": "multipart/form-data; boundary=x"},
            content=b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\nb\r\n--x--\r\n",
        ),
        Item(
            "ctype-none",
            "POST",
            "/api/runs",
            _ok(415),
            content=b'{"workflow": "research", "input": {"topic": ""}}',
        ),
        # oversized
        Item(
            "body-over-limit",
            "POST",
            "/api/runs",
            _ok(413),
            headers=_J,
            content=b'{"workflow": "research", "input": {"topic": "'
            + b"x" * (max_body + 100)
            + b'"}}',
        ),
        Item(
            "body-over-limit-chunked",
            "POST",
            "/api/runs",
            _ok(413),
            headers=_J,
            chunked=max_body + 65536,
        ),
        Item(
            "input-over-limit",
            "POST",
            "/api/runs",
            _ok(413, 422),
            json={"workflow": "research", "input": {"topic": "x" * 70_000, "breadth": 99}},
        ),
        Item(
            "signal-payload-over-limit",
            "POST",
            f"/api/runs/{run}/signals/message",
            _ok(409, 413),
            json={"text": "x" * 70_000},
        ),
        # bad cursors
        *[
            Item(f"cursor-after-{i}", "GET", f"/api/runs/{run}/events?after={c}", headers=_SSE)
            for i, c in enumerate(
                ["abc", "-1", "1-2-3", f"{_MAX_U64 + 1}-0", "%D9%A3-0", "1-", "%20", "1.5-0"]
            )
        ],
        *[
            Item(
                f"cursor-header-{i}",
                "GET",
                f"/api/runs/{run}/events",
                headers={**_SSE, "Last-Event-ID": c},
            )
            for i, c in enumerate(["zzz", "0x10-0", f"0-{_MAX_U64 + 1}", "1-0-", "+1-0"])
        ],
        Item("page-bad-cursor", "GET", f"/api/runs/{run}/events?after=abc", headers=_PAGE),
        Item("page-limit-zero", "GET", f"/api/runs/{run}/events?limit=0", headers=_PAGE),
        Item("page-limit-text", "GET", f"/api/runs/{run}/events?limit=ten", headers=_PAGE),
        Item("page-limit-huge", "GET", f"/api/runs/{run}/events?limit=100000", headers=_PAGE),
        Item("streams-none", "GET", "/api/streams", headers=_SSE),
        Item("streams-bad-id", "GET", "/api/streams?run=bad%24id", headers=_SSE),
        Item("streams-bad-cursor", "GET", f"/api/streams?run={run}/zzz", headers=_SSE),
        Item("streams-bad-feed", "GET", "/api/streams?feed=everything", headers=_SSE),
        Item(
            "streams-too-many",
            "GET",
            "/api/streams?" + "&".join(f"run=r{i}" for i in range(65)),
            headers=_SSE,
        ),
        Item("monty-bad-resume", "GET", "/monty/stream", headers={**_SSE, "Last-Event-ID": "x/y"}),
        Item(
            "monty-bad-resume-id",
            "GET",
            "/monty/stream",
            headers={**_SSE, "Last-Event-ID": "bad id!/1-0"},
        ),
        # unknown runs and ids that are not ids
        Item("unknown-run", "GET", f"/api/runs/{nope}", _ok(404)),
        Item("unknown-events", "GET", f"/api/runs/{nope}/events", _ok(404), headers=_SSE),
        Item("unknown-page", "GET", f"/api/runs/{nope}/events", _ok(404), headers=_PAGE),
        Item("unknown-state", "GET", f"/api/runs/{nope}/state", _ok(404)),
        Item("unknown-signal", "POST", f"/api/runs/{nope}/signals/stop", _ok(404)),
        Item("unknown-share", "POST", f"/api/runs/{nope}/share", _ok(404), json={}),
        Item("unknown-seed-status", "GET", f"/workflow/{nope}/status", _ok(404)),
        Item("unknown-seed-query", "GET", f"/workflow/{nope}/query", _ok(404)),
        Item("unknown-seed-history", "GET", f"/workflow/{nope}/history", _ok(404)),
        Item("unknown-seed-stop", "POST", f"/workflow/{nope}/signal/stop", _ok(404)),
        Item("unknown-seed000", "GET", f"/api/v1/workflows/{nope}", _ok(404)),
        Item(
            "unknown-seed000-stream",
            "GET",
            f"/api/v1/workflows/{nope}/stream",
            _ok(404),
            headers=_SSE,
        ),
        Item("unknown-seed000-execute", "POST", f"/api/v1/workflows/{nope}/execute", _ok(404)),
        Item(
            "unknown-chat", "POST", "/chat", _ok(404), json={"message": "hi", "workflow_id": nope}
        ),
        Item("id-too-long", "GET", "/api/runs/" + "a" * 65, _ok(404)),
        Item("id-nul", "GET", "/api/runs/a%00b/events", _ok(404), headers=_SSE),
        Item("id-traversal", "GET", "/api/runs/..%2F..%2Fschema", _ok(404)),
        Item("id-newline", "GET", "/api/runs/abc%0A", _ok(404)),
        # signals: names that are not signals, payloads that are not JSON objects
        *[
            Item(f"signal-name-{n}", "POST", f"/api/runs/{run}/signals/{n}", _ok(422, 404))
            for n in ("explode", "STOP", "stop%20", "cancel.", "__init__")
        ],
        Item(
            "signal-not-json",
            "POST",
            f"/api/runs/{run}/signals/message",
            headers=_J,
            content=b"{text: hi}",
        ),
        Item(
            "signal-text-plain",
            "POST",
            f"/api/runs/{run}/signals/message",
            _ok(415),
            headers={"Content-Type": "text/plain"},
            content=b"hi",
        ),
        # methods, hosts, origins, queries
        Item("method-delete", "DELETE", f"/api/runs/{run}", _ok(405)),
        Item("method-put", "PUT", "/api/runs", _ok(405), json={}),
        Item("method-patch", "PATCH", "/api/workflows", _ok(405), json={}),
        Item("host-evil", "GET", "/api/runs", headers={"Host": "evil.example"}),
        Item(
            "origin-evil",
            "POST",
            "/api/runs",
            _ok(403),
            headers={"Origin": "https://evil.example"},
            json=bad_topic,
        ),
        Item("list-limit-negative", "GET", "/api/runs?limit=-5", _ok(400, 422)),
        Item("list-limit-text", "GET", "/api/runs?limit=many", _ok(400, 422)),
        Item("list-status", "GET", "/api/runs?status=exploded", _ok(400, 422)),
        Item("list-before", "GET", "/api/runs?before=yesterday", _ok(400, 422)),
        # the seeds' routes
        Item("chat-empty", "POST", "/chat", _ok(422), json={"message": ""}),
        Item("chat-extra", "POST", "/chat", _ok(422), json={"message": "hi", "nope": 1}),
        Item("chat-timeout", "POST", "/chat", _ok(422), json={"message": "hi", "timeout_s": 1e9}),
        Item(
            "chat-not-chat", "POST", "/chat", _ok(409), json={"message": "hi", "workflow_id": run}
        ),
        Item("seed000-no-name", "POST", "/api/v1/workflows/", _ok(422), json={"name": ""}),
        Item(
            "seed000-bad-config",
            "POST",
            "/api/v1/workflows/",
            _ok(422),
            json={"name": "x", "config": {"breadth": "wide"}},
        ),
        Item(
            "monty-stream-range",
            "POST",
            "/monty/stream",
            _ok(422),
            json={"min_sleep_s": 0, "max_sleep_s": 1},  # the schema wants min_sleep_s > 0
        ),
        Item("monty-stream-list", "POST", "/monty/stream", _ok(422), json=[1]),
        Item(
            "monty-stream-query", "GET", "/monty/stream?max_iterations=lots", _ok(422), headers=_SSE
        ),
        Item("share-ttl", "POST", f"/api/runs/{run}/share", _ok(422), json={"ttl_s": -1}),
        Item(
            "session-bad",
            "POST",
            "/api/session",
            _ok(400, 401, 403, 404, 409, 422),
            json={"token": 1},
        ),
        # not HTTP, or HTTP out of bounds
        Item("raw-garbage", raw=[(b"GARBAGE\r\n\r\n", 0.0)], ok=_ok(400, 0)),
        Item(
            "raw-bad-header",
            raw=[(b"GET / HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n", 0.0)],
            ok=_ok(400, 0),
        ),
        Item(
            "raw-huge-header",
            raw=[
                (
                    b"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
                    + b"a" * 100_000
                    + b"\r\n\r\n",
                    0.0,
                )
            ],
            ok=_ok(431),
        ),
    ]
    if seed_run is not None:
        items.append(
            Item(
                "seed000-bad-resume",
                "GET",
                f"/api/v1/workflows/{seed_run}/stream",
                headers={**_SSE, "Last-Event-ID": "abc"},
            )
        )
    if "header_timeout_s" in Settings.model_fields:
        items += [
            Item(
                "slow-head",
                raw=[(b"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n", 3.0)],
                ok=_ok(408, 0),
            ),
            Item(
                "slow-body",
                raw=[
                    (
                        b"POST /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"wor',
                        3.0,
                    )
                ],
                ok=_ok(408, 0),
            ),
        ]
    return items
