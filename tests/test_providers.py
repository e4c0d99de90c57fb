"""Providers: verify raw requests, parse them once, answer drops.

Signed requests come from ``tests.providers_support``. Twilio, Plivo V2 and Vonage
md5hash are also checked against their published vectors (``test_signing.py``); Plivo
V3, Telnyx, Mailgun, Vonage JWT and SNS use vectors generated here (our keys, our
certificate), cross-checked with the official SDKs where they have a helper:
twilio ``RequestValidator``, plivo ``validate_v3_signature``, telnyx
``verify_webhook_signature``, vonage ``verify_signature`` (JWT) and ``Auth.sign_params``
(SMS HMAC). Mailgun, SendGrid, Postmark and SNS have no such SDK helper installed here
(mailgun and the AWS SNS message validator are not Python SDKs on the index we use).

Last, hypothesis feeds random requests to every provider and checks that nothing but a
``GatewayError`` ever escapes ``handle()``.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import time
from collections.abc import Callable
from urllib.parse import urlencode

import jwt as pyjwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plivo.utils.signature_v3 import construct_post_url, get_signature_v3, validate_v3_signature
from twilio.request_validator import RequestValidator
from vonage_http_client.auth import Auth  # type: ignore[import-untyped]
from vonage_jwt.verify_jwt import verify_signature  # type: ignore[import-untyped]

from gateway.errors import (
    BadRequest,
    ConfigError,
    Forbidden,
    GatewayError,
    InvalidSignature,
    UnsupportedMediaType,
    UpstreamError,
)
from gateway.providers import PROVIDERS, Provider, allowed_options, build_provider
from gateway.providers.base import ParsedEvent, RawRequest
from gateway.providers.generic import GenericProvider
from gateway.providers.mailgun import MailgunProvider
from gateway.providers.plivo import PlivoProvider
from gateway.providers.postmark import PostmarkProvider
from gateway.providers.sendgrid import SendGridProvider
from gateway.providers.ses import SesProvider
from gateway.providers.telnyx import TelnyxProvider
from gateway.providers.twilio import TwilioProvider
from gateway.providers.vonage import VonageProvider, jwt_hs256_encode
from tests import providers_support as ps

NOW = 1_700_000_000.0
TWILIO_TOKEN = "twilio-auth-token"
PLIVO_TOKEN = "plivo-auth-token"
VONAGE_SECRET = "vonage-signature-secret-0123456789"
MAILGUN_KEY = "key-mailgun-signing"
BASIC = "parse:s3cret"
WHSEC = "whsec_" + base64.b64encode(b"generic-secret-generic-secret-32").decode()
HOOK = "https://hooks.acme.example/hooks/"


def twilio(**kw: object) -> TwilioProvider:
    return TwilioProvider(ps.source("twilio", TWILIO_TOKEN, **kw))


def rejects(
    provider: Provider, req: RawRequest, error: type[GatewayError], match: str, now: float = NOW
) -> None:
    with pytest.raises(error, match=match) as info:
        provider.handle(req, now)
    assert type(info.value) is error or issubclass(type(info.value), error)


# ============================================================================ Twilio


def test_twilio_voice_form_post() -> None:
    """A signed voice webhook parses to the caller, the called number and the CallSid,
    and the drop answer rejects the call before it is answered."""
    provider = twilio()
    req = ps.twilio_request(TWILIO_TOKEN, HOOK + "twilio", ps.twilio_voice_params())
    event = provider.handle(req.raw(), NOW)
    assert (event.channel, event.variant, event.sender_raw) == ("voice", "voice", "+14158675309")
    assert event.recipients_raw == ("+18005551212",)
    assert event.provider_event_id == "CA" + "1" * 32
    assert event.authenticated and not event.passthrough
    answer = provider.drop_answer(event)
    assert answer.status == 200 and answer.content_type is not None
    assert answer.body.endswith(b'<Response><Reject reason="rejected"/></Response>')


def test_twilio_busy_reject_reason() -> None:
    """reject_reason = busy is carried into the <Reject> verb."""
    provider = twilio(reject_reason="busy")
    req = ps.twilio_request(TWILIO_TOKEN, HOOK + "twilio", ps.twilio_voice_params())
    assert b'<Reject reason="busy"/>' in provider.drop_answer(provider.handle(req.raw(), NOW)).body


def test_twilio_sms_and_whatsapp() -> None:
    """Messages parse as sms (whatsapp as a variant) and drop with an empty <Response/>."""
    provider = twilio()
    req = ps.twilio_request(TWILIO_TOKEN, HOOK + "twilio", ps.twilio_sms_params())
    event = provider.handle(req.raw(), NOW)
    assert (event.channel, event.variant) == ("sms", "sms")
    assert event.provider_event_id == "SM" + "3" * 32
    assert provider.drop_answer(event).body.endswith(b"<Response/>")
    params = ps.twilio_sms_params("whatsapp:+14155238886", "whatsapp:+18005551212")
    event = provider.handle(ps.twilio_request(TWILIO_TOKEN, HOOK + "t", params).raw(), NOW)
    assert (event.channel, event.variant, event.sender_raw) == (
        "sms",
        "whatsapp",
        "whatsapp:+14155238886",
    )


def test_twilio_get_with_query() -> None:
    """GET webhooks carry their parameters in the signed URL's query."""
    req = ps.twilio_request(TWILIO_TOKEN, HOOK + "twilio", ps.twilio_voice_params(), method="GET")
    event = twilio().handle(req.raw(), NOW)
    assert event.channel == "voice" and event.sender_raw == "+14158675309"


@pytest.mark.parametrize(
    ("signed_url", "public_url"),
    [
        ("https://hooks.acme.example:443/hooks/twilio", "https://hooks.acme.example/hooks/twilio"),
        ("https://hooks.acme.example/hooks/twilio", "https://hooks.acme.example:443/hooks/twilio"),
        (
            "http://hooks.acme.example:8080/hooks/twilio",
            "http://hooks.acme.example:8080/hooks/twilio",
        ),
        ("http://hooks.acme.example/hooks/twilio", "http://hooks.acme.example:8080/hooks/twilio"),
    ],
)
def test_twilio_url_with_and_without_port(signed_url: str, public_url: str) -> None:
    """As in the SDK, a signature over the URL with or without its port is accepted."""
    req = ps.twilio_request(TWILIO_TOKEN, signed_url, ps.twilio_voice_params())
    assert twilio().handle(req.raw(public_url=public_url), NOW).channel == "voice"


def test_twilio_published_vector_end_to_end() -> None:
    """The twilio-python vector, as a request, passes verification and parses."""
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    body = urlencode(
        [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]
    ).encode()
    headers = {"content-type": ps.FORM, "x-twilio-signature": "RSOYDt4T1cUTdK1PDd93/VVr8B8="}
    req = ps.SignedRequest("POST", url, headers, body).raw()
    provider = TwilioProvider(ps.source("twilio", "12345"))
    assert provider.handle(req, NOW).provider_event_id == "CA1234567890ABCDE"


