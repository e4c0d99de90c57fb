"""SendGrid Inbound Parse: ``multipart/form-data`` posts.

SendGrid signs Parse posts only under an optional security policy whose header names
are unverified [U], so the gateway authenticates SendGrid by HTTP Basic auth: configure
the Parse URL as ``https://user:pass@host/hooks/NAME`` and set the source ``secret`` to
``user:pass``; the ``Authorization`` header is compared in constant time. [U] That
SendGrid sends URL credentials as Basic auth is unverified; ``verify = false`` plus an
IP allowlist in front is the alternative.

Fields: ``from`` (header From), ``envelope`` (JSON: ``to`` list, ``from`` return
path), ``SPF`` (verdict for the envelope sender), ``dkim`` (``{@domain : pass, ...}``),
``headers`` (raw header block). With "send raw" the message comes as ``email`` (raw
MIME) instead and From is read from it. Authentication-Results are used only when
their authserv-id is in ``options.authserv_id``.

There is no event id (Message-ID is sender-controlled, so unsafe to dedupe on); it is
kept in ``extra["message_id"]``. Drop answer: 200 (SendGrid retries only 5xx;
``drop_status`` overrides).
"""

from __future__ import annotations

import json
import re
from typing import ClassVar

from gateway.errors import BadRequest, InvalidSignature
from gateway.providers._common import (
    Form,
    MailAuth,
    Options,
    address_domain,
    collect_trusted_authentication_results,
    drop_status,
    first_header,
    header_from_domain,
    headers_from_block,
    parse_form_body,
    required_secret,
)
from gateway.providers.base import Answer, ParsedEvent, RawRequest
from gateway.settings import SourceSettings
from gateway.signing import b64decode_strict, constant_time_equals

_DKIM_ENTRY = re.compile(r"@([^\s:,{}]+)\s*:\s*([A-Za-z]+)")


def check_basic_auth(authorization: str | None, secret: str) -> None:
    """Refuse unless ``authorization`` is ``Basic base64(secret)`` (constant time)."""
    if not authorization:
        raise InvalidSignature("missing Authorization header (Basic auth is configured)")
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        raise InvalidSignature("Authorization is not Basic auth")
    decoded = b64decode_strict(credentials.strip())
    if decoded is None or not constant_time_equals(decoded, secret.encode()):
        raise InvalidSignature("Basic auth credentials do not match")


class SendGridProvider:
    """SendGrid Inbound Parse webhooks."""

    name: ClassVar[str] = "sendgrid"
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
        # SendGrid documents multipart only; urlencoded is accepted too (hand tests).
        form = parse_form_body(req.body, req.content_type, req.media_type, who="SendGrid")
        return self._parse(form)

    def _parse(self, form: Form) -> ParsedEvent:
        envelope = _envelope(form.get("envelope"))
        recipients = envelope[0]
        if not recipients:
            raise BadRequest("missing envelope.to (the envelope recipients)")
        envelope_from = envelope[1]
        raw_headers: list[tuple[str, str]] = []
        if form.get("headers"):
            raw_headers = headers_from_block(form.get("headers") or "")
        elif form.get("email"):
            raw_headers = headers_from_block(_header_block(form.get("email") or ""))
        sender_raw = form.get("from")
        if sender_raw is None:
            sender_raw = first_header(raw_headers, "From") or ""
        auth = MailAuth()
        spf = form.get("SPF")
        if spf is not None:
            auth.spf = spf.strip().lower()
            auth.spf_domain = address_domain(envelope_from) if envelope_from else None
        for domain, result in _DKIM_ENTRY.findall(form.get("dkim") or ""):
            auth.dkim.append((result.lower(), address_domain(domain)))
        collect_trusted_authentication_results(auth, raw_headers, self.authserv_ids)
        message_id = first_header(raw_headers, "Message-ID")
        return ParsedEvent(
            channel="email",
            sender_raw=sender_raw,
            recipients_raw=recipients,
            provider_event_id=None,
            variant="email",
            authenticated=auth.authenticated(header_from_domain(sender_raw)),
            envelope_sender_raw=envelope_from,
            auth_results=auth.as_dict(),
            extra={"message_id": message_id} if message_id else {},
        )

    def drop_answer(self, event: ParsedEvent) -> Answer:
        return self._drop

    def release(self, event: ParsedEvent) -> None:
        """No replay cache: Basic auth has no nonce."""


def _envelope(raw: str | None) -> tuple[tuple[str, ...], str | None]:
    if not raw:
        raise BadRequest("missing field envelope")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRequest("envelope is not JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("envelope is not a JSON object")
    to = value.get("to")
    if isinstance(to, str):
        to = [to]
    recipients = (
        tuple(t for t in to if isinstance(t, str) and t.strip()) if isinstance(to, list) else ()
    )
    sender = value.get("from")
    return recipients, sender if isinstance(sender, str) else None


def _header_block(mime: str) -> str:
    """The header part of a raw MIME message (up to the first empty line)."""
    for separator in ("\r\n\r\n", "\n\n"):
        head, found, _ = mime.partition(separator)
        if found:
            return head
    return mime
