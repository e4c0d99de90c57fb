"""One webhook, start to end: verify → parse → normalise → decide → forward or drop →
record. Orchestration only; every step lives in its own module.

The decision never waits on the store: it reads the in-process snapshot (the one
exception: an event to a target with a ``rate_limit`` waits on the limiter, one round trip
to Redis when the store is Redis; ``gateway.ratelimit``). A drop waits on exactly one
local write (the quarantine record, stored before the answer so that nothing dropped is
lost). A delivery waits on the application, and its record is written in the
background. A provider's retry of an event that was already delivered is answered from
the record (in-process cache, then the store) without a second forward.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from gateway import normalise
from gateway.contacts import ContactTracker, contact_scope
from gateway.errors import GatewayError, StoreUnavailable, UpstreamError
from gateway.forward import Forwarder, ForwardResult
from gateway.logs import event_log
from gateway.metrics import Metrics
from gateway.models import Decision, Family, Sender, Target, family_of_channel
from gateway.providers import Answer, ParsedEvent, Provider, RawRequest
from gateway.ratelimit import LocalRateLimiter, RateLimiter
from gateway.recorder import Recorder
from gateway.rules import RuleSet, decide
from gateway.settings import Settings, SourceSettings
from gateway.snapshot import SnapshotHolder
from gateway.store.base import EventRecord, Store, StoredAnswer

log = logging.getLogger("sendergate.pipeline")

# Forward timeouts must end before the provider gives up on us (PROVIDERS §0.5): Telnyx
# messaging wants a 2xx within 2 s, Twilio waits 15 s. A margin is left for our own work.
_PROVIDER_TIMEOUT_CAPS: dict[tuple[str, str | None], float] = {
    ("telnyx", "messaging"): 1.5,
    ("telnyx", "sms"): 1.5,
    ("twilio", None): 14.0,
}


@dataclass(frozen=True, slots=True)
class Reply:
    """What the gateway answers the provider.

    ``wire_headers`` is the header block as sent, computed once at construction (so that
    a drop answer, one constant ``Reply`` per provider answer, costs nothing per
    request): ``content-length``, ``content-type`` (``; charset=utf-8`` added to a
    ``text/`` type without one), then ``headers``, each replacing a header of the same
    name: what ``starlette.responses.Response`` sends for the same values.
    """

    status: int
    content_type: str | None
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    wire_headers: tuple[tuple[bytes, bytes], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "wire_headers", _wire_headers(self))

    @staticmethod
    def of(answer: Answer) -> Reply:
        return Reply(answer.status, answer.content_type, answer.body)


def _wire_headers(reply: Reply) -> tuple[tuple[bytes, bytes], ...]:
    out: list[tuple[bytes, bytes]] = []
    if not (reply.status < 200 or reply.status in (204, 304)):
        out.append((b"content-length", str(len(reply.body)).encode("latin-1")))
    content_type = reply.content_type
    if content_type is not None:
        if content_type.startswith("text/") and "charset=" not in content_type.lower():
            content_type += "; charset=utf-8"
        out.append((b"content-type", content_type.encode("latin-1")))
    for key, value in reply.headers:
        header = (key.lower().encode("latin-1"), value.encode("latin-1"))
        same = [i for i, (name, _) in enumerate(out) if name == header[0]]
        if same:  # replaced where it stood, later duplicates removed
            out[same[0]] = header
            out = [h for i, h in enumerate(out) if i not in same[1:]]
        else:
            out.append(header)
    return tuple(out)


RETRY_NO_RULES = Reply(503, "text/plain; charset=utf-8", b"rules not loaded yet; retry\n")


class CertificateNeeded(Exception):
    """Raised by the SNS certificate loader on a cache miss: the pipeline fetches the
    certificate (asynchronously) and runs the provider again."""

    def __init__(self, url: str) -> None:
        super().__init__(f"certificate {url} not fetched yet")
        self.url = url


class CertCache:
    """SNS signing certificates, fetched once per URL and kept (they rotate rarely)."""

    def __init__(self, max_size: int = 32) -> None:
        self._pems: OrderedDict[str, bytes] = OrderedDict()
        self._max = max_size

    def load(self, url: str) -> bytes:
        pem = self._pems.get(url)
        if pem is None:
            raise CertificateNeeded(url)
        return pem

    def put(self, url: str, pem: bytes) -> None:
        self._pems[url] = pem
        while len(self._pems) > self._max:
            self._pems.popitem(last=False)


class AnswerCache:
    """Recent delivered answers by event id, so that a provider's retry is answered
    without asking the store (bounded LRU).

    An entry is a plain tuple of the reply's fields, not the ``Reply``: tuples of strings,
    bytes and ints are untracked by the garbage collector after its first pass, whereas
    20,000 ``Reply`` objects (and their header tuples) would sit in its oldest generation
    and make every full collection walk them, 10-15 ms pauses of the event loop every few
    seconds on the relay path (docs/performance.md). A hit, a provider's retry, rebuilds
    the ``Reply``: microseconds, and rare."""

    def __init__(self, max_size: int = 20_000) -> None:
        self._items: OrderedDict[str, _CachedReply] = OrderedDict()
        self._max = max_size

    def get(self, key: str) -> Reply | None:
        found = self._items.get(key)
        if found is None:
            return None
        self._items.move_to_end(key)
        return Reply(*found)

    def put(self, key: str, reply: Reply) -> None:
        self._items[key] = (reply.status, reply.content_type, reply.body, reply.headers)
        self._items.move_to_end(key)
        if len(self._items) > self._max:
            self._items.popitem(last=False)


_CachedReply = tuple[int, str | None, bytes, tuple[tuple[str, str], ...]]


class AnswerLookups:
    """Retry-dedupe reads. Every first delivery asks the store whether its event was
    delivered before (by another replica, or before a restart). A store that can answer
    on the spot does (SQLite, ``delivered_answers_nowait``); otherwise the lookups asked
    for during one turn of the event loop go to the store together, as one
    ``delivered_answers`` call (one Redis round trip, or one hop to SQLite's thread when
    its quick read could not be done), instead of one call each: under load that turn
    holds the requests that arrived together. A store error reaches every waiter of the
    batch."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._waiting: dict[str, list[asyncio.Future[StoredAnswer | None]]] = {}
        self._reads: set[asyncio.Task[None]] = set()

    async def get(self, event_id: str) -> StoredAnswer | None:
        now = self._store.delivered_answers_nowait((event_id,))
        if now is not None:  # SQLite: read on the spot, no batch needed
            return now.get(event_id)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[StoredAnswer | None] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._read_batch, loop)
        self._waiting.setdefault(event_id, []).append(future)
        return await future

    def _read_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._waiting = self._waiting, {}
        task = loop.create_task(self._read(batch))
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    async def _read(self, batch: dict[str, list[asyncio.Future[StoredAnswer | None]]]) -> None:
        try:
            found = await self._store.delivered_answers(list(batch))
        except Exception as exc:  # handed to the waiters, who decide
            for futures in batch.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        for event_id, futures in batch.items():
            answer = found.get(event_id)
            for future in futures:
                if not future.done():  # its request may have been cancelled
                    future.set_result(answer)