def test_twilio_duplicate_keys_vector_verifies() -> None:
    """Repeated keys are sorted by value (published vector); the event then lacks a
    CallSid or MessageSid, which is a 400, not a signature error."""
    body = urlencode(
        [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234")]
    )
    headers = {"content-type": ps.FORM, "x-twilio-signature": "IK+Dwps556ElfBT0I3Rgjkr1wJU="}
    req = ps.SignedRequest(
        "POST", "https://mycompany.com/myapp.php?foo=1&bar=2", headers, body.encode()
    )
    rejects(TwilioProvider(ps.source("twilio", "12345")), req.raw(), BadRequest, "without CallSid")


def test_twilio_json_body_with_body_sha256() -> None:
    """JSON bodies are checked by bodySHA256 and the signed URL; the published JSON vector
    verifies, and a changed body is refused."""
    body = b'{"property": "value", "boolean": true}'
    headers = {
        "content-type": "application/json",
        "x-twilio-signature": "a9nBmqA0ju/hNViExpshrM61xv4=",
    }
    url = (
        "https://mycompany.com/myapp.php?foo=1&bar=2&bodySHA256="
        "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
    )
    req = ps.SignedRequest("POST", url, headers, body)
    provider = TwilioProvider(ps.source("twilio", "12345"))
    event = provider.handle(req.raw(), NOW)
    assert event.passthrough  # a signed JSON callback that is not a call or message
    rejects(provider, req.with_body(body + b" ").raw(), InvalidSignature, "bodySHA256")
    message = json.dumps({"MessageSid": "SM1", "From": "+15550001", "To": "+15550002"}).encode()
    event = twilio().handle(ps.twilio_json_request(TWILIO_TOKEN, HOOK + "t", message).raw(), NOW)
    assert (event.channel, event.sender_raw, event.passthrough) == ("sms", "+15550001", False)
    no_hash = ps.SignedRequest(
        "POST", HOOK, {"content-type": "application/json", "x-twilio-signature": "AAAA"}, message
    )
    rejects(twilio(), no_hash.raw(), InvalidSignature, "bodySHA256")


def test_twilio_sdk_cross_check() -> None:
    """twilio's RequestValidator signs what we accept and accepts what we sign, for SHA-1
    and for shared-key HMAC-SHA256 signing."""
    url = HOOK + "twilio?x=1"
    params = ps.twilio_voice_params()
    validator = RequestValidator(TWILIO_TOKEN)
    sdk_signature = validator.compute_signature(url, dict(params))
    req = ps.twilio_request(TWILIO_TOKEN, url, params)
    assert req.headers["x-twilio-signature"] == sdk_signature
    assert validator.validate(url, dict(params), req.headers["x-twilio-signature"])
    sha256 = validator.compute_signature(url, dict(params), "HMAC_SHA256")
    signed = req.with_headers(
        x_twilio_signature=sha256,
        x_twilio_webhooks_signature_settings="key=webhooks_sharedkey_1,algorithm=HMAC_SHA256",
    )
    assert twilio().handle(signed.raw(), NOW).channel == "voice"
    odd = signed.with_headers(x_twilio_webhooks_signature_settings="algorithm=HMAC_SHA512")
    rejects(twilio(), odd.raw(), InvalidSignature, "unsupported Twilio signature algorithm")


def test_twilio_refusals() -> None:
    """Forged, missing, truncated, mistyped and incomplete requests get the right error."""
    provider = twilio()
    req = ps.twilio_request(TWILIO_TOKEN, HOOK + "twilio", ps.twilio_voice_params())
    rejects(
        provider,
        req.with_headers(x_twilio_signature=None).raw(),
        InvalidSignature,
        "missing X-Twilio-Signature",
    )
    forged = ps.twilio_request("other-token", HOOK + "twilio", ps.twilio_voice_params())
    rejects(provider, forged.raw(), InvalidSignature, "does not match")
    rejects(
        provider, req.with_headers(x_twilio_signature="!!").raw(), InvalidSignature, "not base64"
    )
    rejects(provider, req.with_body(req.body[:-5]).raw(), InvalidSignature, "does not match")
    rejects(provider, req.raw(public_url=HOOK + "other"), InvalidSignature, "public URL")
    rejects(
        provider,
        req.with_headers(content_type="text/plain").raw(),
        UnsupportedMediaType,
        "Twilio sends",
    )
    bad_utf8 = req.with_body(b"From=%FF").raw()
    rejects(provider, bad_utf8, BadRequest, "UTF-8")
    no_from = [(k, v) for k, v in ps.twilio_sms_params() if k != "From"]
    rejects(
        provider, ps.twilio_request(TWILIO_TOKEN, HOOK, no_from).raw(), BadRequest, "without From"
    )
    nothing = ps.twilio_request(TWILIO_TOKEN, HOOK, [("Foo", "bar")])
    rejects(provider, nothing.raw(), BadRequest, "without CallSid or MessageSid")


def test_twilio_status_callbacks_pass_through() -> None:
    """Delivery reports and call-progress callbacks are forwarded without filtering."""
    provider = twilio()
    dlr = [("MessageSid", "SM1"), ("MessageStatus", "delivered"), ("From", "+1"), ("To", "+2")]
    assert provider.handle(ps.twilio_request(TWILIO_TOKEN, HOOK, dlr).raw(), NOW).passthrough
    done = [("CallSid", "CA1"), ("CallStatus", "completed"), ("From", "+1"), ("To", "+2")]
    assert provider.handle(ps.twilio_request(TWILIO_TOKEN, HOOK, done).raw(), NOW).passthrough
    outbound = [("CallSid", "CA1"), ("Direction", "outbound-api"), ("From", "+1"), ("To", "+2")]
    assert provider.handle(ps.twilio_request(TWILIO_TOKEN, HOOK, outbound).raw(), NOW).passthrough


def test_twilio_verify_false_skips_only_the_signature() -> None:
    """verify = false accepts an unsigned request but still parses strictly."""
    provider = TwilioProvider(ps.source("twilio", None, verify=False))
    req = ps.twilio_request("whatever", HOOK, ps.twilio_sms_params()).with_headers(
        x_twilio_signature=None
    )
    assert provider.handle(req.raw(), NOW).channel == "sms"
    rejects(
        provider,
        req.with_headers(content_type="application/xml").raw(),
        UnsupportedMediaType,
        "Twilio sends",
    )


# ============================================================================ Telnyx


@pytest.fixture(scope="module")
def telnyx_keys() -> ps.Ed25519Keys:
    return ps.Ed25519Keys()


def telnyx(keys: ps.Ed25519Keys, **kw: object) -> TelnyxProvider:
    return TelnyxProvider(ps.source("telnyx", keys.public_b64, **kw))


def test_telnyx_call_control_initiated(telnyx_keys: ps.Ed25519Keys) -> None:
    """call.initiated (incoming) is a voice event with its call_control_id; the drop answer
    only acknowledges and asks the pipeline for the async reject."""
    provider = telnyx(telnyx_keys)
    body = ps.telnyx_call_initiated()
    event = provider.handle(ps.telnyx_request(telnyx_keys, HOOK, body, int(NOW)).raw(), NOW)
    data = json.loads(body)["data"]
    assert (event.channel, event.variant, event.sender_raw) == (
        "voice",
        "call_control",
        "+13125550001",
    )
    assert event.recipients_raw == ("+13125550100",)
    assert event.provider_event_id == data["id"]
    assert event.call_control_id == data["payload"]["call_control_id"]
    answer = provider.drop_answer(event)
    assert (answer.status, answer.telnyx_reject, answer.body) == (200, True, b"")


def test_telnyx_message_received(telnyx_keys: ps.Ed25519Keys) -> None:
    """message.received is an sms event from payload.from.phone_number to payload.to[]."""
    provider = telnyx(telnyx_keys)
    body = ps.telnyx_message_received()
    event = provider.handle(ps.telnyx_request(telnyx_keys, HOOK, body, int(NOW)).raw(), NOW)
    assert (event.channel, event.variant, event.sender_raw) == ("sms", "messaging", "+13125550001")
    assert event.recipients_raw == ("+13125550100",)
    answer = provider.drop_answer(event)
    assert (answer.status, answer.telnyx_reject) == (200, False)


@pytest.mark.parametrize(
    "body",
    [
        ps.telnyx_message_received(event_type="message.sent"),
        ps.telnyx_call_initiated(direction="outgoing"),
        json.dumps({"data": {"event_type": "call.hangup", "id": "x", "payload": {}}}).encode(),
    ],
    ids=["message.sent", "outgoing-call", "call.hangup"],
)
def test_telnyx_other_events_pass_through(telnyx_keys: ps.Ed25519Keys, body: bytes) -> None:
    """Events that are not inbound calls or messages are forwarded unfiltered."""
    event = telnyx(telnyx_keys).handle(
        ps.telnyx_request(telnyx_keys, HOOK, body, int(NOW)).raw(), NOW
    )
    assert event.passthrough


def test_telnyx_texml(telnyx_keys: ps.Ed25519Keys) -> None:
    """TeXML form webhooks (same ed25519 headers) parse as voice and drop with <Reject/>."""
    provider = telnyx(telnyx_keys)
    body = urlencode(
        {"CallSid": "v3:abc", "From": "+35319605860", "To": "+13129457420", "CallStatus": "ringing"}
    ).encode()
    req = ps.telnyx_request(telnyx_keys, HOOK, body, int(NOW), content_type=ps.FORM)
    event = provider.handle(req.raw(), NOW)
    assert (event.channel, event.variant, event.provider_event_id) == ("voice", "texml", "v3:abc")
    assert provider.drop_answer(event).body.endswith(
        b'<Response><Reject reason="rejected"/></Response>'
    )
    progress = urlencode(
        {"CallSid": "v3:abc", "CallStatus": "ringing", "CallbackSource": "call-progress-events"}
    )
    req = ps.telnyx_request(telnyx_keys, HOOK, progress.encode(), int(NOW), content_type=ps.FORM)
    assert provider.handle(req.raw(), NOW).passthrough


def test_telnyx_refusals(telnyx_keys: ps.Ed25519Keys) -> None:
    """Stale, future, forged, replayed, truncated, mistyped and incomplete requests."""
    provider = telnyx(telnyx_keys)
    body = ps.telnyx_message_received()
    req = ps.telnyx_request(telnyx_keys, HOOK, body, int(NOW))
    rejects(
        provider,
        req.with_headers(telnyx_signature_ed25519=None).raw(),
        InvalidSignature,
        "missing telnyx-signature",
    )
    rejects(
        provider,
        req.with_headers(telnyx_timestamp=None).raw(),
        InvalidSignature,
        "missing telnyx-timestamp",
    )
    stale = ps.telnyx_request(telnyx_keys, HOOK, body, int(NOW) - 301)
    rejects(provider, stale.raw(), InvalidSignature, "stale telnyx-timestamp")
    future = ps.telnyx_request(telnyx_keys, HOOK, body, int(NOW) + 301)
    rejects(provider, future.raw(), InvalidSignature, "in the future")
    forged = ps.telnyx_request(ps.Ed25519Keys(), HOOK, body, int(NOW))
    rejects(provider, forged.raw(), InvalidSignature, "does not match")
    rejects(provider, req.with_body(body[:-10]).raw(), InvalidSignature, "does not match")
    rejects(
        provider,
        req.with_headers(telnyx_signature_ed25519="abc").raw(),
        InvalidSignature,
        "not a base64",
    )
    provider.handle(req.raw(), NOW)
    rejects(provider, req.raw(), InvalidSignature, "replayed")
    fresh = (
        ps.telnyx_message_received()
    )  # content type is not signed: a new body, or it is a replay
    wrong_type = ps.telnyx_request(telnyx_keys, HOOK, fresh, int(NOW), content_type="text/plain")
    rejects(provider, wrong_type.raw(), UnsupportedMediaType, "Telnyx sends")
    no_data = ps.telnyx_request(telnyx_keys, HOOK, b'{"meta": {}}', int(NOW))
    rejects(provider, no_data.raw(), BadRequest, "without a data object")
    not_json = ps.telnyx_request(telnyx_keys, HOOK, b'{"data": ', int(NOW))
    rejects(provider, not_json.raw(), BadRequest, "not valid JSON")
    bad = json.loads(ps.telnyx_call_initiated())
    del bad["data"]["payload"]["from"]
    no_from = ps.telnyx_request(telnyx_keys, HOOK, json.dumps(bad).encode(), int(NOW))
    rejects(provider, no_from.raw(), BadRequest, "payload.from")


def test_telnyx_release_lets_a_retry_through(telnyx_keys: ps.Ed25519Keys) -> None:
    """After release() (forward failed), the same signed request is accepted again."""
    provider = telnyx(telnyx_keys)
    req = ps.telnyx_request(telnyx_keys, HOOK, ps.telnyx_message_received(), int(NOW)).raw()
    event = provider.handle(req, NOW)
    provider.release(event)
    assert provider.handle(req, NOW + 1).channel == "sms"


def test_telnyx_tolerance_option_and_bad_key(telnyx_keys: ps.Ed25519Keys) -> None:
    """options.tolerance_s widens the window; a secret that is not a key stops start-up."""
    provider = telnyx(telnyx_keys, options={"tolerance_s": 900})
    req = ps.telnyx_request(telnyx_keys, HOOK, ps.telnyx_message_received(), int(NOW) - 600)
    assert provider.handle(req.raw(), NOW).channel == "sms"
    with pytest.raises(ConfigError, match=r"sources\.telnyx\.secret"):
        TelnyxProvider(ps.source("telnyx", "not-a-key"))


def _telnyx_sdk_verifier() -> Callable[[bytes, dict[str, str], str], None]:
    """telnyx-python's ``lib/webhook_verification.py``, loaded on its own: it is
    self-contained, while importing the ``telnyx`` package costs seconds (and mypy
    thousands of modules)."""
    package = importlib.util.find_spec("telnyx")
    assert package is not None and package.submodule_search_locations
    path = f"{package.submodule_search_locations[0]}/lib/webhook_verification.py"
    spec = importlib.util.spec_from_file_location("_telnyx_webhook_verification", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    verify: Callable[[bytes, dict[str, str], str], None] = module.verify_webhook_signature
    return verify


def test_telnyx_sdk_cross_check(telnyx_keys: ps.Ed25519Keys) -> None:
    """telnyx-python's verify_webhook_signature (which reads the real clock) accepts what
    our helper signs, and the provider accepts the same request."""
    verify_webhook_signature = _telnyx_sdk_verifier()
    now = time.time()
    body = ps.telnyx_call_initiated()
    req = ps.telnyx_request(telnyx_keys, HOOK, body, int(now))
    verify_webhook_signature(body, req.headers, telnyx_keys.public_b64)
    assert telnyx(telnyx_keys).handle(req.raw(), now).variant == "call_control"


# ============================================================================ Plivo


def plivo(**kw: object) -> PlivoProvider:
    return PlivoProvider(ps.source("plivo", PLIVO_TOKEN, **kw))


def test_plivo_voice_and_sms() -> None:
    """V3-signed voice and message webhooks parse (numbers gain their +); drops are
    <Hangup reason="rejected"/> and an empty <Response/>."""
    provider = plivo()
    params = ps.plivo_voice_params()
    event = provider.handle(ps.plivo_request(PLIVO_TOKEN, HOOK + "plivo", params).raw(), NOW)
    assert (event.channel, event.sender_raw, event.recipients_raw) == (
        "voice",
        "+14155550001",
        ("+14155550100",),
    )
    assert event.provider_event_id == params[0][1]
    assert provider.drop_answer(event).body.endswith(
        b'<Response><Hangup reason="rejected"/></Response>'
    )
    params = ps.plivo_sms_params(to="12345")
    event = provider.handle(ps.plivo_request(PLIVO_TOKEN, HOOK + "plivo", params).raw(), NOW)
    assert (event.channel, event.variant, event.recipients_raw) == ("sms", "sms", ("12345",))
    assert provider.drop_answer(event).body.endswith(b"<Response/>")


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("url", [HOOK + "plivo", HOOK + "plivo?b=2&a=1&a=0"])
def test_plivo_sdk_cross_check(method: str, url: str) -> None:
    """plivo-python's validate_v3_signature accepts our signatures, for GET and POST, with
    and without a query (the '?' and '.' cases); and its get_signature_v3 over
    construct_post_url gives a signature the provider accepts."""
    params = ps.plivo_voice_params()
    req = ps.plivo_request(PLIVO_TOKEN, url, params, method=method)
    sdk_params = {} if method == "GET" else {k: [v] for k, v in params}
    nonce = req.headers["x-plivo-signature-v3-nonce"]
    assert validate_v3_signature(
        method, req.url, nonce, PLIVO_TOKEN, req.headers["x-plivo-signature-v3"], sdk_params
    )
    assert plivo().handle(req.raw(), NOW).channel == "voice"
    if method == "POST":
        sdk_sig = get_signature_v3(
            PLIVO_TOKEN.encode(), construct_post_url(url, dict(sdk_params)).decode(), nonce.encode()
        )
        resigned = req.with_headers(
            x_plivo_signature_v3=sdk_sig.decode(), x_plivo_signature_v3_nonce=nonce
        )
        assert plivo().handle(resigned.raw(), NOW).channel == "voice"


def test_plivo_several_signatures_and_replay() -> None:
    """Any of several comma-separated signatures passes; a reused nonce is refused until
    release() forgets it."""
    provider = plivo()
    req = ps.plivo_request(PLIVO_TOKEN, HOOK, ps.plivo_sms_params())
    header = "AAAA," + req.headers["x-plivo-signature-v3"] + ",!!"
    event = provider.handle(req.with_headers(x_plivo_signature_v3=header).raw(), NOW)
    rejects(provider, req.raw(), InvalidSignature, "replayed")
    provider.release(event)
    assert provider.handle(req.raw(), NOW).channel == "sms"


def test_plivo_refusals() -> None:
    """Missing headers, forged, truncated, mistyped and incomplete requests."""
    provider = plivo()
    req = ps.plivo_request(PLIVO_TOKEN, HOOK, ps.plivo_sms_params())
    rejects(
        provider,
        req.with_headers(x_plivo_signature_v3=None).raw(),
        InvalidSignature,
        "missing X-Plivo-Signature-V3 ",
    )
    rejects(
        provider, req.with_headers(x_plivo_signature_v3_nonce=None).raw(), InvalidSignature, "Nonce"
    )
    forged = ps.plivo_request("other", HOOK, ps.plivo_sms_params())
    rejects(provider, forged.raw(), InvalidSignature, "does not match")
    rejects(provider, req.with_body(req.body[:-3]).raw(), InvalidSignature, "does not match")
    rejects(
        provider,
        req.with_headers(content_type="application/json").raw(),
        UnsupportedMediaType,
        "Plivo sends",
    )
    none = ps.plivo_request(PLIVO_TOKEN, HOOK, [("From", "1"), ("To", "2")])
    rejects(provider, none.raw(), BadRequest, "without CallUUID or MessageUUID")
    report = ps.plivo_request(PLIVO_TOKEN, HOOK, [("MessageUUID", "m"), ("Status", "delivered")])
    assert provider.handle(report.raw(), NOW).passthrough


# ============================================================================ Vonage


def vonage(**kw: object) -> VonageProvider:
    return VonageProvider(ps.source("vonage", VONAGE_SECRET, **kw))


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_vonage_voice_answer(method: str) -> None:
    """The answer webhook (GET query or POST JSON) with a signed JWT parses; the drop
    answer is the empty NCCO."""
    provider = vonage()
    params = ps.vonage_answer_params()
    req = ps.vonage_voice_request(VONAGE_SECRET, HOOK + "vonage", params, NOW, method=method)
    event = provider.handle(req.raw(), NOW)
    assert (event.channel, event.sender_raw, event.recipients_raw) == (
        "voice",
        "+447700900000",
        ("+442079460000",),
    )
    assert event.provider_event_id == params["uuid"]
    answer = provider.drop_answer(event)
    assert (answer.status, answer.content_type, answer.body) == (200, "application/json", b"[]")


def test_vonage_jwt_refusals() -> None:
    """Wrong secret, alg none, stale iat, expired, tampered payload, replayed jti."""
    provider = vonage()
    params = ps.vonage_answer_params()
    req = ps.vonage_voice_request(VONAGE_SECRET, HOOK, params, NOW, method="POST")

    def with_token(token: str) -> RawRequest:
        return req.with_headers(authorization="Bearer " + token).raw()

    rejects(
        provider,
        with_token(ps.vonage_jwt("wrong", NOW)),
        InvalidSignature,
        "does not match the signature secret",
    )
    unsigned = base64.urlsafe_b64encode(b'{"alg":"none"}').decode().rstrip("=")
    rejects(provider, with_token(unsigned + ".e30."), InvalidSignature, "HS256")
    rejects(provider, with_token("abc"), InvalidSignature, "not a JWT")
    rejects(
        provider,
        with_token(ps.vonage_jwt(VONAGE_SECRET, NOW - 301)),
        InvalidSignature,
        "stale JWT iat",
    )
    expired = ps.vonage_jwt(VONAGE_SECRET, NOW, exp=int(NOW) - 60)
    rejects(provider, with_token(expired), InvalidSignature, "expired")
    rejects(
        provider,
        req.with_body(req.body.replace(b"447700900000", b"447700900999")).raw(),
        InvalidSignature,
        "payload_hash",
    )
    no_iat = jwt_hs256_encode({"jti": "x"}, VONAGE_SECRET)
    rejects(provider, with_token(no_iat), InvalidSignature, "no iat")
    provider.handle(req.raw(), NOW)
    rejects(provider, req.raw(), InvalidSignature, "replayed")
    rejects(
        provider,
        req.with_headers(authorization=None).raw(),
        InvalidSignature,
        "missing Authorization",
    )


def test_vonage_sdk_jwt_cross_check() -> None:
    """vonage-jwt's verify_signature accepts our JWTs; PyJWT-made tokens pass our check."""
    token = ps.vonage_jwt(VONAGE_SECRET, time.time())
    assert verify_signature(token, VONAGE_SECRET)
    params = ps.vonage_answer_params()
    req = ps.vonage_voice_request(VONAGE_SECRET, HOOK, params, NOW)
    theirs = pyjwt.encode({"iat": int(NOW), "jti": "j1"}, VONAGE_SECRET, algorithm="HS256")
    assert (
        vonage().handle(req.with_headers(authorization="Bearer " + theirs).raw(), NOW).channel
        == "voice"
    )


def test_vonage_inbound_sms_md5hash() -> None:
    """An inbound SMS signed with md5hash parses (msisdn gains its +); drop is a bare 200."""
    provider = vonage()
    params = ps.vonage_sms_params(now=NOW)
    event = provider.handle(ps.vonage_sms_request(VONAGE_SECRET, HOOK, params).raw(), NOW)
    assert (event.channel, event.sender_raw, event.recipients_raw) == (
        "sms",
        "+447700900001",
        ("+447700900000",),
    )
    assert event.provider_event_id == params["messageId"]
    answer = provider.drop_answer(event)
    assert (answer.status, answer.body) == (200, b"")
    get = ps.vonage_sms_request(VONAGE_SECRET, HOOK, ps.vonage_sms_params(now=NOW), method="GET")
    assert provider.handle(get.raw(), NOW).channel == "sms"


@pytest.mark.parametrize("method", ["md5", "sha1", "sha256", "sha512"])
def test_vonage_sms_hmac_methods_match_the_sdk(method: str) -> None:
    """The HMAC signature methods agree with vonage-http-client's Auth.sign_params, and
    the provider verifies them (also in the upper case the .NET SDK sends)."""
    params = ps.vonage_sms_params(now=NOW)
    sdk = Auth(api_key="abcd1234", signature_secret=VONAGE_SECRET, signature_method=method)
    req = ps.vonage_sms_request(VONAGE_SECRET, HOOK, params, signature_method=method)
    signed = dict(pair.split("=", 1) for pair in req.body.decode().split("&"))
    assert sdk.sign_params(dict(params)) == signed["sig"]
    provider = vonage(options={"sms_signature_method": method})
    upper = req.with_body(req.body.replace(signed["sig"].encode(), signed["sig"].upper().encode()))
    assert provider.handle(upper.raw(), NOW).channel == "sms"


def test_vonage_sms_refusals() -> None:
    """Forged sig, stale timestamp, replayed nonce, missing fields."""
    provider = vonage()
    params = ps.vonage_sms_params(now=NOW)
    req = ps.vonage_sms_request(VONAGE_SECRET, HOOK, params)
    rejects(
        provider,
        ps.vonage_sms_request("wrong", HOOK, params).raw(),
        InvalidSignature,
        "sig does not match",
    )
    stale = ps.vonage_sms_params(now=NOW - 400)
    rejects(
        provider,
        ps.vonage_sms_request(VONAGE_SECRET, HOOK, stale).raw(),
        InvalidSignature,
        "stale SMS timestamp",
    )
    provider.handle(req.raw(), NOW)
    rejects(provider, req.raw(), InvalidSignature, "replayed")
    partial = {k: v for k, v in ps.vonage_sms_params(now=NOW).items() if k != "msisdn"}
    rejects(
        provider, ps.vonage_sms_request(VONAGE_SECRET, HOOK, partial).raw(), BadRequest, "msisdn"
    )
    rejects(
        provider,
        req.with_headers(content_type="text/xml").raw(),
        UnsupportedMediaType,
        "Vonage sends",
    )


def test_vonage_messages_api_and_passthrough() -> None:
    """Messages API inbound (JWT, JSON) parses; status and delivery callbacks pass through."""
    provider = vonage()
    body = json.dumps(
        {
            "message_uuid": "m-1",
            "from": "447700900001",
            "to": "447700900000",
            "channel": "whatsapp",
            "text": "hi",
        }
    ).encode()
    token = ps.vonage_jwt(VONAGE_SECRET, NOW, body)
    req = ps.SignedRequest(
        "POST", HOOK, {"content-type": "application/json", "authorization": "Bearer " + token}, body
    )
    event = provider.handle(req.raw(), NOW)
    assert (event.channel, event.variant, event.provider_event_id) == ("sms", "whatsapp", "m-1")
    voice_event = dict(ps.vonage_answer_params(), status="answered")
    req = ps.vonage_voice_request(VONAGE_SECRET, HOOK, voice_event, NOW)
    assert provider.handle(req.raw(), NOW).passthrough


def test_vonage_drop_ncco_option() -> None:
    """options.drop_ncco replaces the empty NCCO; a non-array is refused at start-up."""
    ncco = '[{"action": "talk", "text": "This number does not accept calls."}]'
    provider = vonage(options={"drop_ncco": ncco})
    req = ps.vonage_voice_request(VONAGE_SECRET, HOOK, ps.vonage_answer_params(), NOW)
    assert json.loads(provider.drop_answer(provider.handle(req.raw(), NOW)).body) == json.loads(
        ncco
    )
    toml_style = vonage(options={"drop_ncco": [{"action": "talk", "text": "Closed."}]})
    assert toml_style.drop_answer(ParsedEvent("voice", "", (), None, "voice")).body == (
        b'[{"action":"talk","text":"Closed."}]'
    )
    with pytest.raises(ConfigError, match="drop_ncco"):
        vonage(options={"drop_ncco": "{}"})
    with pytest.raises(ConfigError, match="sms_signature_method"):
        vonage(options={"sms_signature_method": "crc32"})


# ============================================================================ Mailgun


def mailgun(**kw: object) -> MailgunProvider:
    return MailgunProvider(ps.source("mailgun", MAILGUN_KEY, **kw))


@pytest.mark.parametrize("multipart", [False, True], ids=["urlencoded", "multipart"])
def test_mailgun_route(multipart: bool) -> None:
    """A signed route forward parses: header From, envelope sender and recipient, the
    token as event id, SPF pass aligned with the From domain; drop answer 406."""
    provider = mailgun()
    req = ps.mailgun_request(MAILGUN_KEY, HOOK, ps.mailgun_fields(), int(NOW), multipart=multipart)
    event = provider.handle(req.raw(), NOW)
    assert event.channel == "email"
    assert event.sender_raw == "Bob Example <bob@example.com>"
    assert event.envelope_sender_raw == "bounce+abc@mail.example.com"
    assert event.recipients_raw == ("sales.team@acme.example",)
    assert event.provider_event_id is not None and len(event.provider_event_id) == 50
    assert event.authenticated
    assert event.auth_results["spf"] == "pass"
    assert event.extra["message_id"] == "<20240115.abc@example.com>"
    answer = provider.drop_answer(event)
    assert (answer.status, answer.body) == (406, b"")


@pytest.mark.parametrize(
    ("fields", "authenticated"),
    [
        ({"spf": "Fail", "dkim": "Pass", "dkim_domain": "example.com"}, True),
        ({"spf": "Fail", "dkim": "Pass", "dkim_domain": "other.example"}, False),
        ({"spf": "Pass", "dkim": "Fail", "sender": "bounce@evil.example"}, False),
        ({"from_header": "Bob <bob@example.com>, Eve <eve@evil.example>"}, False),
        ({"from_header": "not an address"}, False),
    ],
    ids=["dkim-aligned", "dkim-unaligned", "spf-unaligned", "two-froms", "garbage-from"],
)
def test_mailgun_authentication(fields: dict[str, str], authenticated: bool) -> None:
    """Only an SPF or DKIM pass aligned with a single well-formed From counts."""
    req = ps.mailgun_request(MAILGUN_KEY, HOOK, ps.mailgun_fields(**fields), int(NOW))
    assert mailgun().handle(req.raw(), NOW).authenticated is authenticated


def test_mailgun_trusted_authentication_results() -> None:
    """Authentication-Results count only with a configured authserv-id."""
    fields = ps.mailgun_fields(spf="Fail", dkim="Fail")
    headers = json.loads(dict(fields)["message-headers"])
    headers.insert(
        0, ["Authentication-Results", "mx.mailgun.org; dmarc=pass (p=none) header.from=example.com"]
    )
    fields = [(k, json.dumps(headers) if k == "message-headers" else v) for k, v in fields]
    req = ps.mailgun_request(MAILGUN_KEY, HOOK, fields, int(NOW))
    assert not mailgun().handle(req.raw(), NOW).authenticated
    req = ps.mailgun_request(MAILGUN_KEY, HOOK, fields, int(NOW))
    event = mailgun(options={"authserv_id": ["mx.mailgun.org"]}).handle(req.raw(), NOW)
    assert event.authenticated and event.auth_results["dmarc"] == "pass"


def test_mailgun_refusals() -> None:
    """Forged, missing, stale, replayed, truncated, mistyped and incomplete requests."""
    provider = mailgun()
    req = ps.mailgun_request(MAILGUN_KEY, HOOK, ps.mailgun_fields(), int(NOW))
    forged = ps.mailgun_request("wrong-key", HOOK, ps.mailgun_fields(), int(NOW))
    rejects(provider, forged.raw(), InvalidSignature, "signature does not match")
    unsigned = ps.SignedRequest(
        "POST", HOOK, {"content-type": ps.FORM}, urlencode(ps.mailgun_fields()).encode()
    )
    rejects(provider, unsigned.raw(), InvalidSignature, "missing signature field")
    stale = ps.mailgun_request(MAILGUN_KEY, HOOK, ps.mailgun_fields(), int(NOW) - 86401)
    rejects(provider, stale.raw(), InvalidSignature, "stale timestamp")
    short = mailgun(options={"tolerance_s": 120})
    older = ps.mailgun_request(MAILGUN_KEY, HOOK, ps.mailgun_fields(), int(NOW) - 121)
    rejects(short, older.raw(), InvalidSignature, "stale timestamp")
    event = provider.handle(req.raw(), NOW)
    rejects(provider, req.raw(), InvalidSignature, "replayed")
    provider.release(event)
    assert provider.handle(req.raw(), NOW).channel == "email"
    multipart = ps.mailgun_request(MAILGUN_KEY, HOOK, ps.mailgun_fields(), int(NOW), multipart=True)
    rejects(provider, multipart.with_body(multipart.body[:-40]).raw(), BadRequest, "truncated")
    rejects(
        provider,
        req.with_headers(content_type="application/json").raw(),
        UnsupportedMediaType,
        "Mailgun sends",
    )
    no_recipient = [(k, v) for k, v in ps.mailgun_fields() if k != "recipient"]
    rejects(
        provider,
        ps.mailgun_request(MAILGUN_KEY, HOOK, no_recipient, int(NOW)).raw(),
        BadRequest,
        "recipient",
    )
    bad_headers = [(k, "{" if k == "message-headers" else v) for k, v in ps.mailgun_fields()]
    rejects(
        provider,
        ps.mailgun_request(MAILGUN_KEY, HOOK, bad_headers, int(NOW)).raw(),
        BadRequest,
        "message-headers",
    )


def test_mailgun_drop_status_override() -> None:
    """drop_status replaces the 406 default."""
    provider = mailgun(drop_status=200)
    event = provider.handle(
        ps.mailgun_request(MAILGUN_KEY, HOOK, ps.mailgun_fields(), int(NOW)).raw(), NOW
    )
    assert provider.drop_answer(event).status == 200


# ============================================================================ SendGrid


def sendgrid(**kw: object) -> SendGridProvider:
    return SendGridProvider(ps.source("sendgrid", BASIC, **kw))


def test_sendgrid_parse() -> None:
    """A Basic-auth'd Parse post gives From, envelope recipients and sender, SPF/DKIM."""
    provider = sendgrid()
    fields = ps.sendgrid_fields(to=("a@acme.example", "b@acme.example"))
    event = provider.handle(ps.sendgrid_request(BASIC, HOOK, fields).raw(), NOW)
    assert event.channel == "email" and event.sender_raw == "Bob Example <bob@example.com>"
    assert event.recipients_raw == ("a@acme.example", "b@acme.example")
    assert event.envelope_sender_raw == "bounce@mail.example.com"
    assert event.authenticated and event.auth_results["dkim_domains"] == "example.com"
    assert event.provider_event_id is None and event.extra["message_id"] == "<sg.1@example.com>"
    assert provider.drop_answer(event).status == 200
    unaligned = ps.sendgrid_fields(
        spf="pass", envelope_from="x@evil.example", dkim="{@evil.example : pass}"
    )
    assert not provider.handle(ps.sendgrid_request(BASIC, HOOK, unaligned).raw(), NOW).authenticated


def test_sendgrid_raw_mime_mode() -> None:
    """With "send raw", From is read from the MIME headers of the email field."""
    fields = [(k, v) for k, v in ps.sendgrid_fields() if k not in ("from", "headers")]
    fields.append(("email", "From: Carol <carol@example.org>\r\nSubject: x\r\n\r\nbody"))
    event = sendgrid().handle(ps.sendgrid_request(BASIC, HOOK, fields).raw(), NOW)
    assert event.sender_raw == "Carol <carol@example.org>"


def test_sendgrid_refusals() -> None:
    """Wrong or missing credentials, a missing envelope, bad content."""
    provider = sendgrid()
    req = ps.sendgrid_request(BASIC, HOOK, ps.sendgrid_fields())
    rejects(
        provider,
        req.with_headers(authorization=ps.basic_auth("parse:wrong")).raw(),
        InvalidSignature,
        "do not match",
    )
    rejects(
        provider,
        req.with_headers(authorization=None).raw(),
        InvalidSignature,
        "missing Authorization",
    )
    rejects(
        provider, req.with_headers(authorization="Bearer x").raw(), InvalidSignature, "not Basic"
    )
    no_envelope = [(k, v) for k, v in ps.sendgrid_fields() if k != "envelope"]
    rejects(provider, ps.sendgrid_request(BASIC, HOOK, no_envelope).raw(), BadRequest, "envelope")
    bad_envelope = [(k, "[1]" if k == "envelope" else v) for k, v in ps.sendgrid_fields()]
    rejects(provider, ps.sendgrid_request(BASIC, HOOK, bad_envelope).raw(), BadRequest, "envelope")
    rejects(provider, req.with_body(req.body[:100]).raw(), BadRequest, "truncated")
    rejects(
        provider,
        req.with_headers(content_type="application/json").raw(),
        UnsupportedMediaType,
        "SendGrid",
    )
    rejects(
        provider, req.with_headers(content_type="multipart/form-data").raw(), BadRequest, "boundary"
    )


# ============================================================================ Postmark


def postmark(**kw: object) -> PostmarkProvider:
    return PostmarkProvider(ps.source("postmark", BASIC, **kw))


def test_postmark_inbound() -> None:
    """FromFull.Email, OriginalRecipient, MessageID and Postmark's Received-SPF."""
    provider = postmark()
    payload = ps.postmark_payload()
    event = provider.handle(ps.postmark_request(BASIC, HOOK, payload).raw(), NOW)
    assert (event.channel, event.sender_raw) == ("email", "bob@example.com")
    assert event.recipients_raw == ("sales.team@acme.example",)
    assert event.provider_event_id == payload["MessageID"]
    assert event.envelope_sender_raw == "bounce@mail.example.com"
    assert event.authenticated and event.auth_results["spf"] == "pass"
    assert provider.drop_answer(event).status == 200
    assert postmark(drop_status=403).drop_answer(event).status == 403


def test_postmark_fallbacks_and_planted_headers() -> None:
    """Without OriginalRecipient the To/Cc addresses are used; a Received-SPF planted
    below Postmark's own does not count."""
    payload = ps.postmark_payload(original_recipient=None)
    event = postmark().handle(ps.postmark_request(BASIC, HOOK, payload).raw(), NOW)
    assert event.recipients_raw == ("sales.team@acme.example",)
    payload = ps.postmark_payload(received_spf="Fail (not authorized) identity=mailfrom")
    headers = payload["Headers"]
    assert isinstance(headers, list)
    headers.append(
        {"Name": "Received-SPF", "Value": 'Pass identity=mailfrom; envelope-from="a@example.com"'}
    )
    assert not postmark().handle(ps.postmark_request(BASIC, HOOK, payload).raw(), NOW).authenticated


def test_postmark_refusals() -> None:
    """Credentials, content type, undecodable and incomplete bodies."""
    provider = postmark()
    payload = ps.postmark_payload()
    req = ps.postmark_request(BASIC, HOOK, payload)
    rejects(
        provider,
        req.with_headers(authorization=ps.basic_auth("x:y")).raw(),
        InvalidSignature,
        "do not match",
    )
    rejects(
        provider,
        req.with_headers(content_type=ps.FORM).raw(),
        UnsupportedMediaType,
        "Postmark sends",
    )
    rejects(provider, req.with_body(req.body[:-5]).raw(), BadRequest, "not valid JSON")
    rejects(provider, req.with_body(b"[]").raw(), BadRequest, "JSON object")
    empty = dict(payload, OriginalRecipient="", ToFull=[], CcFull=[])
    rejects(
        provider, ps.postmark_request(BASIC, HOOK, empty).raw(), BadRequest, "OriginalRecipient"
    )


# ============================================================================ SES (SNS)


@pytest.fixture(scope="module")
def sns_keys() -> ps.SnsKeys:
    return ps.SnsKeys()


def ses(keys: ps.SnsKeys, topics: list[str] | None = None, **kw: object) -> SesProvider:
    options: dict[str, object] = {"topic_arns": topics} if topics is not None else {}
    return SesProvider(ps.source("ses", None, options=options, **kw), cert_loader=keys.loader)


@pytest.mark.parametrize("version", ["1", "2"])
def test_ses_received_notification(sns_keys: ps.SnsKeys, version: str) -> None:
    """A SigV1/SigV2-signed SNS notification is decoded twice: recipients, From, envelope
    sender, SES's verdicts (DMARC pass → authenticated), mail.messageId."""
    provider = ses(sns_keys, [ps.TOPIC_ARN])
    inner = ps.ses_received_message(
        recipients=("a@acme.example", "b@acme.example"), message_id="mid-1"
    )
    req = ps.sns_notification(sns_keys, HOOK, inner, NOW, version=version)
    event = provider.handle(req.raw(), NOW)
    assert event.channel == "email" and event.sender_raw == "Jane Doe <janedoe@example.com>"
    assert event.recipients_raw == ("a@acme.example", "b@acme.example")
    assert event.envelope_sender_raw == "0000014fbe1c09cf-7cb9f704@amazonses.com"
    assert event.provider_event_id == "mid-1"
    assert event.authenticated
    assert event.auth_results == {
        "spf": "pass",
        "spf_domain": "amazonses.com",
        "dkim": "pass",
        "dmarc": "pass",
        "spam": "pass",
        "virus": "pass",
    }
    assert provider.drop_answer(event).status == 200
    unauth = ps.ses_received_message(dmarc="FAIL")
    assert not provider.handle(
        ps.sns_notification(sns_keys, HOOK, unauth, NOW).raw(), NOW
    ).authenticated


def test_ses_subscription_confirmation(sns_keys: ps.SnsKeys) -> None:
    """Only an allow-listed topic becomes a handshake; others are refused clearly."""
    req = ps.sns_subscription_confirmation(sns_keys, HOOK, NOW)
    event = ses(sns_keys, [ps.TOPIC_ARN]).handle(req.raw(), NOW)
    assert event.handshake is not None and event.handshake.topic_arn == ps.TOPIC_ARN
    assert event.handshake.subscribe_url.startswith("https://sns.us-east-1.amazonaws.com/")
    rejects(
        ses(sns_keys, ["arn:aws:sns:us-east-1:1:other"]),
        req.raw(),
        Forbidden,
        "not in sources.ses.options.topic_arns",
    )
    rejects(ses(sns_keys), req.raw(), Forbidden, "topic_arns")


def test_ses_topic_allowlist_for_notifications(sns_keys: ps.SnsKeys) -> None:
    """With a topic list, other topics' notifications are refused; without one, accepted."""
    req = ps.sns_notification(
        sns_keys, HOOK, ps.ses_received_message(), NOW, topic_arn="arn:aws:sns:eu-west-1:9:x"
    )
    rejects(ses(sns_keys, [ps.TOPIC_ARN]), req.raw(), Forbidden, "not in")
    assert ses(sns_keys).handle(req.raw(), NOW).channel == "email"


@pytest.mark.parametrize(
    "cert_url",
    [
        "http://sns.us-east-1.amazonaws.com/cert.pem",
        "https://sns.us-east-1.amazonaws.com.evil.example/cert.pem",
        "https://evil.example/sns.us-east-1.amazonaws.com/cert.pem",
        "https://sns.us-east-1.amazonaws.com/cert.txt",
        "https://user@sns.us-east-1.amazonaws.com/cert.pem",
        "https://sns.us-east-1.amazonaws.com:8443/cert.pem",
    ],
)
def test_ses_cert_url_checked_before_fetching(cert_url: str) -> None:
    """A SigningCertURL that is not https .pem on an SNS host is refused unfetched."""
    keys = ps.SnsKeys(cert_url)
    req = ps.sns_notification(keys, HOOK, ps.ses_received_message(), NOW)
    rejects(ses(keys), req.raw(), InvalidSignature, "SigningCertURL")
    assert keys.fetched == []


def test_ses_refusals(sns_keys: ps.SnsKeys) -> None:
    """Stale, tampered, replayed, mistyped; certificate fetch failures."""
    provider = ses(sns_keys)
    inner = ps.ses_received_message()
    assert (
        provider.handle(ps.sns_notification(sns_keys, HOOK, inner, NOW - 3600).raw(), NOW).channel
        == "email"
    )
    stale = ps.sns_notification(sns_keys, HOOK, inner, NOW - 3901)
    rejects(provider, stale.raw(), InvalidSignature, "stale SNS Timestamp")
    req = ps.sns_notification(sns_keys, HOOK, inner, NOW)
    message = json.loads(req.body)
    message["Message"] = message["Message"].replace("sales.team", "ceo")
    rejects(
        provider,
        req.with_body(json.dumps(message).encode()).raw(),
        InvalidSignature,
        "does not match",
    )
    event = provider.handle(req.raw(), NOW)
    rejects(provider, req.raw(), InvalidSignature, "replayed SNS message")
    provider.release(event)
    assert provider.handle(req.raw(), NOW).channel == "email"
    rejects(
        provider,
        req.with_headers(content_type="application/xml").raw(),
        UnsupportedMediaType,
        "SNS sends",
    )
    rejects(provider, req.with_body(req.body[:-20]).raw(), BadRequest, "not valid JSON")
    rejects(
        provider,
        req.with_headers(x_amz_sns_message_type="SubscriptionConfirmation").raw(),
        BadRequest,
        "does not match",
    )
    del message["Signature"]
    rejects(
        provider,
        req.with_body(json.dumps(message).encode()).raw(),
        InvalidSignature,
        "without Signature",
    )
    no_recipients = ps.ses_received_message(recipients=())
    req = ps.sns_notification(sns_keys, HOOK, no_recipients, NOW)
    rejects(provider, req.raw(), BadRequest, "receipt.recipients")


def test_ses_certificate_loader_failures(sns_keys: ps.SnsKeys) -> None:
    """A failing fetch is a 502 (SNS retries); a non-certificate is a signature error."""

    def broken(url: str) -> bytes:
        raise OSError("connection refused")

    provider = SesProvider(ps.source("ses", None), cert_loader=broken)
    req = ps.sns_notification(sns_keys, HOOK, ps.ses_received_message(), NOW)
    rejects(provider, req.raw(), UpstreamError, "certificate")
    junk = SesProvider(ps.source("ses", None), cert_loader=lambda url: b"junk")
    rejects(junk, req.raw(), InvalidSignature, "did not serve")
    with pytest.raises(ConfigError, match="certificate loader"):
        SesProvider(ps.source("ses", None))


def test_ses_other_messages_pass_through(sns_keys: ps.SnsKeys) -> None:
    """Non-"Received" notifications and plain-text messages are forwarded unfiltered."""
    provider = ses(sns_keys)
    bounce = {"notificationType": "Bounce", "mail": {}}
    assert provider.handle(ps.sns_notification(sns_keys, HOOK, bounce, NOW).raw(), NOW).passthrough
    setup = ps.sns_notification(
        sns_keys, HOOK, "Successfully validated SNS topic", NOW, subject=None
    )
    assert provider.handle(setup.raw(), NOW).passthrough


# ============================================================================ generic


def generic(**options: object) -> GenericProvider:
    base: dict[str, object] = {
        "channel": "email",
        "sender_field": "data.from",
        "recipient_field": "data.to",
    }
    base.update(options)
    secret = WHSEC if options.get("signature") == "standard-webhooks" else "generic-secret"
    return GenericProvider(ps.source("generic", secret, options=base))


def test_generic_json_hmac() -> None:
    """Dotted paths pick sender, recipients (a list) and event id from a JSON body."""
    provider = generic(event_id_field="id", authenticated_field="data.auth")
    body = json.dumps(
        {
            "id": 7,
            "data": {
                "from": "a@example.com",
                "to": ["x@acme.example", "y@acme.example"],
                "auth": True,
            },
        }
    ).encode()
    event = provider.handle(ps.generic_hmac_request("generic-secret", HOOK, body).raw(), NOW)
    assert (event.sender_raw, event.recipients_raw, event.provider_event_id) == (
        "a@example.com",
        ("x@acme.example", "y@acme.example"),
        "7",
    )
    assert event.authenticated
    prefixed = ps.generic_hmac_request("generic-secret", HOOK, body)
    signature = prefixed.headers["x-signature"]
    assert (
        provider.handle(prefixed.with_headers(x_signature="sha256=" + signature).raw(), NOW).channel
        == "email"
    )
    rejects(
        provider,
        prefixed.with_headers(x_signature=None).raw(),
        InvalidSignature,
        "missing x-signature",
    )
    rejects(
        provider, prefixed.with_headers(x_signature="00").raw(), InvalidSignature, "HMAC-SHA256"
    )
    rejects(provider, prefixed.with_body(body[:-3]).raw(), InvalidSignature, "HMAC-SHA256")
    missing = json.dumps({"data": {"to": "x@acme.example"}}).encode()
    rejects(
        provider,
        ps.generic_hmac_request("generic-secret", HOOK, missing).raw(),
        BadRequest,
        "data.from",
    )


def test_generic_form_and_standard_webhooks() -> None:
    """Forms use field names; Standard Webhooks verifies and refuses a replayed id."""
    form_provider = GenericProvider(
        ps.source(
            "generic",
            "generic-secret",
            options={
                "channel": "sms",
                "sender_field": "From",
                "recipient_field": "To",
                "format": "form",
            },
        )
    )
    body = urlencode({"From": "+15550001", "To": "+15550002"}).encode()
    req = ps.generic_hmac_request("generic-secret", HOOK, body, content_type=ps.FORM)
    event = form_provider.handle(req.raw(), NOW)
    assert (event.channel, event.sender_raw, event.authenticated) == ("sms", "+15550001", True)
    rejects(
        form_provider,
        ps.generic_hmac_request("generic-secret", HOOK, b"{}").raw(),
        UnsupportedMediaType,
        "expects",
    )
    provider = generic(signature="standard-webhooks")
    body = json.dumps({"data": {"from": "a@example.com", "to": "x@acme.example"}}).encode()
    req = ps.generic_standard_webhooks_request(WHSEC, HOOK, body, int(NOW))
    event = provider.handle(req.raw(), NOW)
    assert event.recipients_raw == ("x@acme.example",) and not event.authenticated
    rejects(provider, req.raw(), InvalidSignature, "replayed")


def test_generic_config_errors() -> None:
    """Missing field paths, an unknown channel or option stop start-up, naming the key."""
    with pytest.raises(ConfigError, match=r"options\.channel"):
        GenericProvider(
            ps.source("generic", "s", options={"sender_field": "a", "recipient_field": "b"})
        )
    with pytest.raises(ConfigError, match=r"options\.sender_field"):
        GenericProvider(
            ps.source("generic", "s", options={"channel": "sms", "recipient_field": "b"})
        )
    with pytest.raises(ConfigError, match=r"options\.colour"):
        generic(colour="blue")
    with pytest.raises(ConfigError, match="secret"):
        GenericProvider(
            ps.source(
                "generic",
                "whsec_!!",
                options={
                    "channel": "sms",
                    "sender_field": "a",
                    "recipient_field": "b",
                    "signature": "standard-webhooks",
                },
            )
        )


# ============================================================================ registry


def test_build_provider_for_every_name(sns_keys: ps.SnsKeys, telnyx_keys: ps.Ed25519Keys) -> None:
    """Every provider name builds; unknown names and missing secrets are config errors."""
    secrets = {"telnyx": telnyx_keys.public_b64, "ses": None}
    options: dict[str, dict[str, object]] = {
        "generic": {"channel": "sms", "sender_field": "f", "recipient_field": "t"}
    }
    for name in PROVIDERS:
        src = ps.source(name, secrets.get(name, "user:pass"), options=options.get(name, {}))
        provider = build_provider(src, cert_loader=sns_keys.loader)
        assert provider.name == name and provider.source is src
        assert allowed_options(name) == PROVIDERS[name].options_allowed
    with pytest.raises(ConfigError, match="unknown provider"):
        build_provider(ps.source("nexmo", "x"))
    with pytest.raises(ConfigError, match=r"sources\.twilio\.secret"):
        build_provider(ps.source("twilio", None))
    assert build_provider(ps.source("twilio", None, verify=False)).name == "twilio"
    assert allowed_options("nexmo") == frozenset()


# ============================================================================ fuzzing

HEADER_NAMES = [
    "x-twilio-signature",
    "x-twilio-webhooks-signature-settings",
    "telnyx-signature-ed25519",
    "telnyx-timestamp",
    "x-plivo-signature-v3",
    "x-plivo-signature-v3-nonce",
    "authorization",
    "x-amz-sns-message-type",
    "x-amz-sns-topic-arn",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-signature",
]
CONTENT_TYPES = [
    "",
    "application/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=XyZ",
    "multipart/form-data",
    "multipart/form-data; boundary=",
    "text/plain; charset=UTF-8",
    "text/plain; charset=bogus",
    "application/xml",
]
JSON_KEYS = [
    "data", "payload", "event_type", "id", "from", "to", "phone_number", "direction",
    "call_control_id", "Type", "Message", "MessageId", "TopicArn", "Timestamp", "Signature",
    "SigningCertURL", "SignatureVersion", "SubscribeURL", "notificationType", "mail", "receipt",
    "recipients", "commonHeaders", "source", "FromFull", "Email", "OriginalRecipient", "ToFull",
    "Headers", "Name", "Value", "MessageID", "message_uuid", "uuid", "msisdn", "status",
    "channel", "CallSid", "MessageSid", "From", "To",
]  # fmt: skip
FORM_KEYS = [
    "CallSid", "MessageSid", "From", "To", "CallStatus", "Direction", "CallUUID", "MessageUUID",
    "Status", "msisdn", "to", "messageId", "sig", "timestamp", "nonce", "uuid", "from",
    "recipient", "sender", "token", "signature", "message-headers", "envelope", "SPF", "dkim",
    "headers", "email", "Type", "HangupCause",
]  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(JSON_KEYS) | st.text(max_size=5), children, max_size=6)
    ),
    max_leaves=25,
)
form_bodies = st.lists(
    st.tuples(
        st.sampled_from(FORM_KEYS) | st.text(max_size=5),
        st.text(max_size=30) | json_values.map(json.dumps),
    ),
    max_size=8,
).map(lambda pairs: urlencode(pairs).encode())
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    form_bodies,
    st.builds(
        lambda name, value: (
            f'--XyZ\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n--XyZ--\r\n'
        ).encode("utf-8", "surrogatepass"),
        st.sampled_from(FORM_KEYS),
        st.text(max_size=40),
    ),
)
header_maps = st.dictionaries(
    st.sampled_from(HEADER_NAMES),
    st.text(max_size=60)
    | st.sampled_from(
        ["AAAA", "Bearer a.b.c", "Basic !!", "Basic dXNlcjpwYXNz", "1700000000", "msg_1"]
    ),
    max_size=5,
)


