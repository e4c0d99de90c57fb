"""Plivo Voice (answer_url) and Messaging (message_url) webhooks.

Signature V3 (plivo-python ``plivo/utils/signature_v3.py``):
``X-Plivo-Signature-V3 = base64(HMAC-SHA256(auth token, base + "." + nonce))`` with the
nonce in ``X-Plivo-Signature-V3-Nonce``, where ``base`` is built from the URL Plivo
called:

* ``scheme://host/path``;
* then ``?`` + the URL's query parameters sorted (``k=v&k=v``, each key's values
  sorted), when there is a query **or** a POST body;
* then ``.`` when there are both;
* then, for POST, the body fields sorted and concatenated ``key + value``.

The header may carry several comma-separated signatures (token rotation); any match
passes. There is no timestamp: nonces go into a replay cache (``options.replay_ttl_s``,
default 24 h). V2 (``base64(HMAC-SHA256(token, url + nonce))``, which covers neither
the query nor the body) is provided as a helper for the published vectors only and is
not accepted on requests.
"""

from __future__ import annotations

import base64
from typing import ClassVar
from urllib.parse import parse_qs, urlunsplit

from gateway.errors import BadRequest, InvalidSignature, UnsupportedMediaType
from gateway.providers._common import (
    FORM,
    Form,
    Options,
    is_followup_call,
    parse_urlencoded,
    plus_international,
    required_secret,
    split_url,
)
from gateway.providers.base import (
    XML,
    XML_DECL,
    Answer,
    ParsedEvent,
    RawRequest,
    ReplayGuarded,
)
from gateway.settings import SourceSettings
from gateway.signing import ReplayCache, any_signature_matches, b64decode_strict, hmac_sha256

SIGNATURE_HEADER = "x-plivo-signature-v3"
NONCE_HEADER = "x-plivo-signature-v3-nonce"
DEFAULT_REPLAY_TTL_S = 24 * 3600.0

# Message statuses of delivery reports (outbound): forwarded without filtering.
_DELIVERY_STATUS = frozenset(
    {"queued", "sent", "failed", "delivered", "undelivered", "rejected", "read"}
)


def plivo_v3_base(method: str, url: str, params: dict[str, list[str]]) -> str:
    """The string Plivo V3 signs (before ``"." + nonce``). ``params`` are the POST form
    fields (ignored for GET, whose parameters are in the URL's query)."""
    parts = split_url(url)
    base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    try:
        query = parse_qs(parts.query, keep_blank_values=True)
    except ValueError:
        query = {}
    query_string = "&".join(
        f"{key}={value}" for key in sorted(query) for value in sorted(query[key])
    )
    has_body = method.upper() != "GET" and bool(params)
    if query_string or has_body:
        base += "?" + query_string
    if query_string and has_body:
        base += "."
    if has_body:
        base += "".join(key + value for key in sorted(params) for value in sorted(params[key]))
    return base


def plivo_v3_signature(
    token: str, method: str, url: str, nonce: str, params: dict[str, list[str]]
) -> str:
    """Plivo's V3 signature of a request (for tests and the e2e helpers)."""
    message = f"{plivo_v3_base(method, url, params)}.{nonce}".encode()
    return base64.b64encode(hmac_sha256(token.encode(), message)).decode()


def plivo_v2_signature(token: str, url: str, nonce: str) -> str:
    """Plivo's deprecated V2 signature: ``base64(HMAC-SHA256(token, url + nonce))``."""
    return base64.b64encode(hmac_sha256(token.encode(), (url + nonce).encode())).decode()


