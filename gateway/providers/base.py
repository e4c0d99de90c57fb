"""The provider interface: raw request in, verified and parsed event out, drop answer.

The pipeline hands each webhook to its source's ``Provider`` as a ``RawRequest`` (the
size-capped body bytes, lowercase headers, the public URL the provider called) and gets
back one ``ParsedEvent`` or a ``GatewayError``:

* ``InvalidSignature`` (401): missing or wrong signature, stale timestamp, replay;
* ``BadRequest`` (400): undecodable body, missing fields;
* ``UnsupportedMediaType`` (415): a content type the provider never sends;
* ``Forbidden`` (403): an SNS topic that is not allow-listed;
* ``UpstreamError`` (502): the SNS signing certificate could not be fetched.

Nothing else escapes ``handle()``, whatever the input. Providers do no I/O, except SES
through the certificate loader the pipeline injects, and never read the clock: ``now``
is passed in.

How the pipeline uses an event:

* ``handshake`` set (SNS SubscriptionConfirmation of an allow-listed topic): GET
  ``handshake.subscribe_url``, answer ``OK_EMPTY``; nothing to decide or forward.
* ``passthrough`` (status callbacks, outbound events, SNS notifications that are not
  received mail): forward unchanged without deciding.
* otherwise normalise ``sender_raw`` and each of ``recipients_raw``, decide, and either
  forward or answer ``provider.drop_answer(event)`` (after quarantine).
* when the forward fails and the provider is told to retry (5xx), call
  ``provider.release(event)`` so that the retry is not refused as a replay.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from gateway.models import Channel
from gateway.settings import SourceSettings
from gateway.signing import ReplayCache


@dataclass(frozen=True, slots=True)
class RawRequest:
    """One webhook request as received, before any parsing.

    ``headers`` maps lowercase names to values (a repeated header joined as the server
    does). ``public_url`` is the URL the provider called, query included: rebuilt from
    ``[server] public_url`` + path + ``?query`` when configured, else from the Host
    header. URL-signed schemes (Twilio, Plivo) sign exactly this string.
    ``content_type`` is the raw Content-Type header (``""`` when absent).
    """

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    public_url: str
    content_type: str = ""

    @property
    def media_type(self) -> str:
        """The content type without parameters, lowercase (``"application/json"``)."""
        return self.content_type.partition(";")[0].strip().lower()


@dataclass(frozen=True, slots=True)
class Handshake:
    """A protocol step the gateway completes itself instead of deciding the event.

    ``kind`` is ``"sns_subscription_confirmation"``: the pipeline confirms by a GET of
    ``subscribe_url``. Only returned for a topic listed in the source's
    ``options.topic_arns`` (others are refused with ``Forbidden``), and only after the
    signature was verified and the URL checked to be an https URL on an SNS host.
    """

    kind: str
    subscribe_url: str
    topic_arn: str
    token: str | None = None


@dataclass(frozen=True, slots=True)
class ParsedEvent:
    """What the pipeline needs from a verified webhook.

    ``sender_raw``: the header From (email) or the From parameter (phone), as received
    except that Vonage and Plivo digit-only international numbers get their missing
    ``+``. ``recipients_raw``: envelope recipients (email, possibly several) or the
    called number(s). ``provider_event_id``: the provider's id for the event, stable
    across its retries (CallSid, MessageSid, data.id, Mailgun token, SES mail.messageId,
    Postmark MessageID, ...), or ``None``.

    ``authenticated``: for email, whether the provider reported DMARC pass or an SPF or
    DKIM pass aligned with the From domain (SPEC §2); always ``True`` for phones. It is
    the fact as reported; ``SourceSettings.allow_requires_auth`` is applied by the
    pipeline. ``auth_results``: the raw verdicts (``spf``, ``dkim``, ``dmarc``, domains).

    ``variant``: which kind of webhook (``voice``, ``sms``, ``whatsapp``, ``texml``,
    ``call_control``, ``messaging``, ``messages``, ``email``, ``sns``...).
    ``call_control_id``: Telnyx Call Control, for the async reject.
    ``passthrough``: forward without filtering (see the module docstring).
    ``replay_key``: the key this event marked in the provider's replay cache, if any.
    """

    channel: Channel
    sender_raw: str
    recipients_raw: tuple[str, ...]
    provider_event_id: str | None
    variant: str
    authenticated: bool = True
    envelope_sender_raw: str | None = None
    auth_results: dict[str, str] = field(default_factory=dict)
    call_control_id: str | None = None
    handshake: Handshake | None = None
    passthrough: bool = False
    replay_key: str | None = None
    extra: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Answer:
    """The HTTP answer the gateway gives the provider itself.

    ``telnyx_reject``: the answer only acknowledges; the pipeline must then call the
    Telnyx reject action for ``event.call_control_id`` (Call Control cannot reject in
    the answer). Providers build their answers once, at construction.
    """

    status: int
    content_type: str | None
    body: bytes
    telnyx_reject: bool = False


DropAnswer = Answer

OK_EMPTY = Answer(200, None, b"")
"""Acknowledge with 200 and no body (handshakes, email drops)."""

XML = "text/xml; charset=utf-8"
XML_DECL = '<?xml version="1.0" encoding="UTF-8"?>'


class Provider(Protocol):
    """A webhook provider bound to one configured source."""

    name: ClassVar[str]
    source: SourceSettings

    def handle(self, req: RawRequest, now: float) -> ParsedEvent:
        """Verify the signature over the raw request (unless ``source.verify`` is off),
        then parse it once. Raises only ``GatewayError`` subclasses."""
        ...

    def drop_answer(self, event: ParsedEvent) -> Answer:
        """The answer that ends this event at the provider and stops its retries."""
        ...

    def release(self, event: ParsedEvent) -> None:
        """Forget the event's replay mark: it was not handled and the provider will retry."""
        ...


class ReplayGuarded:
    """Mixin for providers with a replay cache: ``release`` forgets the event's mark."""

    replay_cache: ReplayCache

    def release(self, event: ParsedEvent) -> None:
        if event.replay_key is not None:
            self.replay_cache.forget(event.replay_key)