def _fuzz_providers() -> dict[str, Callable[[bool], Provider]]:
    keys = ps.Ed25519Keys()
    sns = ps.SnsKeys()
    generic_options = {
        "channel": "email",
        "sender_field": "data.from",
        "recipient_field": "data.to.0",
    }
    secrets = {"telnyx": keys.public_b64, "ses": None, "generic": "s"}

    def factory(name: str) -> Callable[[bool], Provider]:
        def make(verify: bool) -> Provider:
            options = generic_options if name == "generic" else {}
            src = ps.source(name, secrets.get(name, "user:pass"), verify=verify, options=options)
            return build_provider(src, cert_loader=sns.loader)

        return make

    return {name: factory(name) for name in PROVIDERS}


FUZZ = _fuzz_providers()
TELNYX_FUZZ_KEYS = ps.Ed25519Keys()
SNS_FUZZ_KEYS = ps.SnsKeys()


@pytest.mark.parametrize("verify", [True, False], ids=["verify", "no-verify"])
@pytest.mark.parametrize("name", sorted(PROVIDERS))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(["GET", "POST", "PUT"]),
    content_type=st.sampled_from(CONTENT_TYPES) | st.text(max_size=30),
    body=bodies,
    headers=header_maps,
    query=st.text(max_size=40),
    base_url=st.sampled_from(
        ["https://hooks.acme.example/hooks/x", "http://h:99999/x", "https://[::1/x", "x"]
    )
    | st.text(max_size=30),
)
def test_random_requests_raise_only_gateway_errors(
    name: str,
    verify: bool,
    method: str,
    content_type: str,
    body: bytes,
    headers: dict[str, str],
    query: str,
    base_url: str,
) -> None:
    """Whatever arrives, handle() returns an event or raises a GatewayError."""
    provider = FUZZ[name](verify)
    req = RawRequest(
        method=method,
        path="/hooks/x",
        query=query,
        headers=headers,
        body=body,
        public_url=base_url + ("?" + query if query else ""),
        content_type=content_type,
    )
    try:
        event = provider.handle(req, NOW)
    except GatewayError:
        return
    assert isinstance(event, ParsedEvent)
    provider.drop_answer(event)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_mutated_signed_requests_raise_only_gateway_errors(data: st.DataObject) -> None:
    """Valid signed requests with bytes flipped, cut or headers changed still only ever
    give an event or a GatewayError (and parse on through when verify is off)."""
    keys = TELNYX_FUZZ_KEYS
    samples: list[tuple[Callable[[], Provider], ps.SignedRequest]] = [
        (lambda: TwilioProvider(ps.source("twilio", TWILIO_TOKEN, verify=False)),
         ps.twilio_request(TWILIO_TOKEN, HOOK, ps.twilio_voice_params())),
        (lambda: TelnyxProvider(ps.source("telnyx", keys.public_b64, verify=False)),
         ps.telnyx_request(keys, HOOK, ps.telnyx_call_initiated(), int(NOW))),
        (lambda: PlivoProvider(ps.source("plivo", PLIVO_TOKEN, verify=False)),
         ps.plivo_request(PLIVO_TOKEN, HOOK, ps.plivo_sms_params())),
        (lambda: VonageProvider(ps.source("vonage", VONAGE_SECRET, verify=False)),
         ps.vonage_voice_request(VONAGE_SECRET, HOOK, ps.vonage_answer_params(), NOW, "POST")),
        (lambda: MailgunProvider(ps.source("mailgun", MAILGUN_KEY, verify=False)),
         ps.mailgun_request(MAILGUN_KEY, HOOK, ps.mailgun_fields(), int(NOW), multipart=True)),
        (lambda: SendGridProvider(ps.source("sendgrid", BASIC, verify=False)),
         ps.sendgrid_request(BASIC, HOOK, ps.sendgrid_fields())),
        (lambda: PostmarkProvider(ps.source("postmark", BASIC, verify=False)),
         ps.postmark_request(BASIC, HOOK, ps.postmark_payload())),
        (lambda: SesProvider(ps.source("ses", None, verify=False)),
         ps.sns_notification(SNS_FUZZ_KEYS, HOOK, ps.ses_received_message(), NOW)),
    ]  # fmt: skip
    make, signed = data.draw(st.sampled_from(samples))
    body = bytearray(signed.body)
    for _ in range(data.draw(st.integers(0, 4))):
        if body:
            i = data.draw(st.integers(0, len(body) - 1))
            body[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    mutated = signed.with_body(bytes(body[:cut]) if data.draw(st.booleans()) else bytes(body))
    try:
        event = make().handle(mutated.raw(), NOW)
    except GatewayError:
        return
    assert isinstance(event, ParsedEvent)
