"""``create_app(settings)`` composes the gateway: routes, error handlers and a lifespan that
opens the store, applies the targets and rules declared in config.toml, loads the first
rule snapshot and keeps it fresh, flushes contact counts and runs the scheduled review.
No module-level clients: everything lives on ``app.state.gw``
(``gateway.http.context.AppState``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Final

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway import audit, review
from gateway.contacts import ContactTracker
from gateway.errors import Conflict, DuplicateRule, GatewayError, StoreUnavailable
from gateway.forward import Forwarder
from gateway.http import admin, contacts, events, health, openapi, webhooks
from gateway.http.auth import KeyRing
from gateway.http.context import AppState
from gateway.http.problems import (
    gateway_error_handler,
    http_exception_handler,
    unexpected_error_handler,
)
from gateway.journal import Journal, journal_dir, replay
from gateway.metrics import Metrics, metrics_endpoint
from gateway.models import ORG_MAIL, ORG_PHONE, NewRule, Target
from gateway.pipeline import CertCache, Pipeline
from gateway.providers import build_provider
from gateway.ratelimit import LocalRateLimiter, RateLimiter, RedisRateLimiter
from gateway.recorder import Recorder
from gateway.settings import RuleDecl, Settings
from gateway.snapshot import SnapshotHolder
from gateway.store import PushesInvalidations, Store, open_store
from gateway.store.base import NewAudit
from gateway.store.sqlite import SQLiteStore

log = logging.getLogger("sendergate")

# How often each process counts the events held in quarantine for the
# sendergate_quarantine_events gauge: an index count (SQLite) or a ZCARD (Redis) in a
# background task, never on the request path. A scrape every 15-60 s sees a count at most
# this old.
QUARANTINE_COUNT_INTERVAL_S: Final = 5.0


async def apply_config(store: Store, settings: Settings) -> None:
    """Create or update the targets declared in config.toml and add their rules (source
    ``config``). Idempotent: a restart changes nothing; a rule whose slot is already
    taken (by config or by a user) is left as it is. What it does change is recorded in
    the audit log with actor ``config``."""
    now = datetime.now(UTC)
    entries: list[NewAudit] = []
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
        entry = await _upsert_target(store, target, now)
        if entry is not None:
            entries.append(entry)
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
        added = [r for r in results if not isinstance(r, DuplicateRule)]
        entries.extend(audit.rule_change("config", "rule.create", now, None, r) for r in added)
        log.info("config: %d rules declared, %d added", len(wanted), len(added))
    await audit.record(store, entries)


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


async def _upsert_target(store: Store, target: Target, now: datetime) -> NewAudit | None:
    """Config is the source of truth for the fields it declares on its targets. Returns
    the audit entry of what changed, if anything did."""
    fields = {k: getattr(target, k) for k in _CONFIG_FIELDS}
    if target.kind == "mailbox":
        fields = {k: v for k, v in fields.items() if k not in ("voice_url", "sms_url")}
    else:
        fields.pop("forward_url")
    existing = await store.get_target(target.kind, target.id)
    if existing is None:
        try:
            created = await store.create_target(target)
            return audit.target_change("config", now, None, created)
        except Conflict:  # another replica created it at the same moment
            existing = await store.get_target(target.kind, target.id)
    if existing is not None and any(getattr(existing, k) != v for k, v in fields.items()):
        updated = await store.update_target(target.kind, target.id, fields)
        if updated is not None:
            return audit.target_change("config", now, existing, updated)
    return None


async def _first_load(store: Store, settings: Settings, snapshot: SnapshotHolder) -> bool:
    """Apply config.toml and load the first snapshot. A store that cannot be reached
    (Redis down) does not stop start-up (SPEC §5): False, and the snapshot stays empty
    (webhooks answer 503 so that providers retry) or, with ``cold_start = "fail_open"``,
    the default modes decide until the store answers."""
    try:
        await apply_config(store, settings)
        await snapshot.reload()
    except StoreUnavailable as exc:
        log.warning("store unavailable at start-up, retrying in the background: %s", exc)
        if settings.store.cold_start == "fail_open":
            snapshot.use_defaults()
            log.warning(
                "cold_start = fail_open: deciding with the default modes and no rules "
                "until the store answers"
            )
        return False
    return True


async def _load_when_reachable(
    store: Store,
    settings: Settings,
    snapshot: SnapshotHolder,
    poll_s: float,
    *,
    max_delay_s: float = 5.0,
) -> None:
    """Retry ``_first_load``'s work with backoff until the store answers, then keep the
    snapshot fresh as usual. (The poller starts only then: a snapshot loaded before the
    config is applied would make the replica ready with rules still missing.)"""
    delay = 0.2
    while True:
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay_s)
        try:
            await apply_config(store, settings)
            ruleset = await snapshot.reload()
        except StoreUnavailable:
            continue
        except Exception:  # a bug must not leave the replica without rules for good
            log.exception("loading the first snapshot failed")
            continue
        log.info(
            "store reachable: config applied, %d rules loaded (version %d)",
            ruleset.rule_count,
            ruleset.version,
        )
        break
    await snapshot.run(poll_s)


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


async def _count_quarantine(store: Store, metrics: Metrics, interval_s: float) -> None:
    """Set ``sendergate_quarantine_events`` to the number of quarantined events, now and
    then every ``interval_s``. While the store cannot answer, the gauge keeps its last
    value and the failure is logged once (not once per interval), its end once too."""
    failing = False
    while True:
        try:
            count = await store.count_events("quarantined")
        except Exception as exc:  # an outage, or a bug: neither may end the task
            if not failing:
                failing = True
                log.warning(
                    "counting quarantined events failed; the gauge keeps its last value: %s",
                    exc,
                    exc_info=not isinstance(exc, GatewayError),  # a traceback for a bug
                )
        else:
            metrics.quarantine_events.set(count)
            if failing:
                failing = False
                log.info("counting quarantined events works again")
        await asyncio.sleep(interval_s)


async def _review_schedule(state: AppState, interval_s: float) -> None:
    """``[review] interval``: apply the review every ``interval_s`` (the first run one
    interval after start-up, so that restarts do not run it back to back). Every replica
    runs it; applying twice changes nothing, so they need no coordination."""
    settings = state.settings
    while True:
        await asyncio.sleep(interval_s)
        try:
            result = await review.run_review(
                state.store,
                settings.review,
                apply=True,
                now=state.now(),
                region=settings.default_region,
            )
            if result["written"]:
                await state.snapshot.reload()
            log.info(
                "review: %d contacts reviewed, %d proposals, %d rules written",
                result["reviewed"],
                len(result["proposals"]),
                result["written"],
            )
        except GatewayError as exc:
            log.warning("scheduled review failed: %s", exc)
        except Exception:  # a bug must not stop the schedule for the life of the process
            log.exception("scheduled review failed")


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the background ``tasks`` and wait until each has ended. A task can swallow
    one cancellation (on Python 3.11 ``asyncio.wait_for``, also inside redis-py, returns
    a result that raced with the cancel), so one still running after a moment is
    cancelled again rather than waited for forever."""
    for task in tasks:
        task.cancel()
    pending = set(tasks)
    while pending:
        _, pending = await asyncio.wait(pending, timeout=0.1)
        for task in pending:
            task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _rate_limiter(store: Store) -> RateLimiter:
    """Per-sender rate limits: counted in Redis, shared by the replicas, when the store is
    Redis (falling back to per-process counts while Redis is unreachable); per process
    otherwise."""
    if store.name == "redis":
        from gateway.store.redis import RedisStore  # only Redis deployments load redis-py

        if isinstance(store, RedisStore):
            return RedisRateLimiter(store)
    return LocalRateLimiter()


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The caller hung up before its request body was complete: nobody is left to answer
    and nothing went wrong here, so no error and no traceback in the log (a client that
    keeps doing it must not be able to flood the log)."""
    return Response(status_code=400)


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    clock: Callable[[], float] = time.time,
    quarantine_count_interval_s: float = QUARANTINE_COUNT_INTERVAL_S,
) -> Starlette:
    """Build the gateway for ``settings``. ``store`` and ``clock`` may be injected (tests);
    by default the store comes from ``[store] url``. ``quarantine_count_interval_s``: how
    often the quarantine gauge is recounted (shorter in tests)."""
    the_store = (
        store
        if store is not None
        else open_store(
            settings.store.url,
            key_prefix=settings.store.key_prefix,
            thread_nice=settings.store.thread_nice,
        )
    )
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
    journal = _journal(the_store, settings)
    recorder = Recorder(the_store, journal=journal)
    # Contact counts and per-sender rate limits of the hot path (gateway.contacts,
    # gateway.ratelimit), and the Prometheus metrics (one registry per app).
    contact_tracker = ContactTracker()
    rate_limiter = _rate_limiter(the_store)
    metrics = Metrics()
    pipeline = Pipeline(
        settings,
        store=the_store,
        snapshot=snapshot,
        forwarder=forwarder,
        recorder=recorder,
        providers=providers,
        certs=certs,
        clock=clock,
        contacts=contact_tracker,
        limiter=rate_limiter,
        metrics=metrics,
    )
    state.extras.update(
        pipeline=pipeline,
        recorder=recorder,
        forwarder=forwarder,
        contacts=contact_tracker,
        rate_limiter=rate_limiter,
        metrics=metrics,
    )
    reloads_seen = [0]

    def refresh_gauges() -> None:
        current = snapshot.current
        if snapshot.loaded_at is not None:
            metrics.snapshot_age.set(max(0.0, clock() - snapshot.loaded_at))
        metrics.snapshot_rules.set(0 if current is None else current.rule_count)
        metrics.snapshot_reloads.inc(snapshot.reloads - reloads_seen[0])
        reloads_seen[0] = snapshot.reloads
        metrics.buffered.set(recorder.pending)
        metrics.store_deferring.set(1 if recorder.deferring else 0)
        metrics.journaled.set(recorder.journaled)
        metrics.buffer_overflow.set(recorder.overflowed)

    metrics.on_scrape(refresh_gauges)

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
        if journal is not None:
            # This process's segment first, then what dead processes left (a crash,
            # kill -9): written to the store before the first webhook is taken.
            journal.open()
            await replay(journal, the_store)
        await forwarder.start()
        tasks: list[asyncio.Task[None]] = []
        try:
            poll_s = settings.store.poll_interval_s
            if await _first_load(the_store, settings, snapshot):
                tasks.append(asyncio.create_task(snapshot.run(poll_s)))
            else:
                tasks.append(
                    asyncio.create_task(_load_when_reachable(the_store, settings, snapshot, poll_s))
                )
            if isinstance(the_store, PushesInvalidations):
                tasks.append(asyncio.create_task(the_store.listen(snapshot.notify)))
            tasks.append(asyncio.create_task(recorder.run()))
            tasks.append(
                asyncio.create_task(
                    _purge_events(the_store, settings.store.event_retention_days, clock)
                )
            )
            tasks.append(asyncio.create_task(contact_tracker.run(the_store, interval_s=0.25)))
            # serve --workers N: keeps this worker's gauges current (a no-op otherwise)
            tasks.append(asyncio.create_task(metrics.run()))
            tasks.append(
                asyncio.create_task(
                    _count_quarantine(the_store, metrics, quarantine_count_interval_s)
                )
            )
            if settings.review.interval_s is not None:
                tasks.append(
                    asyncio.create_task(_review_schedule(state, settings.review.interval_s))
                )
            yield
        finally:
            # Finish what was started (bounded), then write what is buffered.
            await pipeline.drain()
            await _cancel_all(tasks)
            with contextlib.suppress(GatewayError):
                await recorder.flush()
            await recorder.close_journal()
            with contextlib.suppress(GatewayError):
                await contact_tracker.flush(the_store)
            if recorder.pending:  # the store is unreachable: say what is lost, and how much
                log.error(
                    "shutdown: %d event records and rule hit counts could not be written "
                    "(store unavailable) and are lost",
                    recorder.pending,
                )
            await forwarder.aclose()
            await the_store.close()

    routes: list[BaseRoute] = [
        *health.routes(),
        Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
        Route("/metrics", metrics_endpoint(metrics), methods=["GET"]),
        *admin.routes(),
        *contacts.routes(),
        *events.routes(),
        *webhooks.routes(),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(webhooks.HookFastPath)],
        lifespan=lifespan,
        exception_handlers={
            GatewayError: gateway_error_handler,
            HTTPException: http_exception_handler,
            ClientDisconnect: _client_gone,
            Exception: unexpected_error_handler,
        },
    )
    app.state.gw = state
    return app


def _journal(store: Store, settings: Settings) -> Journal | None:
    """The quarantine journal (``gateway.journal``): for a SQLite store on a file, unless
    ``[store] quarantine_journal = false``. Redis replicas write drops to Redis directly
    (no checkpoint stalls there, and a replica's local disk may not outlive it)."""
    if not settings.store.quarantine_journal or not isinstance(store, SQLiteStore):
        return None
    if store.path == ":memory:" or store.path.startswith("file:"):
        return None
    return Journal(journal_dir(store.path))


def app_from_env() -> Starlette:
    """Zero-argument factory for ``uvicorn --factory`` (``sendergate serve --workers N``):
    settings come from ``SENDERGATE_CONFIG``."""
    from gateway.settings import load_settings

    return create_app(load_settings())
