"""The streaming lane: event-stream routes served ahead of the middleware stack.

An open event stream is a suspended chain of coroutines for as long as its viewer watches, and
every layer in front of the endpoint keeps a frame in that chain: Starlette's error and exception
middleware, the body limit, the router, the request/response wrappers; about 5 KB per viewer in
all, a quarter of what an idle viewer costs. The lane matches the stream routes with Starlette's
own `Route.matches`, calls their endpoint directly, and answers errors with the same JSON as the
app's handlers (`errors.handle_exception`). The routes remain ordinary routes of the app: listed
there, in the same order, and served by the app itself for anything the lane does not take.

Nothing the middleware does is lost for these routes: they take no request body, and whatever a
stream needs to check (the run, the cursor, later the caller's rights) its endpoint checks itself.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from .edge import Edge, add_headers
from .errors import handle_exception

__all__ = ["StreamLane"]


class StreamLane:
    """An ASGI app: GET requests for `routes` go straight to their endpoints, all else to `edge`
    (the edge policy in front of `app`). The lane applies that policy to its own requests with
    `Edge.screen`, adding its headers to the endpoint's response: no wrapper stays suspended
    for as long as a stream is open."""

    def __init__(self, app: Starlette, routes: list[Route], edge: Edge) -> None:
        self.app = app
        self.routes = routes
        self.edge = edge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            for route in self.routes:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    refusal, headers, _ = self.edge.screen(scope)
                    if refusal is not None:
                        response = refusal
                    else:
                        scope.update(child)
                        scope["app"] = self.app
                        request = Request(scope, receive)
                        try:
                            response = await route.endpoint(request)
                        except Exception as exc:
                            response = await handle_exception(request, exc)
                    add_headers(response.raw_headers, headers)
                    await response(scope, receive, send)
                    return
        await self.edge(scope, receive, send)
