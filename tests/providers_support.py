"""Build correctly signed provider webhooks, for unit and end-to-end tests.

Each ``*_request`` function answers a ``SignedRequest``: method, full URL (the public URL
the provider would call), lowercase headers (``content-type`` included) and body bytes.
``.raw()`` turns it into the ``RawRequest`` a provider's ``handle()`` takes; an e2e test
POSTs ``method``/``url``/``headers``/``body`` to a running gateway instead.

Keys for the providers that sign asymmetrically are made here: ``Ed25519Keys`` (Telnyx)
and ``SnsKeys`` (an RSA key and a self-signed certificate standing in for AWS's SNS
signing certificate, served by a ``cert_loader``). Nothing touches the network.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from gateway.providers.base import RawRequest
from gateway.providers.mailgun import mailgun_signature
from gateway.providers.plivo import plivo_v3_signature
from gateway.providers.ses import sns_string_to_sign
from gateway.providers.twilio import twilio_signature
from gateway.providers.vonage import jwt_hs256_encode, vonage_sms_signature
from gateway.settings import SourceSettings
from gateway.signing import hmac_sha256, standard_webhooks_sign

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"

Pairs = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class SignedRequest:
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def raw(self, **changes: object) -> RawRequest:
        """The ``RawRequest`` for this request; ``changes`` override fields (tests)."""
        parts = urlsplit(self.url)
        values: dict[str, object] = {
            "method": self.method,
            "path": parts.path or "/",
            "query": parts.query,
            "headers": dict(self.headers),
            "body": self.body,
            "public_url": self.url,
            "content_type": self.headers.get("content-type", ""),
        }
        values.update(changes)
        return RawRequest(**values)  # type: ignore[arg-type]

    def with_headers(self, **headers: str | None) -> SignedRequest:
        """A copy with headers replaced (``name_with_underscores=value``) or removed (None)."""
        merged = dict(self.headers)
        for name, value in headers.items():
            key = name.replace("_", "-").lower()
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        return SignedRequest(self.method, self.url, merged, self.body)

    def with_body(self, body: bytes) -> SignedRequest:
        return SignedRequest(self.method, self.url, dict(self.headers), body)


def source(provider: str, secret: str | None, **kw: Any) -> SourceSettings:
    """A ``SourceSettings`` for tests (name = provider unless given; ``forward_url`` on a
    dummy local address); ``kw`` sets any other field."""
    kw.setdefault("name", provider)
    kw.setdefault("forward_url", "http://127.0.0.1:9/app")
    return SourceSettings(provider=provider, secret=secret, **kw)


def _with_query(url: str, params: Pairs) -> str:
    if not params:
        return url
    return url + ("&" if "?" in url else "?") + urlencode(list(params))


# --- Twilio --------------------------------------------------------------------------------


def twilio_request(token: str, url: str, params: Pairs, *, method: str = "POST") -> SignedRequest:
    """A Twilio form POST (or GET with ``params`` in the query) signed with ``token``."""
    if method.upper() == "GET":
        full = _with_query(url, params)
        return SignedRequest("GET", full, {"x-twilio-signature": twilio_signature(token, full)})
    signature = twilio_signature(token, url, list(params))
    headers = {"content-type": FORM, "x-twilio-signature": signature}
    return SignedRequest("POST", url, headers, urlencode(list(params)).encode())


def twilio_json_request(token: str, url: str, body: bytes) -> SignedRequest:
    """A Twilio JSON webhook: ``bodySHA256`` added to the URL, which alone is signed."""
    full = _with_query(url, [("bodySHA256", hashlib.sha256(body).hexdigest())])
    headers = {"content-type": JSON, "x-twilio-signature": twilio_signature(token, full)}
    return SignedRequest("POST", full, headers, body)


def twilio_voice_params(
    sender: str = "+14158675309", to: str = "+18005551212"
) -> list[tuple[str, str]]:
    return [
        ("CallSid", "CA" + "1" * 32),
        ("AccountSid", "AC" + "2" * 32),
        ("From", sender),
        ("To", to),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
    ]


def twilio_sms_params(
    sender: str = "+14158675309", to: str = "+18005551212"
) -> list[tuple[str, str]]:
    return [
        ("MessageSid", "SM" + "3" * 32),
        ("AccountSid", "AC" + "2" * 32),
        ("From", sender),
        ("To", to),
        ("Body", "hello & welcome"),
        ("SmsStatus", "received"),
        ("NumMedia", "0"),
    ]


# --- Telnyx --------------------------------------------------------------------------------


class Ed25519Keys:
    """A Telnyx-style signing key pair (ours; Telnyx publishes no fixed vectors)."""

    def __init__(self) -> None:
        self.private = Ed25519PrivateKey.generate()
        raw = self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_b64 = base64.b64encode(raw).decode()

    def sign(self, timestamp: str, body: bytes) -> str:
        return base64.b64encode(self.private.sign(timestamp.encode() + b"|" + body)).decode()


def telnyx_request(
    keys: Ed25519Keys,
    url: str,
    body: bytes,
    ts: int,
    *,
    content_type: str = JSON,
) -> SignedRequest:
    headers = {
        "content-type": content_type,
        "telnyx-timestamp": str(ts),
        "telnyx-signature-ed25519": keys.sign(str(ts), body),
    }
    return SignedRequest("POST", url, headers, body)


def telnyx_call_initiated(
    sender: str = "+13125550001", to: str = "+13125550100", *, direction: str = "incoming"
) -> bytes:
    return json.dumps(
        {
            "data": {
                "record_type": "event",
                "event_type": "call.initiated",
                "id": str(uuid.uuid4()),
                "occurred_at": "2024-01-15T10:30:00.000Z",
                "payload": {
                    "call_control_id": "v3:" + secrets.token_hex(12),
                    "call_leg_id": str(uuid.uuid4()),
                    "call_session_id": str(uuid.uuid4()),
                    "connection_id": "1234567890",
                    "from": sender,
                    "to": to,
                    "direction": direction,
                    "state": "parked",
                },
            },
            "meta": {"attempt": 1, "delivered_to": "https://hooks.example/hooks/telnyx"},
        }
    ).encode()


def telnyx_message_received(
    sender: str = "+13125550001", to: str = "+13125550100", *, event_type: str = "message.received"
) -> bytes:
    return json.dumps(
        {
            "data": {
                "record_type": "event",
                "event_type": event_type,
                "id": str(uuid.uuid4()),
                "occurred_at": "2024-01-15T10:30:00.000Z",
                "payload": {
                    "id": str(uuid.uuid4()),
                    "direction": "inbound" if event_type == "message.received" else "outbound",
                    "type": "SMS",
                    "from": {
                        "phone_number": sender,
                        "carrier": "T-Mobile",
                        "line_type": "Wireless",
                    },
                    "to": [{"phone_number": to, "status": "webhook_delivered"}],
                    "text": "hello",
                    "media": [],
                },
            }
        }
    ).encode()


# --- Plivo ---------------------------------------------------------------------------------


def plivo_request(
    token: str, url: str, params: Pairs, *, method: str = "POST", nonce: str | None = None
) -> SignedRequest:
    """A Plivo V3-signed request (our own vectors: Plivo publishes none for V3)."""
    nonce = nonce or str(secrets.randbelow(10**20))
    if method.upper() == "GET":
        full = _with_query(url, params)
        signature = plivo_v3_signature(token, "GET", full, nonce, {})
        headers = {"x-plivo-signature-v3": signature, "x-plivo-signature-v3-nonce": nonce}
        return SignedRequest("GET", full, headers)
    grouped: dict[str, list[str]] = {}
    for key, value in params:
        grouped.setdefault(key, []).append(value)
    signature = plivo_v3_signature(token, "POST", url, nonce, grouped)
    headers = {
        "content-type": FORM,
        "x-plivo-signature-v3": signature,
        "x-plivo-signature-v3-nonce": nonce,
    }
    return SignedRequest("POST", url, headers, urlencode(list(params)).encode())


def plivo_voice_params(
    sender: str = "14155550001", to: str = "14155550100"
) -> list[tuple[str, str]]:
    return [
        ("CallUUID", str(uuid.uuid4())),
        ("From", sender),
        ("To", to),
        ("Direction", "inbound"),
        ("CallStatus", "ringing"),
    ]


def plivo_sms_params(sender: str = "14155550001", to: str = "14155550100") -> list[tuple[str, str]]:
    return [
        ("MessageUUID", str(uuid.uuid4())),
        ("From", sender),
        ("To", to),
        ("Text", "hi"),
        ("Type", "sms"),
        ("Units", "1"),
    ]


# --- Vonage --------------------------------------------------------------------------------


def vonage_jwt(secret: str, now: float, payload: bytes | None = None, **claims: object) -> str:
    """A Vonage signed-webhook JWT (HS256 over the signature secret)."""
    body: dict[str, object] = {
        "iat": int(now),
        "jti": str(uuid.uuid4()),
        "iss": "Vonage",
        "api_key": "abcd1234",
        "application_id": str(uuid.uuid4()),
    }
    if payload is not None:
        body["payload_hash"] = hashlib.sha256(payload).hexdigest()
    body.update(claims)
    return jwt_hs256_encode(body, secret)


def vonage_answer_params(sender: str = "447700900000", to: str = "442079460000") -> dict[str, str]:
    return {
        "to": to,
        "from": sender,
        "uuid": uuid.uuid4().hex,
        "conversation_uuid": "CON-" + str(uuid.uuid4()),
        "region_url": "https://api-eu-1.vonage.com",
    }


def vonage_voice_request(
    secret: str, url: str, params: Mapping[str, str], now: float, method: str = "GET"
) -> SignedRequest:
    """A Vonage answer webhook: GET with query parameters, or POST with a JSON body."""
    if method.upper() == "GET":
        full = _with_query(url, list(params.items()))
        payload = json.dumps(dict(params), separators=(",", ":")).encode()
        headers = {"authorization": "Bearer " + vonage_jwt(secret, now, payload)}
        return SignedRequest("GET", full, headers)
    body = json.dumps(dict(params)).encode()
    headers = {"content-type": JSON, "authorization": "Bearer " + vonage_jwt(secret, now, body)}
    return SignedRequest("POST", url, headers, body)


def vonage_sms_params(
    sender: str = "447700900001", to: str = "447700900000", *, now: float
) -> dict[str, str]:
    return {
        "msisdn": sender,
        "to": to,
        "messageId": "0A00" + secrets.token_hex(6).upper(),  # unique: a repeat is a retry
        "text": "Hello world & more",
        "type": "text",
        "keyword": "HELLO",
        "message-timestamp": "2020-01-01 12:00:00",
        "timestamp": str(int(now)),
        "nonce": str(uuid.uuid4()),
    }


def vonage_sms_request(
    secret: str,
    url: str,
    params: Mapping[str, str],
    *,
    method: str = "POST",
    signature_method: str = "md5hash",
) -> SignedRequest:
    """An inbound SMS with a ``sig`` parameter (form POST or GET)."""
    signed = dict(params)
    signed["sig"] = vonage_sms_signature(dict(params), secret, signature_method)
    if method.upper() == "GET":
        return SignedRequest("GET", _with_query(url, list(signed.items())))
    return SignedRequest("POST", url, {"content-type": FORM}, urlencode(signed).encode())


# --- Mailgun -------------------------------------------------------------------------------


def mailgun_fields(
    *,
    recipient: str = "sales.team@acme.example",
    sender: str = "bounce+abc@mail.example.com",
    from_header: str = "Bob Example <bob@example.com>",
    spf: str = "Pass",
    dkim: str = "Pass",
    dkim_domain: str = "example.com",
) -> list[tuple[str, str]]:
    headers = [
        ["X-Mailgun-Spf", spf],
        ["X-Mailgun-Dkim-Check-Result", dkim],
        ["DKIM-Signature", f"v=1; a=rsa-sha256; d={dkim_domain}; s=sel; h=from; b=abc"],
        ["Message-Id", "<20240115.abc@example.com>"],
        ["From", from_header],
        ["To", recipient],
        ["Subject", "Hello"],
    ]
    return [
        ("recipient", recipient),
        ("sender", sender),
        ("from", from_header),
        ("subject", "Hello"),
        ("body-plain", "Hi there"),
        ("message-headers", json.dumps(headers)),
    ]


def mailgun_request(
    key: str,
    url: str,
    fields: Pairs,
    ts: int,
    *,
    token: str | None = None,
    multipart: bool = False,
) -> SignedRequest:
    """A Mailgun route forward (our own vectors: Mailgun publishes none)."""
    token = token or secrets.token_hex(25)
    signed = [
        *fields,
        ("timestamp", str(ts)),
        ("token", token),
        ("signature", mailgun_signature(key, str(ts), token)),
    ]
    if multipart:
        body, content_type = encode_multipart(signed, files=[("attachment-1", "a.txt", b"hi\r\n")])
        return SignedRequest("POST", url, {"content-type": content_type}, body)
    return SignedRequest("POST", url, {"content-type": FORM}, urlencode(signed).encode())


# --- SendGrid / Postmark (Basic auth) -----------------------------------------------------


def basic_auth(user_pass: str) -> str:
    return "Basic " + base64.b64encode(user_pass.encode()).decode()


def sendgrid_fields(
    *,
    to: Sequence[str] = ("sales.team@acme.example",),
    envelope_from: str = "bounce@mail.example.com",
    from_header: str = "Bob Example <bob@example.com>",
    spf: str = "pass",
    dkim: str = "{@example.com : pass}",
) -> list[tuple[str, str]]:
    return [
        ("headers", f"From: {from_header}\nTo: {', '.join(to)}\nMessage-ID: <sg.1@example.com>\n"),
        ("from", from_header),
        ("to", ", ".join(to)),
        ("subject", "Hello"),
        ("text", "Hi there"),
        ("envelope", json.dumps({"to": list(to), "from": envelope_from})),
        ("SPF", spf),
        ("dkim", dkim),
        ("charsets", json.dumps({"to": "UTF-8", "from": "UTF-8", "subject": "UTF-8"})),
    ]


def sendgrid_request(user_pass: str, url: str, fields: Pairs) -> SignedRequest:
    body, content_type = encode_multipart(fields, files=[("attachment1", "a.pdf", b"%PDF-1.4")])
    headers = {"content-type": content_type, "authorization": basic_auth(user_pass)}
    return SignedRequest("POST", url, headers, body)


def postmark_payload(
    *,
    from_email: str = "bob@example.com",
    original_recipient: str | None = "sales.team@acme.example",
    received_spf: str = "Pass (sender SPF authorized) identity=mailfrom; client-ip=192.0.2.1; "
    'helo=mail.example.com; envelope-from="bounce@mail.example.com"; receiver=<UNKNOWN>',
) -> dict[str, object]:
    payload: dict[str, object] = {
        "FromName": "Bob Example",
        "MessageStream": "inbound",
        "From": from_email,
        "FromFull": {"Email": from_email, "Name": "Bob Example", "MailboxHash": ""},
        "To": "sales.team@acme.example",
        "ToFull": [{"Email": "sales.team@acme.example", "Name": "", "MailboxHash": ""}],
        "Cc": "",
        "CcFull": [],
        "Subject": "Hello",
        "MessageID": str(uuid.uuid4()),
        "Date": "Mon, 15 Jan 2024 10:30:00 +0000",
        "MailboxHash": "",
        "TextBody": "Hi",
        "Headers": [
            {"Name": "Received-SPF", "Value": received_spf},
            {"Name": "X-Spam-Status", "Value": "No"},
        ],
        "Attachments": [],
    }
    if original_recipient is not None:
        payload["OriginalRecipient"] = original_recipient
    return payload


def postmark_request(user_pass: str, url: str, payload: Mapping[str, object]) -> SignedRequest:
    headers = {"content-type": JSON, "authorization": basic_auth(user_pass)}
    return SignedRequest("POST", url, headers, json.dumps(payload).encode())


# --- SES via SNS ---------------------------------------------------------------------------

SNS_CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem"
TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:ses-inbound"


class SnsKeys:
    """An RSA key and a self-signed certificate standing in for SNS's (our own vectors)."""

    def __init__(self, cert_url: str = SNS_CERT_URL) -> None:
        self.cert_url = cert_url
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .sign(self.private, hashes.SHA256())
        )
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        self.fetched: list[str] = []

    def loader(self, url: str) -> bytes:
        """A ``cert_loader`` serving the certificate (and recording what was asked)."""
        self.fetched.append(url)
        if url != self.cert_url:
            raise LookupError(f"no certificate at {url}")
        return self.cert_pem

    def sign(self, message: dict[str, object], version: str = "1") -> dict[str, object]:
        signed = dict(message)
        signed["SignatureVersion"] = version
        signed["SigningCertURL"] = self.cert_url
        algorithm: hashes.HashAlgorithm = hashes.SHA1() if version == "1" else hashes.SHA256()  # noqa: S303
        signature = self.private.sign(sns_string_to_sign(signed), padding.PKCS1v15(), algorithm)
        signed["Signature"] = base64.b64encode(signature).decode()
        return signed


