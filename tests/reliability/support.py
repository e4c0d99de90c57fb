"""What the reliability suite runs against and sends.

* ``ServeProcess``: one ``python -m gateway serve`` subprocess (any ``serve`` options), its
  stdout and stderr (JSON lines) in a log file.
* ``gateway_config``: a config with four providers (Twilio voice and SMS, Telnyx messaging,
  Mailgun, Postmark), one number and one mailbox, and org-wide block rules on
  ``+1900…`` callers and ``spam.example`` mail. Providers sign the public URL
  ``PUBLIC_URL``, so any replica verifies a request, as behind a load balancer.
* ``make_event``: one signed webhook with a unique provider event id, from an allowed or a
  blocked sender, and what its provider must finally hear.
* ``ProviderClient``: sends events the way a provider does: bounded concurrency, and on a
  retryable answer (5xx or a connection error) the same request again later, with
  backoff, to the next replica in turn (a load balancer's choice), a bounded number of
  times. Every attempt is kept.
* ``account``: matches what was sent with what the application received and what the
  store quarantined, and renders the accounting table.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from gateway.pipeline import event_id_for
from tests import providers_support as ps

ROOT = Path(__file__).resolve().parents[2]
PUBLIC_URL = "https://hooks.acme.example"
ADMIN_KEY = "reliability-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
TWILIO_TOKEN = "reliability-twilio-token"
MAILGUN_KEY = "reliability-mailgun-key"
POSTMARK_AUTH = "inbound:reliability-postmark-pass"
GENERIC_SECRET = "reliability-generic-secret"
SIGNING_SECRET = "whsec_" + "cmVsaWFiaWxpdHktc2lnbmluZy1zZWNyZXQtMzJieXRlcyE="
SECRETS = (ADMIN_KEY, TWILIO_TOKEN, MAILGUN_KEY, POSTMARK_AUTH, GENERIC_SECRET, SIGNING_SECRET)
NUMBER = "+14155550100"
MAILBOX = "sales.team@acme.example"
TWIML = b"<Response><Say>hello from the app</Say></Response>"
KINDS = ("twilio-voice", "twilio-sms", "telnyx-sms", "mailgun", "postmark")


def wait_for(check: Callable[[], Any], what: str, timeout_s: float = 10.0) -> Any:
    """Poll ``check`` until it answers something true; that answer (AssertionError after
    ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.02)


# --- the gateway as a process -----------------------------------------------------------------


@dataclass
class ServeProcess:
    """``python -m gateway serve --config CONFIG --port PORT *args``; output in ``log``."""

    name: str
    config: Path
    port: int
    log: Path
    args: Sequence[str] = ()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        drop = ("SENDERGATE_CONFIG", "PROMETHEUS_MULTIPROC_DIR")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        command = [sys.executable, "-m", "gateway", "serve", "--config", str(self.config)]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*command, "--port", str(self.port), *self.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env=env,
            )

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            assert self.alive, f"{self.name} exited:\n{self.tail()}"
            return False

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        wait_for(self.ready, f"{self.name} ready", timeout_s)

    def readyz(self) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(f"{self.url}/readyz", timeout=5).json()
        return answer

    def settled(self) -> bool:
        """Ready, and what waited in its write buffer and quarantine journal during an
        outage is written: its last write to the store succeeded (a flush takes the whole
        buffer), and nothing is journaled. Under load the buffer is seldom empty (it is
        written every 200 ms), so its size says little."""
        try:
            ready = self.readyz()
        except httpx.TransportError:
            return False
        recorder = ready["checks"]["recorder"]
        return bool(
            ready["status"] == "ok" and not recorder["deferring"] and recorder["journaled"] == 0
        )

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, wait; the exit status (-15 when it ended by the signal)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"{self.name} did not stop within {timeout_s} s") from None

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        """Best-effort stop for fixture teardown."""
        if self.alive:
            with contextlib.suppress(AssertionError):
                self.terminate(20)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, chars: int = 4000) -> str:
        return self.text()[-chars:]

    def log_lines(self) -> list[dict[str, Any]]:
        """Every output line as JSON (a line that is not JSON: ``{"raw": line}``)."""
        out: list[dict[str, Any]] = []
        for line in self.text().splitlines():
            try:
                parsed = json.loads(line)
            except ValueError:
                parsed = None
            out.append(parsed if isinstance(parsed, dict) else {"raw": line})
        return out


