"""Twilio Voice and Messaging (SMS, WhatsApp) webhooks.

Signature (twilio-python ``request_validator.py``): ``X-Twilio-Signature`` =
``base64(HMAC-SHA1(auth token, url + Σ sorted(key + value)))`` where the URL is the one
Twilio called, query included, and the sum runs over the POST form fields (none for
GET). Twilio's back end is inconsistent about the default port, so the URL is tried
with and without it, as the SDK does. JSON bodies carry ``bodySHA256=<hex sha256 of the
body>`` in the URL instead: the body hash is checked and the URL alone is signed.
A request carrying ``X-Twilio-Webhooks-Signature-Settings: ...,algorithm=HMAC_SHA256``
(shared-key signing, SDK ≥ 9.x) is checked with HMAC-SHA256 under the same secret.

There is no timestamp or nonce in the scheme, so no replay window: the pipeline's
CallSid/MessageSid dedupe is the replay guard.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

from gateway.errors import BadRequest, InvalidSignature, UnsupportedMediaType
from gateway.providers._common import (
    FORM,
    JSON,
    Form,
    Options,
    is_followup_call,
    parse_json,
    parse_urlencoded,
    required_secret,
    scalar_text,
    split_url,
)
from gateway.providers.base import XML, XML_DECL, Answer, ParsedEvent, RawRequest
from gateway.settings import SourceSettings
from gateway.signing import any_signature_matches, b64decode_strict, hmac_sha1, hmac_sha256

# Statuses of outbound messages and delivery reports: forwarded without filtering.
_OUTBOUND_MESSAGE_STATUS = frozenset(
    {
        "accepted",
        "scheduled",
        "queued",
        "sending",
        "sent",
        "failed",
        "delivered",
        "undelivered",
        "read",
        "canceled",
        "partially_delivered",
    }
)


def twilio_signature(
    token: str, url: str, params: list[tuple[str, str]] | None = None, *, sha256: bool = False
) -> str:
    """Twilio's signature of ``url`` and form ``params``, exactly as the SDK computes it:
    keys sorted, each key's distinct values sorted (duplicates collapse)."""
    return base64.b64encode(_digest(token.encode(), _signing_string(url, params), sha256)).decode()


def _signing_string(url: str, params: list[tuple[str, str]] | None, *, dedupe: bool = True) -> str:
    if not params:
        return url
    # Sorting the (key, value) pairs orders keys, then each key's values: the SDK's
    # order; a set first collapses identical pairs as the SDK does.
    pairs = sorted(set(params)) if dedupe else sorted(params)
    return url + "".join([key + value for key, value in pairs])


def _digest(key: bytes, text: str, sha256: bool) -> bytes:
    message = text.encode("utf-8", "surrogatepass")
    return hmac_sha256(key, message) if sha256 else hmac_sha1(key, message)


def url_variants(url: str) -> list[str]:
    """The URL as given, without its port, and with the scheme's default port."""
    variants = [url]
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return variants
    netloc = parts.netloc
    if port is not None:
        without = parts._replace(netloc=netloc.rpartition(":")[0])
        variants += [without.geturl(), parts.geturl()]
    elif parts.scheme in ("http", "https"):
        default = 443 if parts.scheme == "https" else 80
        variants += [parts.geturl(), parts._replace(netloc=f"{netloc}:{default}").geturl()]
    return list(dict.fromkeys(variants))


@functools.lru_cache(maxsize=256)
def _url_variants(url: str) -> tuple[str, ...]:
    return tuple(url_variants(url))  # a source's public URL rarely changes: parse it once


