"""``create_app(settings)`` composes the gateway: routes, error handlers and a lifespan that
opens the store, applies the targets and rules declared in config.toml, loads the first
rule snapshot and keeps it fresh. No module-level clients: everything lives on
``app.state.gw`` (``gateway.http.context.AppState``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Route

from gateway.errors import Conflict, DuplicateRule, GatewayError
from gateway.forward import Forwarder
from gateway.http import admin, events, health, openapi, webhooks
from gateway.http.auth import KeyRing
from gateway.http.context import AppState
from gateway.http.problems import (
    gateway_error_handler,
    http_exception_handler,
    unexpected_error_handler,
)
from gateway.models import ORG_MAIL, ORG_PHONE, NewRule, Target
from gateway.pipeline import CertCache, Pipeline
from gateway.providers import build_provider
from gateway.recorder import Recorder
from gateway.settings import RuleDecl, Settings
from gateway.snapshot import SnapshotHolder
from gateway.store import Store, open_store

log = logging.getLogger("sendergate")


async def apply_config(store: Store, settings: Settings) -> None:
    """Create or update the targets declared in config.toml and add their rules (source
    ``config``). Idempotent: a restart changes nothing; a rule whose slot is already
    taken (by config or by a user) is left as it is."""
    now = datetime.now(UTC)
    targets = [
        Target(
            "mailbox",
            mb.address,
            mb.filter_mode,
            mb.enforce,
            now,
            now,
            forward_url=mb.forward_url,
            rate_limit=mb.rate_limit,
        )
        for mb in settings.mailboxes
    ] + [
        Target(
            "number",
            nb.number,
            nb.filter_mode,
            nb.enforce,
            now,
            now,
            voice_url=nb.voice_url,
            sms_url=nb.sms_url,
            rate_limit=nb.rate_limit,
        )
        for nb in settings.numbers
    ]
    for target in targets:
        await _upsert_target(store, target)
    wanted: list[NewRule] = []
    for scope, decls in (
        *((mb.address, mb.rules) for mb in settings.mailboxes),
        *((nb.number, nb.rules) for nb in settings.numbers),
        (ORG_MAIL, settings.org_mail_rules),
        (ORG_PHONE, settings.org_phone_rules),
    ):
        wanted.extend(_new_rule(scope, d) for d in decls)
    if wanted:
        results = await store.create_rules(wanted)
        created = sum(1 for r in results if not isinstance(r, DuplicateRule))
        log.info("config: %d rules declared, %d added", len(wanted), created)


def _new_rule(scope: str, d: RuleDecl) -> NewRule:
    return NewRule(
        scope=scope,
        action=d.action,
        match_type=d.match_type,
        match_target=d.match_target,
        include_subdomains=d.include_subdomains,
        note=d.note,
        source="config",
    )


_CONFIG_FIELDS = ("filter_mode", "enforce", "forward_url", "voice_url", "sms_url", "rate_limit")


async def _upsert_target(store: Store, target: Target) -> None:
    """Config is the source of truth for the fields it declares on its targets."""
    fields = {k: getattr(target, k) for k in _CONFIG_FIELDS}
    if target.kind == "mailbox":
        fields = {k: v for k, v in fields.items() if k not in ("voice_url", "sms_url")}
    else:
        fields.pop("forward_url")
    existing = await store.get_target(target.kind, target.id)
    if existing is None:
        try:
            await store.create_target(target)
            return
        except Conflict:  # another replica created it at the same moment
            existing = await store.get_target(target.kind, target.id)
    if existing is not None and any(getattr(existing, k) != v for k, v in fields.items()):
        await store.update_target(target.kind, target.id, fields)


async def _purge_events(store: Store, days: int, clock: Callable[[], float]) -> None:
    """Delete events older than the retention, at start-up and then hourly."""
    while True:
        cutoff = datetime.fromtimestamp(clock(), UTC) - timedelta(days=days)
        try:
            removed = await store.purge_events(cutoff)
            if removed:
                log.info("purged %d events older than %d days", removed, days)
        except GatewayError as exc:
            log.warning("event purge failed: %s", exc)
        await asyncio.sleep(3600)


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """Build the gateway for ``settings``. ``store`` and ``clock`` may be injected (tests);
    by default the store comes from ``[store] url``."""
    the_store = store if store is not None else open_store(settings.store.url)
    snapshot = SnapshotHolder(the_store, settings, clock=clock)
    state = AppState(
        settings=settings,
        store=the_store,
        snapshot=snapshot,
        keys=KeyRing(settings.api_keys),
        clock=clock,
    )
    # Providers are built now so that a bad secret or option stops start-up, not a webhook.
    certs = CertCache()
    providers = {
        name: build_provider(source, cert_loader=certs.load)
        for name, source in settings.sources.items()
    }
    forwarder = Forwarder(settings.forward.signing_secret, clock=clock)
    recorder = Recorder(the_store)
    pipeline = Pipeline(
        settings,
        store=the_store,
        snapshot=snapshot,
        forwarder=forwarder,
        recorder=recorder,
        providers=providers,
        certs=certs,
        clock=clock,
    )
    state.extras.update(pipeline=pipeline, recorder=recorder, forwarder=forwarder)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for source in settings.sources.values():
            if not source.verify:
                log.warning(
                    "source %r has verify = false: its webhooks are NOT authenticated", source.name
                )
        if settings.sources and settings.forward.signing_secret is None:
            log.warning("[forward] signing_secret is not set: forwarded webhooks are unsigned")
        await the_store.open()
        await forwarder.start()
        tasks: list[asyncio.Task[None]] = []
        try:
            await apply_config(the_store, settings)
            await snapshot.reload()
            tasks.append(asyncio.create_task(snapshot.run(settings.store.poll_interval_s)))
            tasks.append(asyncio.create_task(recorder.run()))
            tasks.append(
                asyncio.create_task(
                    _purge_events(the_store, settings.store.event_retention_days, clock)
                )
            )
            yield
        finally:
            # Finish what was started (bounded), then write what is buffered.
            await pipeline.drain()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            with contextlib.suppress(GatewayError):
                await recorder.flush()
            await forwarder.aclose()
            await the_store.close()

    routes: list[BaseRoute] = [
        *health.routes(),
        Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
        *admin.routes(),
        *events.routes(),
        *webhooks.routes(),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            GatewayError: gateway_error_handler,
            HTTPException: http_exception_handler,
            Exception: unexpected_error_handler,
        },
    )
    app.state.gw = state
    return app


def app_from_env() -> Starlette:
    """Zero-argument factory for ``uvicorn --factory`` (``sendergate serve --workers N``):
    settings come from ``SENDERGATE_CONFIG``."""
    from gateway.settings import load_settings

    return create_app(load_settings())