def gateway_config(
    *,
    port: int,
    store_url: str,
    app_url: str,
    telnyx_public_key: str,
    key_prefix: str = "rel:",
    forward_timeout_s: float = 3.0,
    max_body_bytes: int = 65536,
) -> str:
    digest = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()
    prefix = f'key_prefix = "{key_prefix}"' if store_url.startswith("redis") else ""
    return f"""
[server]
host = "127.0.0.1"
port = {port}
public_url = "{PUBLIC_URL}"
max_body_bytes = {max_body_bytes}

[store]
url = "{store_url}"
{prefix}
poll_interval_s = 0.5

[forward]
signing_secret = "{SIGNING_SECRET}"
timeout_s = {forward_timeout_s}

[[api_keys]]
name = "ops"
sha256 = "{digest}"
role = "admin"

[sources.twilio]
provider = "twilio"
secret = "{TWILIO_TOKEN}"
forward_url = "{app_url}/twilio"

[sources.telnyx]
provider = "telnyx"
secret = "{telnyx_public_key}"
forward_url = "{app_url}/telnyx"

[sources.mailgun]
provider = "mailgun"
secret = "{MAILGUN_KEY}"
forward_url = "{app_url}/mailgun"

[sources.postmark]
provider = "postmark"
secret = "{POSTMARK_AUTH}"
forward_url = "{app_url}/postmark"
drop_status = 403

[sources.generic]
provider = "generic"
secret = "{GENERIC_SECRET}"
forward_url = "{app_url}/generic"
[sources.generic.options]
channel = "sms"
sender_field = "from"
recipient_field = "to"
event_id_field = "id"

[[numbers]]
number = "{NUMBER}"

[[mailboxes]]
address = "{MAILBOX}"

[[org.phone_rules]]
action = "block"
match_type = "number_prefix"
match_target = "+1900"

[[org.mail_rules]]
action = "block"
match_type = "domain"
match_target = "spam.example"
"""


# --- events -----------------------------------------------------------------------------------


@dataclass
class Attempt:
    replica: str
    at: float
    status: int | None  # None: no answer (connection refused, reset, ...)
    error: str | None = None
    body: bytes = b""

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status >= 500


@dataclass(eq=False)  # identity: an event is itself, whatever it holds
class Event:
    """One webhook as its provider sends it, every time it sends it."""

    kind: str  # one of KINDS
    source: str
    allowed: bool
    eid: str  # the gateway's event id (and webhook-id of the forward)
    path: str  # path and query, relative to any replica
    headers: dict[str, str]
    body: bytes
    final_status: int  # what the provider must finally hear
    final_body: bytes  # ... and its body: exactly the app's answer, or in the drop answer
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def answer(self) -> Attempt | None:
        """The last attempt, if it was not retryable (the provider's final answer)."""
        if self.attempts and not self.attempts[-1].retryable:
            return self.attempts[-1]
        return None

    @property
    def retried(self) -> bool:
        return len(self.attempts) > 1

    @property
    def lost_an_answer(self) -> bool:
        """Some attempt ended without anyone knowing whether the application got the
        forward: the provider lost its connection (killed replica), or the gateway lost
        the application's (502: refused, reset or closed before answering; 504: timeout).
        Only such an event may reach the application twice (at-least-once)."""
        return any(a.status in (None, 502, 504) for a in self.attempts)


