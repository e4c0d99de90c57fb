"""Provider registry: ``build_provider(source)`` → the ``Provider`` for a source.

See ``gateway.providers.base`` for the interface and how the pipeline uses it.
"""

from __future__ import annotations

from gateway.errors import ConfigError
from gateway.providers.base import (
    OK_EMPTY,
    Answer,
    DropAnswer,
    Handshake,
    ParsedEvent,
    Provider,
    RawRequest,
)
from gateway.providers.generic import GenericProvider
from gateway.providers.mailgun import MailgunProvider
from gateway.providers.plivo import PlivoProvider
from gateway.providers.postmark import PostmarkProvider
from gateway.providers.sendgrid import SendGridProvider
from gateway.providers.ses import CertLoader, SesProvider
from gateway.providers.telnyx import TelnyxProvider
from gateway.providers.twilio import TwilioProvider
from gateway.providers.vonage import VonageProvider
from gateway.settings import SourceSettings

__all__ = [
    "OK_EMPTY",
    "PROVIDERS",
    "Answer",
    "CertLoader",
    "DropAnswer",
    "Handshake",
    "ParsedEvent",
    "Provider",
    "RawRequest",
    "allowed_options",
    "build_provider",
]

PROVIDERS = {
    cls.name: cls
    for cls in (
        TwilioProvider,
        TelnyxProvider,
        PlivoProvider,
        VonageProvider,
        MailgunProvider,
        SendGridProvider,
        PostmarkProvider,
        SesProvider,
        GenericProvider,
    )
}
"""Provider name → class, for every ``provider = "..."`` a source may name."""


def allowed_options(provider: str) -> frozenset[str]:
    """The ``options`` keys a provider understands (settings validation may use it)."""
    cls = PROVIDERS.get(provider)
    return cls.options_allowed if cls is not None else frozenset()


def build_provider(source: SourceSettings, *, cert_loader: CertLoader | None = None) -> Provider:
    """The provider for ``source``; ``cert_loader`` (URL → PEM bytes, cached, may do
    I/O) is required by ``ses`` sources that verify. Raises ``ConfigError`` naming the
    key for an unknown provider, a missing or malformed secret, or a bad option."""
    if source.provider == "twilio":
        return TwilioProvider(source)
    if source.provider == "telnyx":
        return TelnyxProvider(source)
    if source.provider == "plivo":
        return PlivoProvider(source)
    if source.provider == "vonage":
        return VonageProvider(source)
    if source.provider == "mailgun":
        return MailgunProvider(source)
    if source.provider == "sendgrid":
        return SendGridProvider(source)
    if source.provider == "postmark":
        return PostmarkProvider(source)
    if source.provider == "ses":
        return SesProvider(source, cert_loader=cert_loader)
    if source.provider == "generic":
        return GenericProvider(source)
    known = ", ".join(sorted(PROVIDERS))
    raise ConfigError(
        f"sources.{source.name}.provider", f"unknown provider {source.provider!r} (known: {known})"
    )
