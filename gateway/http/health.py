"""Liveness and readiness, split as svix does: liveness touches nothing, readiness names
each dependency and answers 503 when one is failing."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.errors import StoreUnavailable
from gateway.http.context import get_state
from gateway.recorder import Recorder

_LIVE = Response(b'{"status":"ok"}', media_type="application/json")


async def healthz(request: Request) -> Response:
    return Response(_LIVE.body, media_type="application/json")


async def readyz(request: Request) -> Response:
    state = get_state(request)
    checks: dict[str, Any] = {}
    ready = True
    try:
        await state.store.ping()
        checks[state.store.name] = {"status": "ok"}
    except StoreUnavailable as exc:
        checks[state.store.name] = {"status": "failing", "detail": exc.detail}
        ready = False
    snap = state.snapshot.current
    if snap is None:
        checks["snapshot"] = {"status": "failing", "detail": "no rules loaded yet"}
        ready = False
    elif state.snapshot.defaults_only:
        checks["snapshot"] = {
            "status": "failing",
            "detail": "no rules loaded yet; deciding with the default modes (cold_start = "
            "fail_open)",
        }
        ready = False
    else:
        age = None if state.snapshot.loaded_at is None else state.clock() - state.snapshot.loaded_at
        checks["snapshot"] = {
            "status": "ok",
            "version": snap.version,
            "rules": snap.rule_count,
            "age_s": None if age is None else round(age, 3),
        }
        if state.snapshot.last_error is not None:  # deciding from the last one (fail-static)
            checks["snapshot"]["refresh_error"] = state.snapshot.last_error
    recorder = state.extras.get("recorder")
    if isinstance(recorder, Recorder):
        # Informational: what waits to be written (e.g. while the store is down), what
        # was lost because the buffer was full, and quarantine records that are in the
        # journal but not yet in the store. Buffering is not a reason to be unready.
        checks["recorder"] = {
            "status": "ok",
            "pending": recorder.pending,
            "journaled": recorder.journaled,
            "deferring": recorder.deferring,  # the last write to the store failed
            "overflowed": recorder.overflowed,
        }
    body = {"status": "ok" if ready else "failing", "checks": checks}
    return Response(
        json.dumps(body).encode(),
        status_code=200 if ready else 503,
        media_type="application/json",
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/readyz", readyz, methods=["GET", "HEAD"]),
    ]