class EventFactory:
    """Signed webhooks with unique provider event ids; ``keys`` is the Telnyx key pair
    whose public half is in the gateway's config."""

    def __init__(self, keys: ps.Ed25519Keys, seed: int) -> None:
        self.keys = keys
        self.rng = random.Random(seed)
        self.serial = itertools.count(1)

    def phone_sender(self, allowed: bool) -> str:
        n = next(self.serial)
        return f"+1415{n % 10_000_000:07d}" if allowed else f"+1900{n % 10_000_000:07d}"

    def mail_sender(self, allowed: bool) -> str:
        n = next(self.serial)
        return f"person{n}@partner.example" if allowed else f"promo{n}@spam.example"

    def make(self, kind: str, allowed: bool) -> Event:
        url = f"{PUBLIC_URL}/hooks/"
        if kind in ("twilio-voice", "twilio-sms"):
            sender = self.phone_sender(allowed)
            if kind == "twilio-voice":
                sid = "CA" + secrets.token_hex(16)
                params = ps.twilio_voice_params(sender, NUMBER)
                params[0] = ("CallSid", sid)
                drop = (200, b'<Reject reason="rejected"/>')
            else:
                sid = "SM" + secrets.token_hex(16)
                params = ps.twilio_sms_params(sender, NUMBER)
                params[0] = ("MessageSid", sid)
                drop = (200, b"<Response/>")
            signed = ps.twilio_request(TWILIO_TOKEN, url + "twilio", params)
            return self._event(kind, "twilio", allowed, sid, NUMBER, signed, drop, TWIML)
        if kind == "telnyx-sms":
            body = json.loads(ps.telnyx_message_received(self.phone_sender(allowed), NUMBER))
            event_id = str(uuid.uuid4())
            body["data"]["id"] = event_id
            raw = json.dumps(body).encode()
            signed = ps.telnyx_request(self.keys, url + "telnyx", raw, int(time.time()))
            return self._event(kind, "telnyx", allowed, event_id, NUMBER, signed, (200, b""))
        if kind == "mailgun":
            sender = self.mail_sender(allowed)
            fields = ps.mailgun_fields(
                recipient=MAILBOX,
                sender=sender,
                from_header=f"Someone <{sender}>",
                dkim_domain=sender.partition("@")[2],
            )
            token = secrets.token_hex(25)
            signed = ps.mailgun_request(
                MAILGUN_KEY, url + "mailgun", fields, int(time.time()), token=token
            )
            return self._event(kind, "mailgun", allowed, token, MAILBOX, signed, (406, b""))
        if kind == "postmark":
            payload = ps.postmark_payload(from_email=self.mail_sender(allowed))
            message_id = str(uuid.uuid4())
            payload["MessageID"] = message_id
            signed = ps.postmark_request(POSTMARK_AUTH, url + "postmark", payload)
            return self._event(kind, "postmark", allowed, message_id, MAILBOX, signed, (403, b""))
        raise AssertionError(f"unknown kind {kind}")

    def _event(
        self,
        kind: str,
        source: str,
        allowed: bool,
        provider_event_id: str,
        recipient: str,
        signed: ps.SignedRequest,
        drop: tuple[int, bytes],
        app_body: bytes = b"ok",
    ) -> Event:
        path = signed.url[len(PUBLIC_URL) :]
        status, body = (200, app_body) if allowed else drop
        return Event(
            kind=kind,
            source=source,
            allowed=allowed,
            eid=event_id_for(source, provider_event_id, recipient),
            path=path,
            headers=dict(signed.headers),
            body=signed.body,
            final_status=status,
            final_body=body,
        )

    def mix(self, n: int, blocked_share: float = 0.35) -> list[Event]:
        """``n`` events, kinds in turn, about ``blocked_share`` of them from blocked
        senders."""
        return [
            self.make(KINDS[i % len(KINDS)], self.rng.random() >= blocked_share) for i in range(n)
        ]


# --- the provider-like client ----------------------------------------------------------------


class ProviderClient:
    """Sends events as a provider would (see the module docstring)."""

    def __init__(
        self,
        replicas: Sequence[tuple[str, str]],  # (name, base URL)
        *,
        concurrency: int = 8,
        max_attempts: int = 40,
        first_backoff_s: float = 0.05,
        max_backoff_s: float = 0.6,
        timeout_s: float = 15.0,
        seed: int = 0,
    ) -> None:
        self.replicas = list(replicas)
        self.turn = itertools.count()
        self.gate = asyncio.Semaphore(concurrency)
        self.max_attempts = max_attempts
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self.rng = random.Random(seed)
        self.client = httpx.AsyncClient(
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def send(self, event: Event) -> None:
        """Until a non-retryable answer, or ``max_attempts``."""
        for n in range(self.max_attempts):
            name, base = self.replicas[next(self.turn) % len(self.replicas)]
            async with self.gate:
                at = time.monotonic()
                try:
                    r = await self.client.post(
                        base + event.path, headers=event.headers, content=event.body
                    )
                except httpx.TransportError as exc:
                    event.attempts.append(Attempt(name, at, None, type(exc).__name__))
                else:
                    event.attempts.append(Attempt(name, at, r.status_code, body=r.content))
            if not event.attempts[-1].retryable:
                return
            backoff = min(self.max_backoff_s, self.first_backoff_s * 2**n)
            await asyncio.sleep(backoff * (0.5 + self.rng.random()))

    async def run(
        self,
        make: Callable[[], Event],
        *,
        rate_per_s: float,
        until: Callable[[], bool],
        max_events: int,
    ) -> list[Event]:
        """Start a new event every ``1 / rate_per_s`` seconds until ``until()`` or
        ``max_events``; return them all once every one has its final answer."""
        events: list[Event] = []
        tasks: list[asyncio.Task[None]] = []
        interval = 1.0 / rate_per_s
        next_at = time.monotonic()
        while len(events) < max_events and not until():
            event = make()
            events.append(event)
            tasks.append(asyncio.create_task(self.send(event)))
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*tasks)
        return events


