"""Postmark inbound webhooks (JSON).

Postmark does not sign webhooks; it sends the credentials of the webhook URL
(``https://user:pass@host/hooks/NAME``) as HTTP Basic auth. The source ``secret`` is
that ``user:pass``, compared in constant time with the ``Authorization`` header.

Fields: ``FromFull.Email`` (header From, already parsed; ``From`` as fallback),
``OriginalRecipient`` (the envelope recipient; ``ToFull[].Email`` + ``CcFull`` +
``BccFull`` as fallback), ``MessageID`` (Postmark's id, stable across retries),
``Headers`` (``[{Name, Value}]``). Authentication: Postmark's ``Received-SPF`` header
(the first; Postmark adds it at the top), and ``Authentication-Results`` only when their
authserv-id is in ``options.authserv_id``.

Drop answer: 200 as SPEC says (a 403 also stops Postmark's retries but shows as an
inbound error in its activity log); ``drop_status`` overrides.
"""

from __future__ import annotations

from typing import ClassVar

from gateway.errors import BadRequest, UnsupportedMediaType
from gateway.providers._common import (
    JSON,
    MailAuth,
    Options,
    collect_trusted_authentication_results,
    dig,
    drop_status,
    first_header,
    header_from_domain,
    parse_json_object,
    parse_received_spf,
    required_secret,
    scalar_text,
)
from gateway.providers.base import Answer, ParsedEvent, RawRequest
from gateway.providers.sendgrid import check_basic_auth
from gateway.settings import SourceSettings


class PostmarkProvider:
    """Postmark inbound message webhooks."""

    name: ClassVar[str] = "postmark"
    options_allowed: ClassVar[frozenset[str]] = frozenset({"authserv_id"})

    def __init__(self, source: SourceSettings) -> None:
        options = Options(source, self.options_allowed)
        self.source = source
        self._secret = required_secret(source, "Basic auth credentials 'user:pass' as secret")
        self.authserv_ids = options.text_list("authserv_id")
        self._drop = Answer(drop_status(source, 200), None, b"")

    def handle(self, req: RawRequest, now: float) -> ParsedEvent:
        if self.source.verify:
            check_basic_auth(req.headers.get("authorization"), self._secret)
        if req.media_type != JSON:
            raise UnsupportedMediaType(f"Postmark sends {JSON}, not {req.media_type or 'no type'}")
        body = parse_json_object(req.body)
        return self._parse(body)

    def _parse(self, body: dict[str, object]) -> ParsedEvent:
        from_email = scalar_text(dig(body, "FromFull", "Email"))
        sender_raw = from_email if from_email else (scalar_text(body.get("From")) or "")
        original = scalar_text(body.get("OriginalRecipient"))
        if original and original.strip():
            recipients: tuple[str, ...] = (original.strip(),)
        else:
            recipients = _full_addresses(body, "ToFull", "CcFull", "BccFull")
        if not recipients:
            raise BadRequest("missing field OriginalRecipient (and no ToFull[].Email)")
        headers = _headers(body.get("Headers"))
        auth = MailAuth()
        received_spf = first_header(headers, "Received-SPF")
        if received_spf is not None:
            auth.spf, auth.spf_domain = parse_received_spf(received_spf)
        collect_trusted_authentication_results(auth, headers, self.authserv_ids)
        return ParsedEvent(
            channel="email",
            sender_raw=sender_raw,
            recipients_raw=recipients,
            provider_event_id=scalar_text(body.get("MessageID")),
            variant="email",
            authenticated=auth.authenticated(header_from_domain(sender_raw)),
            envelope_sender_raw=_envelope_from(received_spf),
            auth_results=auth.as_dict(),
            extra={"mailbox_hash": scalar_text(body.get("MailboxHash"))},
        )

    def drop_answer(self, event: ParsedEvent) -> Answer:
        return self._drop

    def release(self, event: ParsedEvent) -> None:
        """No replay cache: Basic auth has no nonce."""


def _full_addresses(body: dict[str, object], *keys: str) -> tuple[str, ...]:
    found: list[str] = []
    for key in keys:
        items = body.get(key)
        if isinstance(items, list):
            for item in items:
                email = scalar_text(dig(item, "Email"))
                if email and email.strip():
                    found.append(email.strip())
    return tuple(found)


def _headers(value: object) -> list[tuple[str, str]]:
    if not isinstance(value, list):
        return []
    pairs: list[tuple[str, str]] = []
    for item in value:
        name = scalar_text(dig(item, "Name"))
        text = scalar_text(dig(item, "Value"))
        if name is not None and text is not None:
            pairs.append((name, text))
    return pairs


def _envelope_from(received_spf: str | None) -> str | None:
    """The ``envelope-from`` address of a Received-SPF header, as written."""
    if not received_spf:
        return None
    marker = "envelope-from="
    start = received_spf.lower().find(marker)
    if start < 0:
        return None
    rest = received_spf[start + len(marker) :].lstrip().lstrip('"')
    end = min(
        (i for i in (rest.find('"'), rest.find(";"), rest.find(" ")) if i >= 0), default=len(rest)
    )
    return rest[:end] or None
