"""Amazon SES inbound mail through an SNS HTTPS subscription.

The body is an SNS message (JSON, sent as ``text/plain``). Verification follows AWS's
message validators (aws-php-sns-message-validator ``MessageValidator.php``):

* ``SigningCertURL`` must be ``https``, end in ``.pem`` and be on a host matching
  ``sns.<region>.amazonaws.com(.cn)``; it is checked *before* the injected
  ``cert_loader`` (the pipeline's cached fetcher, the only I/O) is asked for it;
* the signature (``SignatureVersion`` 1 = SHA1withRSA, 2 = SHA256withRSA) covers
  ``Key\\nvalue\\n`` for the keys of the message type, in AWS's order;
* ``Timestamp`` must be within ``options.tolerance_s`` (default 3900 s: SNS retries for
  up to 3600 s with the original message, plus clock skew);
* ``MessageId`` feeds the replay cache (a retry of a failed forward is let through by
  ``release``);
* ``TopicArn`` must be in ``options.topic_arns`` when that list is set; a
  SubscriptionConfirmation is only turned into a ``Handshake`` for a listed topic.

A Notification whose ``Message`` is an SES "Received" notification is decoded a second
time: ``receipt.recipients`` (envelope recipients), ``mail.commonHeaders.from[0]``
(header From), ``mail.source`` (envelope sender), SES's SPF/DKIM/DMARC verdicts. Any
other notification (bounces, the SES setup test message) passes through unfiltered.
Drop answer: 200 (SNS has no reject; ``drop_status`` overrides).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import ClassVar
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from gateway.errors import (
    BadRequest,
    ConfigError,
    Forbidden,
    InvalidSignature,
    UnsupportedMediaType,
    UpstreamError,
)
from gateway.providers._common import (
    JSON,
    MailAuth,
    Options,
    address_domain,
    dig,
    drop_status,
    header_from_domain,
    parse_json,
    parse_json_object,
    scalar_text,
)
from gateway.providers.base import Answer, Handshake, ParsedEvent, RawRequest, ReplayGuarded
from gateway.settings import SourceSettings
from gateway.signing import (
    ReplayCache,
    b64decode_strict,
    check_timestamp,
    rsa_pkcs1v15_verify,
    rsa_public_key_from_pem,
)

CertLoader = Callable[[str], bytes]

DEFAULT_TOLERANCE_S = 3900.0
SNS_HOST = re.compile(r"^sns\.[a-zA-Z0-9\-]{3,}\.amazonaws\.com(\.cn)?$")

_NOTIFICATION_KEYS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_SUBSCRIPTION_KEYS = (
    "Message",
    "MessageId",
    "SubscribeURL",
    "Timestamp",
    "Token",
    "TopicArn",
    "Type",
)
_SIGNED_KEYS = {
    "Notification": _NOTIFICATION_KEYS,
    "SubscriptionConfirmation": _SUBSCRIPTION_KEYS,
    "UnsubscribeConfirmation": _SUBSCRIPTION_KEYS,
}
_OPTIONAL_KEYS = frozenset({"Subject"})
_MAX_CACHED_CERTS = 32


def sns_string_to_sign(message: dict[str, object]) -> bytes:
    """The bytes an SNS message's signature covers. Raises ``BadRequest`` for an unknown
    ``Type`` or a missing signed field."""
    message_type = message.get("Type")
    keys = _SIGNED_KEYS.get(message_type) if isinstance(message_type, str) else None
    if keys is None:
        raise BadRequest(f"unknown SNS message Type {message_type!r}")
    lines: list[str] = []
    for key in keys:
        value = message.get(key)
        if value is None and key in _OPTIONAL_KEYS:
            continue
        if not isinstance(value, str):
            raise BadRequest(f"SNS {message_type} without a string {key}")
        lines.append(f"{key}\n{value}\n")
    return "".join(lines).encode("utf-8", "surrogatepass")


def is_sns_url(url: str, *, suffix: str | None = None) -> bool:
    """An ``https`` URL on an SNS host (``sns.<region>.amazonaws.com[.cn]``), with no
    credentials or port, whose path ends in ``suffix`` when given."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    host = parts.hostname or ""
    return (
        parts.scheme == "https"
        and port is None
        and parts.username is None
        and bool(SNS_HOST.match(host))
        and parts.netloc.lower() == host
        and (suffix is None or parts.path.endswith(suffix))
    )