class TwilioProvider:
    """Twilio Voice and Messaging webhooks (form POST, GET, or JSON with bodySHA256)."""

    name: ClassVar[str] = "twilio"
    options_allowed: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, source: SourceSettings) -> None:
        Options(source, self.options_allowed)
        self.source = source
        self._token = required_secret(source, "the account Auth Token as secret").encode()
        self._sms_drop = Answer(200, XML, f"{XML_DECL}<Response/>".encode())
        reason = source.reject_reason
        self._voice_drop = Answer(
            200, XML, f'{XML_DECL}<Response><Reject reason="{reason}"/></Response>'.encode()
        )

    # --- verify + parse -----------------------------------------------------------------

    def handle(self, req: RawRequest, now: float) -> ParsedEvent:
        method = req.method.upper()
        signature = req.headers.get("x-twilio-signature")
        if self.source.verify and not signature:
            raise InvalidSignature("missing X-Twilio-Signature header")
        is_json = False
        if method == "GET":
            form = parse_urlencoded(req.query, what="query string")
            signed_params: list[tuple[str, str]] = []
        elif req.media_type == FORM:
            form = parse_urlencoded(req.body)
            signed_params = form.pairs
        elif req.media_type == JSON:
            is_json = True
            form = Form([])
            signed_params = []
        else:
            raise UnsupportedMediaType(
                f"Twilio sends {FORM} (or JSON with bodySHA256), not {req.media_type or 'no type'}"
            )
        if self.source.verify:
            assert signature is not None
            self._verify(req, signature, signed_params, is_json=is_json)
        if is_json:
            form = _json_as_form(parse_json(req.body))
        return self._parse(form, is_json=is_json)

    def _verify(
        self, req: RawRequest, signature: str, params: list[tuple[str, str]], *, is_json: bool
    ) -> None:
        algorithm = _algorithm(req.headers.get("x-twilio-webhooks-signature-settings"))
        if algorithm not in ("HMAC_SHA1", "HMAC_SHA256"):
            raise InvalidSignature(f"unsupported Twilio signature algorithm {algorithm!r}")
        sha256 = algorithm == "HMAC_SHA256"
        given = b64decode_strict(signature)
        if given is None:
            raise InvalidSignature("X-Twilio-Signature is not base64")
        if is_json:
            self._verify_body_hash(req)
        urls = _url_variants(req.public_url)
        signed = _signing_string("", params)  # the same for every URL variant
        strings = [u + signed for u in urls]
        if _has_duplicate_pairs(params):
            # The SDK collapses repeated identical pairs; accept the plain form too.
            signed = _signing_string("", params, dedupe=False)
            strings += [u + signed for u in urls]
        expected = [_digest(self._token, s, sha256) for s in strings]
        if not any_signature_matches(given, expected):
            raise InvalidSignature(
                "X-Twilio-Signature does not match (check that the public URL, including "
                "scheme, port and query, is exactly the webhook URL configured at Twilio)"
            )

    def _verify_body_hash(self, req: RawRequest) -> None:
        query = split_url(req.public_url).query
        try:
            claimed = parse_qs(query).get("bodySHA256", [])
        except ValueError:
            claimed = []
        if not claimed:
            raise InvalidSignature("JSON body without bodySHA256 in the URL query")
        actual = hashlib.sha256(req.body).hexdigest()
        if not any_signature_matches(actual.encode(), [claimed[0].lower().encode()]):
            raise InvalidSignature("bodySHA256 in the URL does not match the body")

    def _parse(self, form: Form, *, is_json: bool) -> ParsedEvent:
        call_sid = form.get("CallSid")
        message_sid = form.get("MessageSid") or form.get("SmsSid")
        sender = form.get("From")
        recipient = form.get("To")
        extra: dict[str, object] = {}
        if form.get("AccountSid"):
            extra["account_sid"] = form.get("AccountSid")
        if call_sid:
            passthrough = is_followup_call(
                form.get("CallStatus"),
                form.get("Direction"),
                form.get("CallbackSource"),
                in_progress_is_followup=True,
            )
            if sender is None and not passthrough:
                raise BadRequest("Twilio voice webhook without From")
            return ParsedEvent(
                channel="voice",
                sender_raw=sender or "",
                recipients_raw=(recipient,) if recipient else (),
                provider_event_id=call_sid,
                variant="voice",
                passthrough=passthrough,
                extra=extra,
            )
        if message_sid:
            status = (form.get("MessageStatus") or form.get("SmsStatus") or "").lower()
            passthrough = status in _OUTBOUND_MESSAGE_STATUS
            if not passthrough and (sender is None or recipient is None):
                raise BadRequest("Twilio message webhook without From or To")
            whatsapp = (sender or "").lower().startswith("whatsapp:")
            return ParsedEvent(
                channel="sms",
                sender_raw=sender or "",
                recipients_raw=(recipient,) if recipient else (),
                provider_event_id=message_sid,
                variant="whatsapp" if whatsapp else "sms",
                passthrough=passthrough,
                extra=extra,
            )
        if is_json:
            # A signed JSON callback that is not a message or call (Event Streams, ...).
            return ParsedEvent("sms", "", (), None, "json", passthrough=True)
        raise BadRequest("Twilio webhook without CallSid or MessageSid")

    # --- answers ------------------------------------------------------------------------

    def drop_answer(self, event: ParsedEvent) -> Answer:
        return self._voice_drop if event.channel == "voice" else self._sms_drop

    def release(self, event: ParsedEvent) -> None:
        """No replay cache: the scheme has no nonce."""


def _algorithm(settings_header: str | None) -> str:
    for part in (settings_header or "").split(","):
        name, sep, value = part.partition("=")
        if sep and name.strip() == "algorithm" and value.strip():
            return value.strip().upper()
    return "HMAC_SHA1"


def _has_duplicate_pairs(params: list[tuple[str, str]]) -> bool:
    return len(set(params)) != len(params)


def _json_as_form(value: object) -> Form:
    """The Twilio field names of a JSON body, when it has them (as strings)."""
    if not isinstance(value, dict):
        return Form([])
    pairs: list[tuple[str, str]] = []
    for key in (
        "CallSid",
        "MessageSid",
        "SmsSid",
        "From",
        "To",
        "AccountSid",
        "CallStatus",
        "Direction",
        "MessageStatus",
        "SmsStatus",
        "CallbackSource",
    ):
        text = scalar_text(value.get(key))
        if text is not None:
            pairs.append((key, text))
    return Form(pairs)