class PlivoProvider(ReplayGuarded):
    """Plivo voice and messaging webhooks (form POST or GET), signature V3."""

    name: ClassVar[str] = "plivo"
    options_allowed: ClassVar[frozenset[str]] = frozenset({"replay_ttl_s"})

    def __init__(self, source: SourceSettings, *, replay_cache: ReplayCache | None = None) -> None:
        options = Options(source, self.options_allowed)
        self.source = source
        self._token = required_secret(source, "the (sub)account Auth Token as secret").encode()
        ttl = options.number("replay_ttl_s", DEFAULT_REPLAY_TTL_S, minimum=1)
        self.replay_cache = replay_cache or ReplayCache(ttl_s=ttl)
        self._sms_drop = Answer(200, XML, f"{XML_DECL}<Response/>".encode())
        self._voice_drop = Answer(
            200,
            XML,
            f'{XML_DECL}<Response><Hangup reason="{source.reject_reason}"/></Response>'.encode(),
        )

    def handle(self, req: RawRequest, now: float) -> ParsedEvent:
        method = req.method.upper()
        if self.source.verify:
            if not req.headers.get(SIGNATURE_HEADER):
                raise InvalidSignature("missing X-Plivo-Signature-V3 header")
            if not req.headers.get(NONCE_HEADER):
                raise InvalidSignature("missing X-Plivo-Signature-V3-Nonce header")
        if method == "GET":
            form = parse_urlencoded(req.query, what="query string")
            body_params: dict[str, list[str]] = {}
        elif req.media_type == FORM:
            form = parse_urlencoded(req.body)
            body_params = form.lists()
        else:
            raise UnsupportedMediaType(f"Plivo sends {FORM}, not {req.media_type or 'no type'}")
        replay_key = self._verify(req, method, body_params, now) if self.source.verify else None
        return self._parse(form, replay_key)

    def _verify(
        self, req: RawRequest, method: str, params: dict[str, list[str]], now: float
    ) -> str:
        nonce = req.headers.get(NONCE_HEADER, "")
        message = f"{plivo_v3_base(method, req.public_url, params)}.{nonce}"
        expected = hmac_sha256(self._token, message.encode("utf-8", "surrogatepass"))
        given = [b64decode_strict(s) for s in req.headers.get(SIGNATURE_HEADER, "").split(",")]
        if not any_signature_matches(expected, [g for g in given if g is not None]):
            raise InvalidSignature(
                "X-Plivo-Signature-V3 does not match (check that the public URL is exactly "
                "the URL configured at Plivo, and the Auth Token)"
            )
        replay_key = "nonce:" + nonce
        if self.replay_cache.seen(replay_key, now):
            raise InvalidSignature(
                "replayed request: this X-Plivo-Signature-V3-Nonce was already used"
            )
        return replay_key

    def _parse(self, form: Form, replay_key: str | None) -> ParsedEvent:
        sender = form.get("From")
        recipient = form.get("To")
        recipients = (plus_international(recipient),) if recipient else ()
        call_uuid = form.get("CallUUID")
        message_uuid = form.get("MessageUUID")
        if call_uuid:
            passthrough = bool(form.get("HangupCause")) or is_followup_call(
                form.get("CallStatus"), form.get("Direction")
            )
            if sender is None and not passthrough:
                raise BadRequest("Plivo voice webhook without From")
            return ParsedEvent(
                channel="voice",
                sender_raw=plus_international(sender or ""),
                recipients_raw=recipients,
                provider_event_id=call_uuid,
                variant="voice",
                passthrough=passthrough,
                replay_key=replay_key,
            )
        if message_uuid:
            status = (form.get("Status") or "").lower()
            passthrough = status in _DELIVERY_STATUS
            if not passthrough and (sender is None or recipient is None):
                raise BadRequest("Plivo message webhook without From or To")
            kind = (form.get("Type") or "sms").lower()
            return ParsedEvent(
                channel="sms",
                sender_raw=plus_international(sender or ""),
                recipients_raw=recipients,
                provider_event_id=message_uuid,
                variant="whatsapp" if kind == "whatsapp" else "sms",
                passthrough=passthrough,
                replay_key=replay_key,
                extra={"type": kind},
            )
        raise BadRequest("Plivo webhook without CallUUID or MessageUUID")

    def drop_answer(self, event: ParsedEvent) -> Answer:
        return self._voice_drop if event.channel == "voice" else self._sms_drop