class SesProvider(ReplayGuarded):
    """Amazon SES receipt notifications delivered by SNS over HTTPS."""

    name: ClassVar[str] = "ses"
    options_allowed: ClassVar[frozenset[str]] = frozenset({"topic_arns", "tolerance_s"})

    def __init__(
        self,
        source: SourceSettings,
        *,
        cert_loader: CertLoader | None = None,
        replay_cache: ReplayCache | None = None,
    ) -> None:
        options = Options(source, self.options_allowed)
        self.source = source
        self.topic_arns = frozenset(options.text_list("topic_arns"))
        self.tolerance_s = options.number("tolerance_s", DEFAULT_TOLERANCE_S, minimum=1)
        if source.verify and cert_loader is None:
            raise ConfigError(
                f"sources.{source.name}", "the ses provider needs a certificate loader"
            )
        self._cert_loader = cert_loader
        self._keys: dict[str, RSAPublicKey] = {}
        self.replay_cache = replay_cache or ReplayCache(ttl_s=self.tolerance_s + 300)
        self._drop = Answer(drop_status(source, 200), None, b"")

    def handle(self, req: RawRequest, now: float) -> ParsedEvent:
        if req.media_type not in ("text/plain", JSON, ""):
            raise UnsupportedMediaType(f"SNS sends text/plain (or {JSON}), not {req.media_type}")
        message = parse_json_object(req.body, what="SNS message")
        self._check_headers(req, message)
        replay_key = self._verify(message, now) if self.source.verify else None
        return self._parse(message, replay_key)

    # --- verification -------------------------------------------------------------------

    def _check_headers(self, req: RawRequest, message: dict[str, object]) -> None:
        # An application behind the gateway may dispatch on these headers: they must
        # agree with the signed body.
        for header, key in (
            ("x-amz-sns-message-type", "Type"),
            ("x-amz-sns-topic-arn", "TopicArn"),
        ):
            value = req.headers.get(header)
            if value is not None and value != message.get(key):
                raise BadRequest(f"{header} header does not match the message's {key}")

    def _verify(self, message: dict[str, object], now: float) -> str:
        signature_b64 = scalar_text(message.get("Signature"))
        cert_url = scalar_text(message.get("SigningCertURL") or message.get("SigningCertUrl"))
        version = scalar_text(message.get("SignatureVersion"))
        if not signature_b64:
            raise InvalidSignature("SNS message without Signature")
        if not cert_url:
            raise InvalidSignature("SNS message without SigningCertURL")
        if version not in ("1", "2"):
            raise InvalidSignature(f"unsupported SNS SignatureVersion {version!r}")
        if not is_sns_url(cert_url, suffix=".pem"):
            raise InvalidSignature(
                "SigningCertURL is not an https .pem URL on an sns.<region>.amazonaws.com host"
            )
        signature = b64decode_strict(signature_b64)
        if signature is None:
            raise InvalidSignature("SNS Signature is not base64")
        signed = sns_string_to_sign(message)
        ts = _iso_timestamp(message.get("Timestamp"))
        check_timestamp(ts, now, self.tolerance_s, future_tolerance_s=300, what="SNS Timestamp")
        key = self._public_key(cert_url)
        if not rsa_pkcs1v15_verify(key, signature, signed, "sha1" if version == "1" else "sha256"):
            raise InvalidSignature("SNS Signature does not match the message and certificate")
        message_id = scalar_text(message.get("MessageId")) or ""
        replay_key = "sns:" + message_id
        if self.replay_cache.seen(replay_key, now):
            raise InvalidSignature(f"replayed SNS message {message_id}")
        return replay_key

    def _public_key(self, cert_url: str) -> RSAPublicKey:
        key = self._keys.get(cert_url)
        if key is not None:
            return key
        assert self._cert_loader is not None
        try:
            pem = self._cert_loader(cert_url)
        except Exception as exc:  # the loader does network I/O: anything can fail
            raise UpstreamError(f"could not fetch the SNS signing certificate: {exc}") from exc
        key = rsa_public_key_from_pem(pem) if isinstance(pem, bytes) else None
        if key is None:
            raise InvalidSignature("SigningCertURL did not serve an RSA PEM certificate")
        if len(self._keys) >= _MAX_CACHED_CERTS:
            self._keys.pop(next(iter(self._keys)))
        self._keys[cert_url] = key
        return key

    # --- parsing ------------------------------------------------------------------------

    def _check_topic(self, topic: str, *, required: bool) -> None:
        if topic in self.topic_arns:
            return
        if self.topic_arns or required:
            where = f"sources.{self.source.name}.options.topic_arns"
            raise Forbidden(f"SNS topic {topic!r} is not in {where}")

    def _parse(self, message: dict[str, object], replay_key: str | None) -> ParsedEvent:
        message_type = scalar_text(message.get("Type")) or ""
        topic = scalar_text(message.get("TopicArn"))
        sns_id = scalar_text(message.get("MessageId"))
        if not topic:
            raise BadRequest("SNS message without TopicArn")
        extra: dict[str, object] = {"sns_message_id": sns_id, "topic_arn": topic}
        if message_type == "SubscriptionConfirmation":
            self._check_topic(topic, required=True)
            subscribe_url = scalar_text(message.get("SubscribeURL"))
            if not subscribe_url or not is_sns_url(subscribe_url):
                raise BadRequest("SubscribeURL is not an https URL on an SNS host")
            handshake = Handshake(
                kind="sns_subscription_confirmation",
                subscribe_url=subscribe_url,
                topic_arn=topic,
                token=scalar_text(message.get("Token")),
            )
            return ParsedEvent(
                "email",
                "",
                (),
                sns_id,
                "sns",
                handshake=handshake,
                replay_key=replay_key,
                extra=extra,
            )
        self._check_topic(topic, required=False)
        if message_type != "Notification":
            return ParsedEvent(
                "email", "", (), sns_id, "sns", passthrough=True, replay_key=replay_key, extra=extra
            )
        raw_inner = scalar_text(message.get("Message")) or ""
        try:
            inner = parse_json(raw_inner.encode("utf-8", "surrogatepass"))
        except BadRequest:
            inner = None
        if not isinstance(inner, dict) or inner.get("notificationType") != "Received":
            return ParsedEvent(
                "email", "", (), sns_id, "sns", passthrough=True, replay_key=replay_key, extra=extra
            )
        return self._parse_received(inner, sns_id, replay_key, extra)

    def _parse_received(
        self,
        inner: dict[str, object],
        sns_id: str | None,
        replay_key: str | None,
        extra: dict[str, object],
    ) -> ParsedEvent:
        recipients_value = dig(inner, "receipt", "recipients")
        recipients = (
            tuple(r for r in recipients_value if isinstance(r, str) and r.strip())
            if isinstance(recipients_value, list)
            else ()
        )
        if not recipients:
            raise BadRequest("SES notification without receipt.recipients")
        sender_raw = scalar_text(dig(inner, "mail", "commonHeaders", "from", 0)) or ""
        envelope = scalar_text(dig(inner, "mail", "source"))
        auth = MailAuth()
        spf = _verdict(inner, "spfVerdict")
        if spf is not None:
            auth.spf = spf
            auth.spf_domain = address_domain(envelope) if envelope else None
        dkim = _verdict(inner, "dkimVerdict")
        if dkim is not None:
            auth.dkim.append((dkim, None))  # SES does not say which domain signed
        auth.dmarc = _verdict(inner, "dmarcVerdict")
        results = auth.as_dict()
        policy = scalar_text(dig(inner, "receipt", "dmarcPolicy"))
        if policy:
            results["dmarc_policy"] = policy.lower()
        for name in ("spamVerdict", "virusVerdict"):
            verdict = _verdict(inner, name)
            if verdict is not None:
                results[name.removesuffix("Verdict")] = verdict
        action = scalar_text(dig(inner, "receipt", "action", "type"))
        if action:
            extra["action"] = action
        return ParsedEvent(
            channel="email",
            sender_raw=sender_raw,
            recipients_raw=recipients,
            provider_event_id=scalar_text(dig(inner, "mail", "messageId")) or sns_id,
            variant="email",
            authenticated=auth.authenticated(header_from_domain(sender_raw)),
            envelope_sender_raw=envelope,
            auth_results=results,
            replay_key=replay_key,
            extra=extra,
        )

    def drop_answer(self, event: ParsedEvent) -> Answer:
        return self._drop


def _verdict(inner: dict[str, object], name: str) -> str | None:
    status = scalar_text(dig(inner, "receipt", name, "status"))
    return status.lower() if status else None


def _iso_timestamp(value: object) -> float:
    if not isinstance(value, str) or not value:
        raise InvalidSignature("SNS message without Timestamp")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidSignature(f"SNS Timestamp is not ISO 8601: {value[:40]!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.timestamp()
    except (OverflowError, ValueError, OSError):
        raise InvalidSignature("SNS Timestamp is out of range") from None
