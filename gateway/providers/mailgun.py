"""Mailgun inbound routes (``forward("https://…")``): urlencoded or multipart form.

Signature (Mailgun "securing webhooks"): ``signature = hex(HMAC-SHA256(webhook signing
key, timestamp + token))``, all three being form fields. Note that it covers neither the
message nor the recipient: the token replay cache and the timestamp window are what
keep a captured signature from being reused.

Timestamp window: ``options.tolerance_s``, default 24 h. Mailgun retries a failed
delivery for 8 h and whether a retry is signed anew is unknown [U]; a short window
would refuse legitimate retries.

Drop answer: 406, which Mailgun documents as "rejected and it will not be retried"
(a 200 would also stop retries, but 406 also shows the drop in Mailgun's logs as a
rejection). ``drop_status`` overrides it.

Authentication (SPEC §2): Mailgun's own ``X-Mailgun-Spf`` (for the envelope sender
domain) and ``X-Mailgun-Dkim-Check-Result`` headers, the first of each (Mailgun adds
them at the top) [U: whether Mailgun removes copies a sender planted further down is
unverified, hence first only]. A DKIM pass counts only when the message carries exactly
one ``DKIM-Signature``, whose ``d=`` is then the passing domain. ``Authentication-Results``
headers are used only when their authserv-id is listed in ``options.authserv_id``.
"""

from __future__ import annotations

from typing import ClassVar

from gateway.errors import BadRequest, InvalidSignature
from gateway.providers._common import (
    Form,
    MailAuth,
    Options,
    address_domain,
    all_headers,
    collect_trusted_authentication_results,
    dkim_signature_domains,
    drop_status,
    first_header,
    header_from_domain,
    parse_form_body,
    parse_json,
    required_secret,
)
from gateway.providers.base import Answer, ParsedEvent, RawRequest, ReplayGuarded
from gateway.settings import SourceSettings
from gateway.signing import (
    ReplayCache,
    check_timestamp,
    constant_time_equals,
    hmac_sha256,
    parse_unix_timestamp,
)

DEFAULT_TOLERANCE_S = 24 * 3600.0


def mailgun_signature(key: str, timestamp: str, token: str) -> str:
    """Mailgun's webhook signature: hex HMAC-SHA256(key, timestamp + token)."""
    return hmac_sha256(key.encode(), (timestamp + token).encode()).hex()


class MailgunProvider(ReplayGuarded):
    """Mailgun route forwards (inbound email)."""

    name: ClassVar[str] = "mailgun"
    options_allowed: ClassVar[frozenset[str]] = frozenset({"tolerance_s", "authserv_id"})

    def __init__(self, source: SourceSettings, *, replay_cache: ReplayCache | None = None) -> None:
        options = Options(source, self.options_allowed)
        self.source = source
        self._key = required_secret(source, "the webhook signing key as secret")
        self.tolerance_s = options.number("tolerance_s", DEFAULT_TOLERANCE_S, minimum=1)
        self.authserv_ids = options.text_list("authserv_id")
        self.replay_cache = replay_cache or ReplayCache(ttl_s=self.tolerance_s + 300)
        self._drop = Answer(drop_status(source, 406), None, b"")

    def handle(self, req: RawRequest, now: float) -> ParsedEvent:
        form = parse_form_body(req.body, req.content_type, req.media_type, who="Mailgun")
        replay_key = self._verify(form, now) if self.source.verify else None
        return self._parse(form, replay_key)

    def _verify(self, form: Form, now: float) -> str:
        signature = form.get("signature")
        token = form.get("token")
        raw_ts = form.get("timestamp")
        if not signature:
            raise InvalidSignature("missing signature field")
        if not token:
            raise InvalidSignature("missing token field")
        ts = parse_unix_timestamp(raw_ts, what="timestamp field")
        assert raw_ts is not None
        expected = mailgun_signature(self._key, raw_ts, token)
        if not constant_time_equals(expected, signature.strip().lower()):
            raise InvalidSignature("signature does not match timestamp+token under the signing key")
        check_timestamp(ts, now, self.tolerance_s, future_tolerance_s=300, what="timestamp")
        replay_key = "token:" + token
        if self.replay_cache.seen(replay_key, now):
            raise InvalidSignature("replayed request: this Mailgun token was already used")
        return replay_key

    def _parse(self, form: Form, replay_key: str | None) -> ParsedEvent:
        recipient_field = form.get("recipient")
        if not recipient_field or not recipient_field.strip():
            raise BadRequest("missing field recipient")
        recipients = tuple(r.strip() for r in recipient_field.split(",") if r.strip())
        sender_raw = form.get("from") or ""
        envelope = form.get("sender")
        headers = _message_headers(form.get("message-headers"))
        auth = MailAuth()
        spf = first_header(headers, "X-Mailgun-Spf")
        if spf is not None:
            auth.spf = spf.strip().lower()
            auth.spf_domain = address_domain(envelope) if envelope else None
        dkim = first_header(headers, "X-Mailgun-Dkim-Check-Result")
        if dkim is not None:
            domains = dkim_signature_domains(all_headers(headers, "DKIM-Signature"))
            auth.dkim.append((dkim.strip().lower(), domains[0] if len(domains) == 1 else None))
        collect_trusted_authentication_results(auth, headers, self.authserv_ids)
        message_id = first_header(headers, "Message-Id")
        return ParsedEvent(
            channel="email",
            sender_raw=sender_raw,
            recipients_raw=recipients,
            provider_event_id=form.get("token"),
            variant="email",
            authenticated=auth.authenticated(header_from_domain(sender_raw)),
            envelope_sender_raw=envelope,
            auth_results=auth.as_dict(),
            replay_key=replay_key,
            extra={"message_id": message_id} if message_id else {},
        )

    def drop_answer(self, event: ParsedEvent) -> Answer:
        return self._drop


def _message_headers(raw: str | None) -> list[tuple[str, str]]:
    """``message-headers``: a JSON list of ``[name, value]`` pairs, top header first."""
    if not raw:
        return []
    try:
        value = parse_json(raw.encode("utf-8", "surrogatepass"))
    except BadRequest:
        raise BadRequest("message-headers is not a JSON list") from None
    if not isinstance(value, list):
        raise BadRequest("message-headers is not a JSON list")
    pairs: list[tuple[str, str]] = []
    for item in value:
        if (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], str)
        ):
            pairs.append((item[0], item[1]))
    return pairs