def event_id_for(source: str, provider_event_id: str | None, recipient: str) -> str:
    """Stable across a provider's retries (so the app's Standard Webhooks ``webhook-id``
    dedupes them too); random when the provider gives no id."""
    if provider_event_id:
        digest = hashlib.sha256(f"{source}\x1f{provider_event_id}\x1f{recipient}".encode())
        return "evt_" + digest.hexdigest()[:26]
    return "evt_" + secrets.token_hex(13)


@dataclass(slots=True)
class Delivery:
    url: str
    items: list[tuple[str, Decision, str]]  # (recipient, decision, event id)


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        snapshot: SnapshotHolder,
        forwarder: Forwarder,
        recorder: Recorder,
        providers: dict[str, Provider],
        certs: CertCache,
        clock: Callable[[], float],
        contacts: ContactTracker | None = None,
        limiter: RateLimiter | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.snapshot = snapshot
        self.forwarder = forwarder
        self.recorder = recorder
        self.providers = providers
        self.certs = certs
        self.clock = clock
        self.answers = AnswerCache()
        self.lookups = AnswerLookups(store)
        self.contacts = contacts if contacts is not None else ContactTracker()
        self.limiter: RateLimiter = limiter if limiter is not None else LocalRateLimiter()
        self.metrics = metrics if metrics is not None else Metrics()
        self._store_down = False
        self._drop_replies: dict[Answer, Reply] = {}  # providers' constant drop answers
        self._background: set[asyncio.Task[Any]] = set()

    # --- entry point -------------------------------------------------------------------

    async def handle(
        self, source: SourceSettings, req: RawRequest, headers: Sequence[tuple[str, str]]
    ) -> Reply:
        provider = self.providers[source.name]
        now = self.clock()
        event = await self._verify_and_parse(provider, req, now)
        if event.handshake is not None:
            return await self._handshake(event)
        if event.passthrough:
            return await self._passthrough(source, req, headers, event)
        ruleset = self.snapshot.current
        if ruleset is None:  # cold start without rules: make the provider retry
            provider.release(event)
            return RETRY_NO_RULES
        return await self._decide_and_act(source, provider, req, headers, event, ruleset, now)

    async def _verify_and_parse(
        self, provider: Provider, req: RawRequest, now: float
    ) -> ParsedEvent:
        for _ in range(3):
            try:
                return provider.handle(req, now)
            except UpstreamError as exc:
                needed = exc.__cause__
                if not isinstance(needed, CertificateNeeded):
                    raise
                fetched = await self.forwarder.fetch(needed.url, timeout_s=5.0)
                if not fetched.success:
                    raise UpstreamError(
                        f"could not fetch the SNS signing certificate {needed.url}: "
                        f"{fetched.detail or fetched.status}"
                    ) from None
                self.certs.put(needed.url, fetched.body)
        raise UpstreamError("could not load the SNS signing certificate")

    # --- handshakes and passthrough -------------------------------------------------------

    async def _handshake(self, event: ParsedEvent) -> Reply:
        assert event.handshake is not None
        result = await self.forwarder.fetch(event.handshake.subscribe_url, timeout_s=5.0)
        if not result.success:
            log.warning(
                "SNS subscription confirmation failed for %s: %s",
                event.handshake.topic_arn,
                result.detail or result.status,
            )
            return Reply(502, "text/plain; charset=utf-8", b"subscription confirmation failed\n")
        log.info("confirmed SNS subscription to %s", event.handshake.topic_arn)
        return Reply(200, None, b"")

    async def _passthrough(
        self,
        source: SourceSettings,
        req: RawRequest,
        headers: Sequence[tuple[str, str]],
        event: ParsedEvent,
    ) -> Reply:
        """Status callbacks and outbound events are not filtered: relay them as they are."""
        if source.forward_url is None:
            return Reply(200, None, b"")
        eid = event_id_for(source.name, event.provider_event_id, "passthrough")
        result = await self.forwarder.forward(
            source.forward_url,
            method=req.method,
            query=req.query,
            headers=headers,
            body=req.body,
            event_id=eid,
            verdict="passthrough",
            rule=None,
            sender="",
            timeout_s=self._timeout(source, event),
        )
        return self._relay(result)

    # --- the decision ------------------------------------------------------------------------

    def _normalised(
        self, event: ParsedEvent, family: Family
    ) -> tuple[Sender, Sender | None, list[str]]:
        region = self.settings.default_region
        if family == "mail":
            sender = normalise.normalise_email(event.sender_raw)
            envelope = (
                normalise.normalise_email(event.envelope_sender_raw)
                if event.envelope_sender_raw
                else None
            )
            recipients = [normalise.normalise_email(r).value for r in event.recipients_raw]
        else:
            sender = normalise.normalise_phone(event.sender_raw, region)
            envelope = None
            recipients = [normalise.normalise_phone(r, region).value for r in event.recipients_raw]
        unique = list(dict.fromkeys(r for r in recipients if r))
        return sender, envelope, unique or ["unknown"]

    async def _decide_and_act(
        self,
        source: SourceSettings,
        provider: Provider,
        req: RawRequest,
        headers: Sequence[tuple[str, str]],
        event: ParsedEvent,
        ruleset: RuleSet,
        now: float,
    ) -> Reply:
        started = time.perf_counter()
        family = family_of_channel(event.channel)
        sender, envelope, recipients = self._normalised(event, family)
        authenticated = event.authenticated or not source.allow_requires_auth
        at = datetime.fromtimestamp(now, UTC)
        deliveries: dict[str, Delivery] = {}
        drops: list[EventRecord] = []
        records: dict[str, tuple[Decision, str | None]] = {}
        for rcpt in recipients:
            decision = decide(
                ruleset,
                sender,
                rcpt,
                family,
                now=now,
                authenticated=authenticated,
                envelope=envelope,
            )
            target = ruleset.target(rcpt)
            if (
                target is not None
                and target.rate_limit
                and decision.verdict != "drop"
                and not await self.limiter.allow(target.id, sender.value, target.rate_limit, now)
            ):
                # Per-sender rate limit: the excess is dropped (and quarantined); a shadow
                # target only records that it would have been. Only targets with a limit
                # await the limiter (one Redis round trip when the store is Redis).
                if target.enforce:
                    decision = decision._replace(verdict="drop", reason="rate_limited")
                else:
                    decision = decision._replace(reason="rate_limited", would_drop=True)
            if decision.rule is not None:
                self.recorder.hit(decision.rule, at)
            self.contacts.observe(
                contact_scope(target, family), sender, family, decision.verdict, at
            )
            self.metrics.event(source.name, event.channel, decision.verdict)
            eid = event_id_for(source.name, event.provider_event_id, rcpt)
            if decision.verdict == "drop":
                drops.append(
                    self._record(
                        source,
                        req,
                        headers,
                        event,
                        sender,
                        envelope,
                        rcpt,
                        decision,
                        eid,
                        "quarantined",
                        at,
                    )
                )
                records[rcpt] = (decision, None)
                continue
            url = self._forward_url(source, target, event)
            records[rcpt] = (decision, url)
            deliveries.setdefault(url, Delivery(url, [])).items.append((rcpt, decision, eid))

        # Normalisation and every recipient's decision (plus rate limit and counting).
        self.metrics.decision_seconds.observe(time.perf_counter() - started)
        if drops:
            await self._quarantine(source, drops)
        if not deliveries:
            answer = provider.drop_answer(event)
            if answer.telnyx_reject:
                self._telnyx_reject(source, event)
            return self._drop_reply(answer)

        replies: list[Reply] = []
        failed = False
        for delivery in deliveries.values():
            reply, ok = await self._deliver(
                source, req, headers, event, sender, envelope, delivery, at
            )
            replies.append(reply)
            failed = failed or not ok
        if failed:
            # Let the provider retry; the parts already delivered are answered from the
            # record on the retry, so nothing is forwarded twice.
            provider.release(event)
            return next(r for r in replies if r.status >= 500)
        return replies[0]

    async def _quarantine(self, source: SourceSettings, drops: list[EventRecord]) -> None:
        """Quarantine before answering: the one local write a drop waits for. With the
        store down (Redis outage) the gateway stays fail-static: the records wait in the
        recorder's bounded buffer and are written when the store is back, and the drop is
        answered as usual rather than making the caller hear an error."""
        try:
            await self.recorder.write_now(drops)
            if self._store_down:
                self._store_down = False
                log.info("quarantine writes recovered")
        except StoreUnavailable as exc:
            self.metrics.store_errors.labels("quarantine").inc()
            if not self._store_down:
                self._store_down = True
                log.warning("store unavailable, quarantine records buffered: %s", exc)
            for record in drops:
                self.recorder.add(record)
        self.metrics.quarantined.labels(source.name).inc(len(drops))
        for record in drops:
            _log_event(record, None)

    async def _deliver(
        self,
        source: SourceSettings,
        req: RawRequest,
        headers: Sequence[tuple[str, str]],
        event: ParsedEvent,
        sender: Sender,
        envelope: Sender | None,
        delivery: Delivery,
        at: datetime,
    ) -> tuple[Reply, bool]:
        first_id = delivery.items[0][2]
        cached = await self._delivered_before(event, first_id)
        if cached is not None:
            return cached, True
        decision0 = delivery.items[0][1]
        verdict = "mute" if any(d.verdict == "mute" for _, d, _ in delivery.items) else "deliver"
        result = await self.forwarder.forward(
            delivery.url,
            method=req.method,
            query=req.query,
            headers=headers,
            body=req.body,
            event_id=first_id,
            verdict=verdict,
            rule=decision0.rule,
            sender=sender.value,
            timeout_s=self._timeout(source, event),
            request_id=first_id,
        )
        reply = self._relay(result)
        outcome = "forwarded" if result.ok else "forward_failed"
        for rcpt, decision, eid in delivery.items:
            record = self._record(
                source,
                req,
                headers,
                event,
                sender,
                envelope,
                rcpt,
                decision,
                eid,
                outcome,
                at,
                forward_url=delivery.url,
                result=result,
            )
            self.recorder.add(record)
            _log_event(record, result)
            if result.ok:
                self.answers.put(eid, reply)
        self.metrics.forward(
            source.name, result.elapsed_ms / 1000.0, None if result.ok else result.error
        )
        if not result.ok:
            log.warning("forward to %s failed (%s): %s", delivery.url, result.error, result.detail)
        await self.recorder.keep_up()  # only when the store has fallen behind
        return reply, result.ok

    async def _delivered_before(self, event: ParsedEvent, eid: str) -> Reply | None:
        if event.provider_event_id is None:
            return None
        cached = self.answers.get(eid)
        if cached is not None:
            return cached
        try:
            found = await self.lookups.get(eid)
        except GatewayError:
            return None  # store down: forwarding again is better than losing the event
        if found is None:
            return None
        reply = Reply(found.status, found.content_type, found.body)
        self.answers.put(eid, reply)
        return reply

    # --- helpers -----------------------------------------------------------------------------

    def _drop_reply(self, answer: Answer) -> Reply:
        """One ``Reply`` per distinct drop answer (providers build theirs once), so that
        its header block is not rebuilt for every dropped event."""
        reply = self._drop_replies.get(answer)
        if reply is None:
            if len(self._drop_replies) >= 256:  # bound it, should a provider vary them
                self._drop_replies.clear()
            reply = self._drop_replies[answer] = Reply.of(answer)
        return reply

    def _forward_url(
        self, source: SourceSettings, target: Target | None, event: ParsedEvent
    ) -> str:
        if target is not None:
            if target.kind == "mailbox" and target.forward_url:
                return target.forward_url
            if target.kind == "number":
                override = target.voice_url if event.channel == "voice" else target.sms_url
                if override:
                    return override
        assert source.forward_url is not None  # settings require it
        return source.forward_url

    def _timeout(self, source: SourceSettings, event: ParsedEvent) -> float:
        wanted = source.timeout_s or self.settings.forward.timeout_s
        cap = _PROVIDER_TIMEOUT_CAPS.get(
            (source.provider, event.variant)
        ) or _PROVIDER_TIMEOUT_CAPS.get((source.provider, None))
        return min(wanted, cap) if cap else wanted

    @staticmethod
    def _relay(result: ForwardResult) -> Reply:
        if not result.ok:
            return Reply(
                result.status,
                "text/plain; charset=utf-8",
                f"application unavailable ({result.error}); retry\n".encode(),
            )
        return Reply(
            result.status,
            result.content_type,
            result.body,
            tuple((k, v) for k, v in result.headers if k.lower() == "content-encoding"),
        )

    def _record(
        self,
        source: SourceSettings,
        req: RawRequest,
        headers: Sequence[tuple[str, str]],
        event: ParsedEvent,
        sender: Sender,
        envelope: Sender | None,
        recipient: str,
        decision: Decision,
        eid: str,
        outcome: str,
        at: datetime,
        *,
        forward_url: str | None = None,
        result: ForwardResult | None = None,
    ) -> EventRecord:
        extra: dict[str, Any] = {"variant": event.variant}
        if event.auth_results:
            extra["auth"] = dict(event.auth_results)
        if sender.prefix:
            extra["sender_prefix"] = sender.prefix
        if event.call_control_id:
            extra["call_control_id"] = event.call_control_id
        if result is not None and result.error:
            extra["forward_error"] = result.error
        return EventRecord(
            id=eid,
            source=source.name,
            provider=source.provider,
            channel=event.channel,
            provider_event_id=event.provider_event_id,
            sender=sender.value,
            envelope_sender=envelope.value if envelope else None,
            recipient=recipient,
            verdict=decision.verdict,
            rule=decision.rule,
            reason=decision.reason,
            mode=decision.mode,
            would_drop=decision.would_drop,
            unauthenticated_allow=decision.unauthenticated_allow,
            outcome=outcome,
            received_at=at,
            method=req.method,
            path=req.path,
            query=req.query,
            content_type=req.content_type,
            headers=tuple(headers),
            body=req.body,
            forward_url=forward_url,
            forward_status=None if result is None else result.upstream_status,
            response_status=None if result is None or not result.ok else result.status,
            response_content_type=None if result is None else result.content_type,
            response_body=None if result is None or not result.ok else result.body,
            extra=extra,
        )

    def _telnyx_reject(self, source: SourceSettings, event: ParsedEvent) -> None:
        """Call Control cannot reject in the answer: ack now, reject through the API."""
        if not event.call_control_id or not source.api_key:
            log.warning(
                "telnyx drop without call_control_id or api_key on source %s: the "
                "call is not rejected",
                source.name,
            )
            return
        base = (source.api_base_url or "https://api.telnyx.com/v2").rstrip("/")
        url = f"{base}/calls/{event.call_control_id}/actions/reject"

        async def reject() -> None:
            result = await self.forwarder.post_json(
                url, json_body={"cause": "CALL_REJECTED"}, bearer=source.api_key, timeout_s=5.0
            )
            if not result.success:
                log.warning(
                    "telnyx reject of %s failed: %s",
                    event.call_control_id,
                    result.detail or result.upstream_status,
                )

        self.spawn(reject())

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait (bounded) for background work such as Telnyx rejects to finish."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=timeout_s)

    # --- quarantine release --------------------------------------------------------------------

    async def release(self, record: EventRecord) -> tuple[EventRecord, ForwardResult]:
        """Forward a quarantined event to its application now (admin action)."""
        source = self.settings.sources.get(record.source)
        url = record.forward_url
        if url is None:
            ruleset = self.snapshot.current
            target = ruleset.target(record.recipient) if ruleset is not None else None
            if source is None:
                raise UpstreamError(f"source {record.source!r} is no longer configured")
            fake = ParsedEvent(
                channel=record.channel,
                sender_raw=record.sender,
                recipients_raw=(record.recipient,),
                provider_event_id=record.provider_event_id,
                variant=str(record.extra.get("variant", "")),
            )
            url = self._forward_url(source, target, fake)
        timeout = (
            source.timeout_s if source and source.timeout_s else self.settings.forward.timeout_s
        )
        result = await self.forwarder.forward(
            url,
            method=record.method,
            query=record.query,
            headers=record.headers,
            body=record.body,
            event_id=record.id,
            verdict="released",
            rule=record.rule,
            sender=record.sender,
            timeout_s=timeout,
            request_id=record.id,
        )
        if not result.ok:
            return record, result
        updated = replace(
            record,
            outcome="released",
            forward_url=url,
            forward_status=result.upstream_status,
            response_status=result.status,
            response_content_type=result.content_type,
            response_body=result.body,
        )
        await self.recorder.write_now([updated])
        return updated, result


def _log_event(record: EventRecord, result: ForwardResult | None) -> None:
    """The one structured log line of a decided event (no bodies, no secrets)."""
    event_log(
        {
            "event": record.id,
            "source": record.source,
            "channel": record.channel,
            "sender": record.sender,
            "target": record.recipient,
            "verdict": record.verdict,
            "rule": record.rule,
            "reason": record.reason,
            "would_drop": record.would_drop,
            "outcome": record.outcome,
            "forward_status": None if result is None else result.upstream_status,
            "forward_ms": None if result is None else round(result.elapsed_ms, 2),
            "forward_error": None if result is None else result.error,
        }
    )
