"""``POST /hooks/{source}``: read the size-capped raw body, hand it to the pipeline,
answer what it says. Thin on purpose."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.errors import NotFound, PayloadTooLarge
from gateway.http.context import get_state
from gateway.pipeline import Pipeline
from gateway.providers import RawRequest


async def _read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body is larger than the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is larger than the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def hook(request: Request) -> Response:
    state = get_state(request)
    name = request.path_params["source"]
    source = state.settings.sources.get(name)
    if source is None:
        raise NotFound(f"no source {name!r} is configured")
    pipeline = state.extras["pipeline"]
    assert isinstance(pipeline, Pipeline)
    body = await _read_capped(request, state.settings.server.max_body_bytes)
    scope = request.scope
    query = scope["query_string"].decode("latin-1")
    raw_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
    headers: dict[str, str] = {}
    for key, value in raw_headers:
        low = key.lower()
        headers[low] = f"{headers[low]}, {value}" if low in headers else value
    path = scope.get("root_path", "") + scope["path"]
    public = state.settings.server.public_url
    if public is None:
        host = headers.get("host", "localhost")
        public = f"{scope.get('scheme', 'http')}://{host}"
    public_url = public + path + (f"?{query}" if query else "")
    req = RawRequest(
        method=request.method,
        path=path,
        query=query,
        headers=headers,
        body=body,
        public_url=public_url,
        content_type=headers.get("content-type", ""),
    )
    reply = await pipeline.handle(source, req, raw_headers)
    response = Response(reply.body, status_code=reply.status, media_type=reply.content_type)
    for key, value in reply.headers:
        response.headers[key] = value
    return response


def routes() -> list[BaseRoute]:
    # GET too: Twilio (GET webhooks) and Vonage (answer_url defaults to GET) use it.
    return [Route("/hooks/{source}", hook, methods=["POST", "GET"])]