# --- accounting -------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    sent: int = 0
    allowed: int = 0
    blocked: int = 0
    delivered: int = 0
    quarantined: int = 0
    retried_delivered: int = 0
    retried_quarantined: int = 0
    duplicates: int = 0
    lost: int = 0
    leaked: int = 0

    COLUMNS = (
        ("provider", "name"),
        ("sent", "sent"),
        ("allowed", "allowed"),
        ("blocked", "blocked"),
        ("delivered", "delivered"),
        ("quarantined", "quarantined"),
        ("retried→delivered", "retried_delivered"),
        ("retried→quarantined", "retried_quarantined"),
        ("duplicates", "duplicates"),
        ("lost", "lost"),
        ("leaked", "leaked"),
    )

    def add(self, other: Row) -> None:
        for _, attr in self.COLUMNS[1:]:
            setattr(self, attr, getattr(self, attr) + getattr(other, attr))


@dataclass
class Accounting:
    rows: dict[str, Row]
    total: Row
    lost: list[Event]  # allowed and never delivered, blocked and never quarantined
    leaked: list[Event]  # blocked, yet the application received it
    duplicated: list[Event]  # delivered more than once (same webhook-id)
    wrong_answer: list[Event]  # the provider's final answer is not what it should be
    attempts: Counter[str]  # retryable answers by kind: "502", "503", "ConnectError", ...

    def table(self, title: str) -> str:
        rows = [*self.rows.values(), self.total]
        cells = [[str(getattr(r, attr)) for _, attr in Row.COLUMNS] for r in rows]
        heads = [h for h, _ in Row.COLUMNS]
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]

        def line(values: Sequence[str]) -> str:
            return "  ".join(
                v.ljust(w) if i == 0 else v.rjust(w)
                for i, (v, w) in enumerate(zip(values, widths, strict=True))
            )

        out = [title, line(heads), line(["-" * w for w in widths])]
        out += [line(c) for c in cells[:-1]]
        out += [line(["-" * w for w in widths]), line(cells[-1])]
        retryable = ", ".join(f"{k} ×{v}" for k, v in sorted(self.attempts.items())) or "none"
        out.append(f"retryable answers the providers got (then retried): {retryable}")
        return "\n".join(out)


def account(
    events: Iterable[Event],
    delivered_ids: Iterable[str],
    quarantined_ids: Iterable[str],
) -> Accounting:
    """``delivered_ids``: the ``X-SenderGate-Event-Id`` of every request the application
    received (repeats included); ``quarantined_ids``: the quarantined events' ids."""
    seen = Counter(delivered_ids)
    quarantined = set(quarantined_ids)
    rows = {kind: Row(kind) for kind in KINDS}
    total = Row("total")
    acc = Accounting(rows, total, [], [], [], [], Counter())
    for event in events:
        row = rows[event.kind]
        row.sent += 1
        for attempt in event.attempts:
            if attempt.retryable:
                acc.attempts[str(attempt.status) if attempt.status else str(attempt.error)] += 1
        answer = event.answer
        if (
            answer is None
            or answer.status != event.final_status
            or (event.allowed and answer.body != event.final_body)
            or (not event.allowed and event.final_body not in answer.body)
        ):
            acc.wrong_answer.append(event)
        times = seen.get(event.eid, 0)
        if event.allowed:
            row.allowed += 1
            if times and answer is not None:
                row.delivered += 1
                row.retried_delivered += event.retried
            else:
                row.lost += 1
                acc.lost.append(event)
            if times > 1:
                row.duplicates += 1
                acc.duplicated.append(event)
        else:
            row.blocked += 1
            if times:
                row.leaked += 1
                acc.leaked.append(event)
            if event.eid in quarantined and answer is not None:
                row.quarantined += 1
                row.retried_quarantined += event.retried
            else:
                row.lost += 1
                acc.lost.append(event)
    for row in rows.values():
        total.add(row)
    return acc


def events_with_outcome(base_url: str, outcome: str) -> list[dict[str, Any]]:
    """Every event the store holds with ``outcome``, through ``GET /v1/events``."""
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(1000):
        params: dict[str, Any] = {"outcome": outcome, "limit": 200}
        if cursor:
            params["cursor"] = cursor
        r = httpx.get(f"{base_url}/v1/events", params=params, headers=ADMIN, timeout=10)
        assert r.status_code == 200, r.text
        page = r.json()
        out += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return out
    raise AssertionError("more than 1000 pages of events")
