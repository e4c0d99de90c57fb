"""The ``generic`` provider: any JSON or form webhook described in config.

Options (``[sources.NAME.options]``):

* ``channel`` (required): ``email``, ``sms`` or ``voice``;
* ``sender_field``, ``recipient_field`` (required): where the sender and recipient(s)
  are. For JSON a dotted path (``data.from``, ``to.0.address``: integer steps index
  lists); for forms the field name. A recipient value may be a list;
* ``event_id_field``, ``envelope_sender_field``, ``authenticated_field`` (optional;
  the last one, for email, is a field holding ``true`` or ``"pass"`` when the provider
  authenticated the From domain; without it email is treated as unauthenticated);
* ``format``: ``json`` or ``form`` to insist on one (default: by Content-Type);
* ``signature``: ``hmac-sha256`` (default): hex HMAC-SHA256 of the raw body under
  ``secret`` in header ``signature_header`` (default ``x-signature``; a ``sha256=``
  prefix is accepted), or ``standard-webhooks``: ``webhook-id``/``-timestamp``/
  ``-signature`` with a ``whsec_`` secret, ``tolerance_s`` (default 300 s) and the
  webhook-id in the replay cache.

Drop answer: 200, ``drop_status`` overrides.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, cast

from gateway.errors import BadRequest, ConfigError, InvalidSignature, UnsupportedMediaType
from gateway.models import Channel
from gateway.providers._common import (
    FORM,
    JSON,
    MULTIPART,
    Form,
    Options,
    dig,
    drop_status,
    parse_form_body,
    parse_json,
    required_secret,
    scalar_text,
)
from gateway.providers.base import Answer, ParsedEvent, RawRequest, ReplayGuarded
from gateway.settings import SourceSettings
from gateway.signing import (
    ReplayCache,
    constant_time_equals,
    hmac_sha256,
    standard_webhooks_secret,
    standard_webhooks_verify,
)

DEFAULT_TOLERANCE_S = 300.0
_Lookup = Callable[[str], list[str]]
SIGNATURES = ("hmac-sha256", "standard-webhooks")


class GenericProvider(ReplayGuarded):
    """A JSON or form webhook with configured field paths and signature."""

    name: ClassVar[str] = "generic"
    options_allowed: ClassVar[frozenset[str]] = frozenset(
        {
            "channel",
            "format",
            "sender_field",
            "recipient_field",
            "event_id_field",
            "envelope_sender_field",
            "authenticated_field",
            "signature",
            "signature_header",
            "tolerance_s",
        }
    )

    def __init__(self, source: SourceSettings, *, replay_cache: ReplayCache | None = None) -> None:
        options = Options(source, self.options_allowed)
        self.source = source
        self.channel = cast(Channel, options.choice("channel", ("email", "sms", "voice"), ""))
        self.format = options.choice("format", ("json", "form", "auto"), "auto")
        self.sender_field = _required(options, "sender_field")
        self.recipient_field = _required(options, "recipient_field")
        self.event_id_field = options.text("event_id_field")
        self.envelope_sender_field = options.text("envelope_sender_field")
        self.authenticated_field = options.text("authenticated_field")
        self.signature = options.choice("signature", SIGNATURES, "hmac-sha256")
        self.signature_header = (options.text("signature_header") or "x-signature").lower()
        self.tolerance_s = options.number("tolerance_s", DEFAULT_TOLERANCE_S, minimum=1)
        secret = required_secret(source, "the signing secret as secret")
        self._key = secret.encode()
        if source.verify and self.signature == "standard-webhooks":
            try:
                self._key = standard_webhooks_secret(secret)
            except ValueError as exc:
                raise ConfigError(f"sources.{source.name}.secret", str(exc)) from None
        self.replay_cache = replay_cache or ReplayCache(ttl_s=2 * self.tolerance_s + 60)
        self._drop = Answer(drop_status(source, 200), None, b"")

    def handle(self, req: RawRequest, now: float) -> ParsedEvent:
        replay_key = self._verify(req, now) if self.source.verify else None
        media = req.media_type
        if media == JSON and self.format in ("json", "auto"):
            body = parse_json(req.body)
            return self._parse(lambda path: _json_path(body, path), replay_key)
        if media in (FORM, MULTIPART) and self.format in ("form", "auto"):
            form = parse_form_body(req.body, req.content_type, media, who="this source")
            return self._parse(lambda path: _form_values(form, path), replay_key)
        wanted = {"json": JSON, "form": FORM, "auto": f"{JSON} or a form"}[self.format]
        raise UnsupportedMediaType(f"this source expects {wanted}, not {media or 'no type'}")

    def _verify(self, req: RawRequest, now: float) -> str | None:
        if self.signature == "standard-webhooks":
            msg_id = standard_webhooks_verify(
                self._key, req.headers, req.body, now, self.tolerance_s
            )
            replay_key = "webhook-id:" + msg_id
            if self.replay_cache.seen(replay_key, now):
                raise InvalidSignature(
                    f"replayed request: webhook-id {msg_id} was already received"
                )
            return replay_key
        given = req.headers.get(self.signature_header)
        if not given:
            raise InvalidSignature(f"missing {self.signature_header} header")
        value = given.strip()
        if value.lower().startswith("sha256="):
            value = value[len("sha256=") :]
        expected = hmac_sha256(self._key, req.body).hex()
        if not constant_time_equals(expected, value.lower()):
            raise InvalidSignature(
                f"{self.signature_header} is not the hex HMAC-SHA256 of the body under the secret"
            )
        return None

    def _parse(self, values_at: _Lookup, replay_key: str | None) -> ParsedEvent:
        senders = values_at(self.sender_field)
        if not senders:
            raise BadRequest(f"missing field {self.sender_field}")
        recipients = tuple(r for r in values_at(self.recipient_field) if r.strip())
        if not recipients:
            raise BadRequest(f"missing field {self.recipient_field}")
        event_ids = values_at(self.event_id_field) if self.event_id_field else []
        envelopes = values_at(self.envelope_sender_field) if self.envelope_sender_field else []
        authenticated = self.channel != "email"
        if self.channel == "email" and self.authenticated_field:
            flags = values_at(self.authenticated_field)
            authenticated = bool(flags) and flags[0].strip().lower() in ("true", "pass", "1")
        return ParsedEvent(
            channel=self.channel,
            sender_raw=senders[0],
            recipients_raw=recipients,
            provider_event_id=event_ids[0] if event_ids else None,
            variant=self.channel,
            authenticated=authenticated,
            envelope_sender_raw=envelopes[0] if envelopes else None,
            replay_key=replay_key,
        )

    def drop_answer(self, event: ParsedEvent) -> Answer:
        return self._drop


def _required(options: Options, name: str) -> str:
    value = options.text(name)
    if not value:
        raise ConfigError(options.key(name), "is required for the generic provider")
    return value


def _json_path(body: object, path: str) -> list[str]:
    """The text value(s) at a dotted path: a scalar gives one, a list of scalars many."""
    steps: list[str | int] = [int(s) if s.isascii() and s.isdigit() else s for s in path.split(".")]
    value = dig(body, *steps)
    if isinstance(value, list):
        return [t for t in (scalar_text(v) for v in value) if t is not None]
    text = scalar_text(value)
    if text is None and isinstance(value, bool):
        text = "true" if value else "false"
    return [text] if text is not None else []


def _form_values(form: Form, name: str) -> list[str]:
    return [value for key, value in form.pairs if key == name]
