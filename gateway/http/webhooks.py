"""``POST /hooks/{source}``: read the size-capped raw body, hand it to the pipeline,
answer what it says. Thin on purpose.

Two entrances to the same code. ``HookFastPath`` is a plain ASGI middleware that takes
``POST``/``GET /hooks/NAME`` of a configured source before Starlette's router, request
and response objects are built: those cost about as much CPU as the gateway's own work
on a dropped event (docs/performance.md). Everything else under ``/hooks/`` (an unknown
source, another method, a mounted sub-path) goes on to the ``Route`` below, which
answers it as any other route. Errors are answered by the app's own handlers either way.
"""

from __future__ import annotations

import asyncio

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import GatewayError, NotFound, PayloadTooLarge, RequestTimeout
from gateway.http.context import AppState, get_state
from gateway.http.problems import gateway_error_handler
from gateway.pipeline import Pipeline, Reply
from gateway.providers import RawRequest
from gateway.settings import SourceSettings

PREFIX = "/hooks/"
FAST_METHODS = frozenset({"POST", "GET"})


async def _read_capped(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes (by its
    Content-Length, or while it arrives)."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body is larger than the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.request":
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"body is larger than the {limit}-byte limit")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        elif kind == "http.disconnect":
            raise ClientDisconnect()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def ingest(state: AppState, source: SourceSettings, scope: Scope, receive: Receive) -> Reply:
    """One webhook: the raw request as the provider sent it, through the pipeline."""
    pipeline = state.extras["pipeline"]
    assert isinstance(pipeline, Pipeline)
    server = state.settings.server
    raw_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
    headers: dict[str, str] = {}
    declared: str | None = None
    for key, value in raw_headers:
        low = key.lower()
        if low in headers:
            headers[low] = f"{headers[low]}, {value}"
        else:
            headers[low] = value
            if low == "content-length":
                declared = value
    try:
        async with asyncio.timeout(server.body_timeout_s):
            body = await _read_capped(receive, declared, server.max_body_bytes)
    except TimeoutError:
        raise RequestTimeout(
            f"the request body did not arrive within {server.body_timeout_s:g} s"
        ) from None
    query = scope["query_string"].decode("latin-1")
    path = scope.get("root_path", "") + scope["path"]
    public = server.public_url
    if public is None:
        host = headers.get("host", "localhost")
        public = f"{scope.get('scheme', 'http')}://{host}"
    public_url = public + path + (f"?{query}" if query else "")
    req = RawRequest(
        method=scope["method"],
        path=path,
        query=query,
        headers=headers,
        body=body,
        public_url=public_url,
        content_type=headers.get("content-type", ""),
    )
    return await pipeline.handle(source, req, raw_headers)


async def hook(request: Request) -> Response:
    state = get_state(request)
    name = request.path_params["source"]
    source = state.settings.sources.get(name)
    if source is None:
        raise NotFound(f"no source {name!r} is configured")
    reply = await ingest(state, source, request.scope, request.receive)
    response = Response(reply.body, status_code=reply.status)
    response.raw_headers = list(reply.wire_headers)
    return response


class HookFastPath:
    """Plain ASGI: answers ``POST``/``GET /hooks/NAME`` of a configured source itself
    (see the module docstring); passes every other request on unchanged. Mounted as
    middleware, so the app's ``ServerErrorMiddleware`` still sees an unexpected error."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"] if scope["type"] == "http" else ""
        if not path.startswith(PREFIX) or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        state = scope["app"].state.gw
        assert isinstance(state, AppState)
        source = state.settings.sources.get(path[len(PREFIX) :])
        if source is None or scope["method"] not in FAST_METHODS:
            await self.app(scope, receive, send)  # the router answers 404 / 405
            return
        try:
            reply = await ingest(state, source, scope, receive)
        except GatewayError as exc:
            metrics = state.extras.get("metrics")
            if metrics is not None:
                metrics.refused.labels(source.name, str(exc.status)).inc()
            response = await gateway_error_handler(Request(scope, receive), exc)
            await response(scope, receive, send)
            return
        except ClientDisconnect:  # hung up mid-body: nobody to answer, nothing to log
            return  # (routes: gateway.app._client_gone)
        # Answers of one loop turn leave together (gateway.turns).
        await state.turns.end_of_turn()
        start: Message = {
            "type": "http.response.start",
            "status": reply.status,
            "headers": list(reply.wire_headers),  # a copy: middleware may edit it in place
        }
        await send(start)
        await send({"type": "http.response.body", "body": reply.body})


def routes() -> list[BaseRoute]:
    # GET too: Twilio (GET webhooks) and Vonage (answer_url defaults to GET) use it.
    return [Route("/hooks/{source}", hook, methods=["POST", "GET"])]