def iso_z(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def ses_received_message(
    *,
    recipients: Sequence[str] = ("sales.team@acme.example",),
    from_header: str = "Jane Doe <janedoe@example.com>",
    source_addr: str = "0000014fbe1c09cf-7cb9f704@amazonses.com",
    spf: str = "PASS",
    dkim: str = "PASS",
    dmarc: str = "PASS",
    message_id: str | None = None,
) -> dict[str, object]:
    """The SES "Received" notification (the inner ``Message``), after AWS's example."""
    return {
        "notificationType": "Received",
        "mail": {
            "timestamp": "2015-09-11T20:32:33.936Z",
            "source": source_addr,
            "messageId": message_id or secrets.token_hex(16),
            "destination": list(recipients),
            "headersTruncated": False,
            "commonHeaders": {
                "returnPath": source_addr,
                "from": [from_header],
                "to": list(recipients),
                "subject": "Hello",
            },
        },
        "receipt": {
            "timestamp": "2015-09-11T20:32:33.936Z",
            "processingTimeMillis": 222,
            "recipients": list(recipients),
            "spamVerdict": {"status": "PASS"},
            "virusVerdict": {"status": "PASS"},
            "spfVerdict": {"status": spf},
            "dkimVerdict": {"status": dkim},
            "dmarcVerdict": {"status": dmarc},
            "action": {"type": "SNS", "topicArn": TOPIC_ARN},
        },
    }


def sns_notification(
    keys: SnsKeys,
    url: str,
    inner: Mapping[str, object] | str,
    now: float,
    *,
    topic_arn: str = TOPIC_ARN,
    version: str = "1",
    subject: str | None = "Amazon SES Email Receipt Notification",
) -> SignedRequest:
    message: dict[str, object] = {
        "Type": "Notification",
        "MessageId": str(uuid.uuid4()),
        "TopicArn": topic_arn,
        "Message": inner if isinstance(inner, str) else json.dumps(inner),
        "Timestamp": iso_z(now),
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&x=1",
    }
    if subject is not None:
        message["Subject"] = subject
    return _sns_request(keys, url, keys.sign(message, version))


def sns_subscription_confirmation(
    keys: SnsKeys, url: str, now: float, *, topic_arn: str = TOPIC_ARN
) -> SignedRequest:
    token = secrets.token_hex(32)
    message: dict[str, object] = {
        "Type": "SubscriptionConfirmation",
        "MessageId": str(uuid.uuid4()),
        "Token": token,
        "TopicArn": topic_arn,
        "Message": f"You have chosen to subscribe to the topic {topic_arn}.",
        "SubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription"
        f"&TopicArn={topic_arn}&Token={token}",
        "Timestamp": iso_z(now),
    }
    return _sns_request(keys, url, keys.sign(message))


def _sns_request(keys: SnsKeys, url: str, message: dict[str, object]) -> SignedRequest:
    headers = {
        "content-type": "text/plain; charset=UTF-8",
        "x-amz-sns-message-type": str(message["Type"]),
        "x-amz-sns-message-id": str(message["MessageId"]),
        "x-amz-sns-topic-arn": str(message["TopicArn"]),
    }
    return SignedRequest("POST", url, headers, json.dumps(message).encode())


# --- generic -------------------------------------------------------------------------------


def generic_hmac_request(
    secret: str, url: str, body: bytes, *, header: str = "x-signature", content_type: str = JSON
) -> SignedRequest:
    signature = hmac_sha256(secret.encode(), body).hex()
    return SignedRequest("POST", url, {"content-type": content_type, header: signature}, body)


def generic_standard_webhooks_request(
    whsec: str, url: str, body: bytes, ts: int, *, msg_id: str | None = None
) -> SignedRequest:
    msg_id = msg_id or "msg_" + secrets.token_hex(8)
    headers = {
        "content-type": JSON,
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": standard_webhooks_sign(whsec, msg_id, ts, body),
    }
    return SignedRequest("POST", url, headers, body)


# --- multipart -----------------------------------------------------------------------------


def encode_multipart(
    fields: Pairs, files: Sequence[tuple[str, str, bytes]] = ()
) -> tuple[bytes, str]:
    """``multipart/form-data`` body and Content-Type for text fields and file parts."""
    boundary = "----sendergate" + secrets.token_hex(8)
    chunks: list[bytes] = []
    for name, value in fields:
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
        )
    for name, filename, data in files:
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
            + data
            + b"\r\n"
        )
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"
