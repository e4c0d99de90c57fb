"""Telnyx webhooks: Call Control and Messaging (JSON API v2), TeXML (form).

Signature (telnyx-python ``lib/webhook_verification.py``, Ruby ``DEFAULT_TOLERANCE``):
ed25519 over ``f"{telnyx-timestamp}|{raw body}"`` with the account's public key (the
source ``secret``, base64), signature base64 in ``telnyx-signature-ed25519``; the
timestamp must be within ``options.tolerance_s`` (default 300 s) of now, either way.

Replay: ed25519 signatures are deterministic, so a replayed request carries the same
signature; the signature is the replay key. Telnyx retries are signed anew with their
own timestamp, so they pass here and are deduplicated by the pipeline on ``data.id``.

Call Control cannot reject in the answer: the drop answer acknowledges (200) with
``telnyx_reject`` set, and the pipeline calls ``actions/reject`` for the call.
"""

from __future__ import annotations

from typing import ClassVar

from gateway.errors import BadRequest, ConfigError, InvalidSignature, UnsupportedMediaType
from gateway.models import Channel
from gateway.providers._common import (
    FORM,
    JSON,
    Form,
    Options,
    dig,
    is_followup_call,
    parse_json_object,
    parse_urlencoded,
    required_secret,
    scalar_text,
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
from gateway.signing import (
    ReplayCache,
    b64decode_strict,
    check_timestamp,
    ed25519_verify,
    load_ed25519_public_key,
    parse_unix_timestamp,
)

SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
DEFAULT_TOLERANCE_S = 300.0


class TelnyxProvider(ReplayGuarded):
    """Telnyx Call Control, Messaging and TeXML webhooks."""

    name: ClassVar[str] = "telnyx"
    options_allowed: ClassVar[frozenset[str]] = frozenset({"tolerance_s"})

    def __init__(self, source: SourceSettings, *, replay_cache: ReplayCache | None = None) -> None:
        options = Options(source, self.options_allowed)
        self.source = source
        self.tolerance_s = options.number("tolerance_s", DEFAULT_TOLERANCE_S, minimum=1)
        secret = required_secret(source, "the account's ed25519 public key (base64) as secret")
        self._key = None
        if source.verify:
            try:
                self._key = load_ed25519_public_key(secret)
            except ValueError as exc:
                raise ConfigError(f"sources.{source.name}.secret", str(exc)) from None
        self.replay_cache = replay_cache or ReplayCache(ttl_s=2 * self.tolerance_s + 60)
        self._ack = Answer(200, None, b"")
        self._call_control_drop = Answer(200, None, b"", telnyx_reject=True)
        self._texml_drop = Answer(
            200,
            XML,
            f'{XML_DECL}<Response><Reject reason="{source.reject_reason}"/></Response>'.encode(),
        )

    def handle(self, req: RawRequest, now: float) -> ParsedEvent:
        replay_key = self._verify(req, now) if self.source.verify else None
        if req.method.upper() == "GET":
            return self._parse_texml(parse_urlencoded(req.query, what="query string"), replay_key)
        if req.media_type == JSON:
            return self._parse_json(req.body, replay_key)
        if req.media_type == FORM:
            return self._parse_texml(parse_urlencoded(req.body), replay_key)
        raise UnsupportedMediaType(
            f"Telnyx sends {JSON} (API v2) or {FORM} (TeXML), not {req.media_type or 'no type'}"
        )

    def _verify(self, req: RawRequest, now: float) -> str:
        assert self._key is not None
        raw_signature = req.headers.get(SIGNATURE_HEADER)
        if not raw_signature:
            raise InvalidSignature(f"missing {SIGNATURE_HEADER} header")
        raw_ts = req.headers.get(TIMESTAMP_HEADER)
        ts = parse_unix_timestamp(raw_ts, what=f"{TIMESTAMP_HEADER} header")
        check_timestamp(ts, now, self.tolerance_s, what=TIMESTAMP_HEADER)
        signature = b64decode_strict(raw_signature)
        if signature is None or len(signature) != 64:
            raise InvalidSignature(f"{SIGNATURE_HEADER} is not a base64 ed25519 signature")
        assert raw_ts is not None
        message = raw_ts.encode("utf-8", "surrogateescape") + b"|" + req.body
        if not ed25519_verify(self._key, signature, message):
            raise InvalidSignature(
                f"{SIGNATURE_HEADER} does not match timestamp|body under the configured key"
            )
        replay_key = "sig:" + signature.hex()
        if self.replay_cache.seen(replay_key, now):
            raise InvalidSignature(
                "replayed request: this signed Telnyx webhook was already received"
            )
        return replay_key

    def _parse_json(self, body: bytes, replay_key: str | None) -> ParsedEvent:
        envelope = parse_json_object(body)
        data = envelope.get("data")
        if not isinstance(data, dict):
            raise BadRequest("Telnyx webhook without a data object")
        event_type = scalar_text(data.get("event_type")) or ""
        event_id = scalar_text(data.get("id"))
        payload = data.get("payload")
        extra: dict[str, object] = {"event_type": event_type}
        if event_type == "call.initiated" and isinstance(payload, dict):
            direction = scalar_text(payload.get("direction")) or ""
            call_control_id = scalar_text(payload.get("call_control_id"))
            if direction in ("incoming", "inbound"):
                sender = scalar_text(payload.get("from"))
                recipient = scalar_text(payload.get("to"))
                if sender is None or not call_control_id:
                    raise BadRequest(
                        "Telnyx call.initiated without payload.from or call_control_id"
                    )
                extra["call_session_id"] = scalar_text(payload.get("call_session_id"))
                return ParsedEvent(
                    channel="voice",
                    sender_raw=sender,
                    recipients_raw=(recipient,) if recipient else (),
                    provider_event_id=event_id,
                    variant="call_control",
                    call_control_id=call_control_id,
                    replay_key=replay_key,
                    extra=extra,
                )
        if event_type == "message.received" and isinstance(payload, dict):
            direction = scalar_text(payload.get("direction")) or "inbound"
            if direction == "inbound":
                sender = scalar_text(dig(payload, "from", "phone_number"))
                if sender is None:
                    raise BadRequest("Telnyx message.received without payload.from.phone_number")
                return ParsedEvent(
                    channel="sms",
                    sender_raw=sender,
                    recipients_raw=_message_recipients(payload.get("to")),
                    provider_event_id=event_id,
                    variant="messaging",
                    replay_key=replay_key,
                    extra=extra,
                )
        # Outbound messages, hangups, delivery reports...: not ours to filter.
        channel: Channel = "sms" if event_type.startswith("message.") else "voice"
        return ParsedEvent(
            channel=channel,
            sender_raw="",
            recipients_raw=(),
            provider_event_id=event_id,
            variant="call_control" if channel == "voice" else "messaging",
            passthrough=True,
            replay_key=replay_key,
            extra=extra,
        )

    def _parse_texml(self, form: Form, replay_key: str | None) -> ParsedEvent:
        call_sid = form.get("CallSid")
        if not call_sid:
            raise BadRequest("TeXML webhook without CallSid")
        passthrough = is_followup_call(
            form.get("CallStatus"), form.get("Direction"), form.get("CallbackSource")
        )
        sender = form.get("From")
        if sender is None and not passthrough:
            raise BadRequest("TeXML webhook without From")
        recipient = form.get("To")
        return ParsedEvent(
            channel="voice",
            sender_raw=sender or "",
            recipients_raw=(recipient,) if recipient else (),
            provider_event_id=call_sid,
            variant="texml",
            passthrough=passthrough,
            replay_key=replay_key,
        )

    def drop_answer(self, event: ParsedEvent) -> Answer:
        if event.variant == "texml":
            return self._texml_drop
        if event.variant == "call_control" and event.call_control_id:
            return self._call_control_drop
        return self._ack


def _message_recipients(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list):
        return ()
    found: list[str] = []
    for item in value:
        number = scalar_text(dig(item, "phone_number")) if isinstance(item, dict) else None
        if number:
            found.append(number)
    return tuple(found)
