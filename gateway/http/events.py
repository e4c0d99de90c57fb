"""Events and quarantine: ``/v1/events``, ``/v1/events/{id}``, ``/v1/events/{id}/release``."""

from __future__ import annotations

import base64
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway import normalise
from gateway.errors import Conflict, NotFound, UpstreamError
from gateway.http.admin import iso, json_response
from gateway.http.context import AppState, get_state
from gateway.http.validate import Field, validate_query
from gateway.pipeline import Pipeline
from gateway.recorder import Recorder
from gateway.store.base import EventFilter, EventRecord

EVENTS_QUERY = {
    "verdict": Field("str", choices=("deliver", "mute", "drop")),
    "outcome": Field("str", choices=("forwarded", "quarantined", "forward_failed", "released")),
    "target": Field("str", max_length=320, description="recipient mailbox or number"),
    "sender": Field("str", max_length=1000),
    "since": Field("datetime"),
    "cursor": Field("str", max_length=200),
    "limit": Field("int", minimum=1, maximum=200, description="page size (default 50)"),
}
RELEASABLE = ("quarantined", "forward_failed")


def event_json(ev: EventRecord, *, full: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": ev.id,
        "source": ev.source,
        "provider": ev.provider,
        "channel": ev.channel,
        "provider_event_id": ev.provider_event_id,
        "received_at": iso(ev.received_at),
        "decision": {
            "verdict": ev.verdict,
            "rule": ev.rule,
            "reason": ev.reason,
            "mode": ev.mode,
            "sender": ev.sender,
            "recipient": ev.recipient,
            "channel": ev.channel,
            "would_drop": ev.would_drop,
            "unauthenticated_allow": ev.unauthenticated_allow,
        },
        "sender": ev.sender,
        "envelope_sender": ev.envelope_sender,
        "recipient": ev.recipient,
        "outcome": ev.outcome,
        "forward_url": ev.forward_url,
        "forward_status": ev.forward_status,
        "body_size": len(ev.body),
        "extra": dict(ev.extra),
    }
    if full:
        out["method"] = ev.method
        out["path"] = ev.path
        out["query"] = ev.query
        out["content_type"] = ev.content_type
        out["headers"] = [list(h) for h in ev.headers]
        try:
            out["body"] = ev.body.decode("utf-8")
            out["body_encoding"] = "utf-8"
        except UnicodeDecodeError:
            out["body"] = base64.b64encode(ev.body).decode()
            out["body_encoding"] = "base64"
    return out


async def _settled(state: AppState) -> None:
    """Read-your-writes: the events this process answered (drops journaled, forwards
    buffered) are in the store before it is read (``Recorder.settle``). Events answered
    by other workers or replicas show as soon as their own process wrote them."""
    recorder = state.extras.get("recorder")
    if isinstance(recorder, Recorder):
        await recorder.settle()


def _normalise_party(raw: str, region: str) -> str:
    if "@" in raw:
        return normalise.normalise_email(raw).value
    return normalise.normalise_phone(raw, region).value


async def list_events(request: Request) -> Response:
    state = get_state(request)
    who = state.keys.authenticate(request)
    q = validate_query(request.query_params, EVENTS_QUERY)
    region = state.settings.default_region
    target = _normalise_party(q["target"], region) if "target" in q else None
    if target is not None:
        who.require_target(target)
    flt = EventFilter(
        verdict=q.get("verdict"),
        outcome=q.get("outcome"),
        target=target,
        targets=None if who.is_admin else tuple(sorted(who.targets)),
        sender=_normalise_party(q["sender"], region) if "sender" in q else None,
        since=q.get("since"),
    )
    await _settled(state)
    items, cursor = await state.store.list_events(
        flt, cursor=q.get("cursor"), limit=int(q.get("limit", 50))
    )
    return json_response({"items": [event_json(e) for e in items], "next_cursor": cursor})


async def _event(request: Request) -> EventRecord:
    state = get_state(request)
    who = state.keys.authenticate(request)
    await _settled(state)
    found = await state.store.get_event(request.path_params["event_id"])
    if found is None:
        raise NotFound(f"no event {request.path_params['event_id']}")
    who.require_target(found.recipient)
    return found


async def get_event(request: Request) -> Response:
    return json_response(event_json(await _event(request), full=True))


async def release_event(request: Request) -> Response:
    state = get_state(request)
    state.keys.authenticate(request).require_admin("releasing quarantine")
    found = await _event(request)
    if found.outcome not in RELEASABLE:
        raise Conflict(
            f"event {found.id} is {found.outcome}; only quarantined or "
            "forward_failed events can be released"
        )
    pipeline = state.extras["pipeline"]
    assert isinstance(pipeline, Pipeline)
    updated, result = await pipeline.release(found)
    if not result.ok:
        raise UpstreamError(
            f"the application did not accept the event ({result.error}: "
            f"{result.detail or result.upstream_status}); it stays in quarantine",
            forward_status=result.upstream_status,
        )
    return json_response({**event_json(updated), "response_status": result.status})


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/events", list_events, methods=["GET"]),
        Route("/v1/events/{event_id}", get_event, methods=["GET"]),
        Route("/v1/events/{event_id}/release", release_event, methods=["POST"]),
    ]
