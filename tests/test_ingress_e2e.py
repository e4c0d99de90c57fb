"""Webhook ingress end to end, through real servers: uvicorn runs the gateway, a real
downstream app records what it receives, and requests are signed the way each provider
signs them (tests/providers_support.py)."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette

from gateway.app import create_app
from gateway.pipeline import AnswerCache, Pipeline
from gateway.settings import ForwardSettings, MailboxDecl, NumberDecl, RuleDecl, ServerSettings
from tests import providers_support as ps
from tests.apptools import ADMIN, make_settings
from tests.servers import RecordingApp, Reply, UvicornThread

pytestmark = pytest.mark.slow

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TWILIO_TOKEN = "twilio-auth-token"
PLIVO_TOKEN = "plivo-auth-token"
VONAGE_SECRET = "vonage-signature-secret-0123456789"
MAILGUN_KEY = "key-mailgun-signing"
SENDGRID_AUTH = "sg-user:sg-pass"
POSTMARK_AUTH = "pm-user:pm-pass"
GENERIC_SECRET = "generic-hmac-secret"
TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response><Say>Hello from the app</Say></Response>'
BLOCKED_NUMBER = "+14155550666"


@dataclass
class World:
    gateway: UvicornThread
    downstream: UvicornThread
    app: RecordingApp
    telnyx: ps.Ed25519Keys
    sns: ps.SnsKeys
    pipeline: Pipeline

    def hook(self, source: str) -> str:
        return f"{self.gateway.url}/hooks/{source}"

    def send(self, signed: ps.SignedRequest) -> httpx.Response:
        return httpx.request(
            signed.method,
            signed.url,
            headers=signed.headers,
            content=signed.body or None,
            timeout=20,
        )

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, f"{self.gateway.url}{path}", headers=ADMIN, timeout=20, **kw)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp: Path = tmp_path_factory.mktemp("e2e")
    recording = RecordingApp(routes={"/twilio": Reply(200, "text/xml", TWIML)})
    downstream = UvicornThread(recording)
    port_probe = UvicornThread(Starlette())  # reserves a free port: public_url needs it
    telnyx = ps.Ed25519Keys()
    sns = ps.SnsKeys()
    down = downstream.url
    sources = {
        "twilio": ps.source("twilio", TWILIO_TOKEN, forward_url=f"{down}/twilio"),
        "telnyx": ps.source(
            "telnyx",
            telnyx.public_b64,
            forward_url=f"{down}/telnyx",
            api_key="telnyx-api-key",
            api_base_url=f"{down}/telnyx-api",
        ),
        "plivo": ps.source("plivo", PLIVO_TOKEN, forward_url=f"{down}/plivo"),
        "vonage": ps.source("vonage", VONAGE_SECRET, forward_url=f"{down}/vonage"),
        "mailgun": ps.source("mailgun", MAILGUN_KEY, forward_url=f"{down}/mailgun"),
        "sendgrid": ps.source("sendgrid", SENDGRID_AUTH, forward_url=f"{down}/sendgrid"),
        "postmark": ps.source("postmark", POSTMARK_AUTH, forward_url=f"{down}/postmark"),
        "ses": ps.source(
            "ses", None, forward_url=f"{down}/ses", options={"topic_arns": [ps.TOPIC_ARN]}
        ),
        "generic": ps.source(
            "generic",
            GENERIC_SECRET,
            forward_url=f"{down}/generic",
            options={
                "channel": "sms",
                "sender_field": "from",
                "recipient_field": "to",
                "event_id_field": "id",
            },
        ),
    }
    settings = make_settings(
        tmp,
        forward=ForwardSettings(signing_secret=WHSEC, timeout_s=2.0),
        sources=sources,
        mailboxes=(
            MailboxDecl("sales.team@acme.example"),
            MailboxDecl("support@acme.example", "whitelist", forward_url=f"{down}/support"),
        ),
        numbers=(NumberDecl("+14155550100"),),
        org_mail_rules=(RuleDecl("block", "domain", "spam.example"),),
        org_phone_rules=(RuleDecl("block", "exact_number", BLOCKED_NUMBER),),
    )
    settings = replace(settings, server=ServerSettings(public_url=port_probe.url))
    app = create_app(settings)
    gateway = UvicornThread(app, port=port_probe.port)
    pipeline = app.state.gw.extras["pipeline"]
    pipeline.certs.put(sns.cert_url, sns.cert_pem)
    downstream.start()
    gateway.start()
    try:
        yield World(gateway, downstream, recording, telnyx, sns, pipeline)
    finally:
        gateway.stop()
        downstream.stop()


@pytest.fixture(autouse=True)
def fresh(world: World) -> None:
    if not world.downstream.running:
        world.downstream.start()
    world.app.clear()


def settle() -> None:
    time.sleep(0.2)  # let background work end (the admin API's reads flush the records)


def events(world: World, **params: str) -> list[dict[str, Any]]:
    settle()
    r = world.admin("GET", "/v1/events", params=params)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


# --- one row per provider: an allowed event, a blocked one, and the drop answer -----------

Maker = Callable[[World, str], ps.SignedRequest]


def _unique_sid(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Each call or message gets its own Sid, as Twilio's do (a repeated Sid is a retry)."""
    return [
        (k, v[:2] + secrets.token_hex(16) if k.endswith("Sid") and k != "AccountSid" else v)
        for k, v in params
    ]


def _twilio_sms(w: World, sender: str) -> ps.SignedRequest:
    return ps.twilio_request(
        TWILIO_TOKEN, w.hook("twilio"), _unique_sid(ps.twilio_sms_params(sender, "+14155550100"))
    )


def _twilio_voice(w: World, sender: str) -> ps.SignedRequest:
    return ps.twilio_request(
        TWILIO_TOKEN, w.hook("twilio"), _unique_sid(ps.twilio_voice_params(sender, "+14155550100"))
    )


def _telnyx_call(w: World, sender: str) -> ps.SignedRequest:
    return ps.telnyx_request(
        w.telnyx,
        w.hook("telnyx"),
        ps.telnyx_call_initiated(sender, "+14155550100"),
        int(time.time()),
    )


def _telnyx_sms(w: World, sender: str) -> ps.SignedRequest:
    return ps.telnyx_request(
        w.telnyx,
        w.hook("telnyx"),
        ps.telnyx_message_received(sender, "+14155550100"),
        int(time.time()),
    )


def _plivo_voice(w: World, sender: str) -> ps.SignedRequest:
    return ps.plivo_request(
        PLIVO_TOKEN, w.hook("plivo"), ps.plivo_voice_params(sender.lstrip("+"), "14155550100")
    )


def _plivo_sms(w: World, sender: str) -> ps.SignedRequest:
    return ps.plivo_request(
        PLIVO_TOKEN, w.hook("plivo"), ps.plivo_sms_params(sender.lstrip("+"), "14155550100")
    )


def _vonage_voice(w: World, sender: str) -> ps.SignedRequest:
    params = ps.vonage_answer_params(sender.lstrip("+"), "14155550100")
    return ps.vonage_voice_request(VONAGE_SECRET, w.hook("vonage"), params, time.time())


def _vonage_sms(w: World, sender: str) -> ps.SignedRequest:
    params = ps.vonage_sms_params(sender.lstrip("+"), "14155550100", now=time.time())
    return ps.vonage_sms_request(VONAGE_SECRET, w.hook("vonage"), params)


def _mail_from(sender: str) -> str:
    return "bob@spam.example" if sender == BLOCKED_NUMBER else "bob@example.com"


def _mailgun(w: World, sender: str) -> ps.SignedRequest:
    fields = ps.mailgun_fields(from_header=f"Bob <{_mail_from(sender)}>")
    return ps.mailgun_request(MAILGUN_KEY, w.hook("mailgun"), fields, int(time.time()))


def _sendgrid(w: World, sender: str) -> ps.SignedRequest:
    fields = ps.sendgrid_fields(from_header=f"Bob <{_mail_from(sender)}>")
    return ps.sendgrid_request(SENDGRID_AUTH, w.hook("sendgrid"), fields)


def _postmark(w: World, sender: str) -> ps.SignedRequest:
    return ps.postmark_request(
        POSTMARK_AUTH, w.hook("postmark"), ps.postmark_payload(from_email=_mail_from(sender))
    )


def _ses(w: World, sender: str) -> ps.SignedRequest:
    inner = ps.ses_received_message(from_header=f"Jane <{_mail_from(sender)}>")
    return ps.sns_notification(w.sns, w.hook("ses"), inner, time.time())


def _generic(w: World, sender: str) -> ps.SignedRequest:
    body = json.dumps({"id": f"g-{time.time_ns()}", "from": sender, "to": "+14155550100"}).encode()
    return ps.generic_hmac_request(GENERIC_SECRET, w.hook("generic"), body)


ALLOWED = "+14155550123"
CASES: list[tuple[str, Maker, int, bytes | None]] = [
    ("twilio-sms", _twilio_sms, 200, b"<Response/>"),
    ("twilio-voice", _twilio_voice, 200, b'<Reject reason="rejected"/>'),
    ("telnyx-call-control", _telnyx_call, 200, None),
    ("telnyx-messaging", _telnyx_sms, 200, None),
    ("plivo-voice", _plivo_voice, 200, b'<Hangup reason="rejected"/>'),
    ("plivo-sms", _plivo_sms, 200, b"<Response/>"),
    ("vonage-voice", _vonage_voice, 200, b"[]"),
    ("vonage-sms", _vonage_sms, 200, None),
    ("mailgun", _mailgun, 406, None),
    ("sendgrid", _sendgrid, 200, None),
    ("postmark", _postmark, 200, None),
    ("ses", _ses, 200, None),
    ("generic", _generic, 200, None),
]


@pytest.mark.parametrize(
    ("name", "make", "drop_status", "drop_body"), CASES, ids=[c[0] for c in CASES]
)
def test_provider_forwards_allowed_and_drops_blocked(
    world: World, name: str, make: Maker, drop_status: int, drop_body: bytes | None
) -> None:
    """Each provider: a signed event from an allowed sender reaches the app byte for byte;
    one from a blocked sender gets the provider's drop answer, reaches nobody and sits
    in quarantine."""
    allowed = make(world, ALLOWED)
    r = world.send(allowed)
    assert r.status_code == 200, r.text
    got = world.app.wait_for_sync(1)[0]
    assert got.body == allowed.body
    assert got.header("x-sendergate-verdict") == "deliver"
    assert got.header("webhook-signature")

    world.app.clear()
    blocked = make(world, BLOCKED_NUMBER)
    r = world.send(blocked)
    assert r.status_code == drop_status, r.text
    if drop_body is not None:
        assert drop_body in r.content
    settle()
    forwarded = [q for q in world.app.requests if not q.path.startswith("/telnyx-api")]
    assert forwarded == []
    quarantined = events(world, verdict="drop", outcome="quarantined")
    assert any(
        e["source"] == name.split("-")[0] and e["body_size"] == len(blocked.body)
        for e in quarantined
    )


def _forged(world: World, name: str, make: Maker) -> ps.SignedRequest:
    """The request with its signed content altered, or signed with the wrong secret where
    the provider's scheme does not cover the body (Mailgun signs timestamp+token only;
    SendGrid and Postmark authenticate with Basic auth)."""
    if name == "mailgun":
        fields = ps.mailgun_fields(from_header="Bob <bob@example.com>")
        return ps.mailgun_request("wrong-key", world.hook("mailgun"), fields, int(time.time()))
    if name in ("sendgrid", "postmark"):
        return make(world, ALLOWED).with_headers(authorization=ps.basic_auth("user:wrong"))
    signed = make(world, ALLOWED)
    if signed.body:
        return signed.with_body(
            signed.body.replace(b"14155550123", b"14155550124").replace(
                b"example.com", b"exbmple.com"
            )
        )
    return replace(signed, url=signed.url.replace("14155550123", "14155550124"))


@pytest.mark.parametrize(("name", "make"), [(c[0], c[1]) for c in CASES], ids=[c[0] for c in CASES])
def test_provider_refuses_forged_signature(world: World, name: str, make: Maker) -> None:
    """A forged request (altered content or wrong secret) is refused with 401 and not
    forwarded."""
    forged = _forged(world, name, make)
    r = world.send(forged)
    assert r.status_code == 401, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"]
    settle()
    assert world.app.requests == []


# --- forwarding details -----------------------------------------------------------------


def test_forward_is_signed_and_app_answer_relayed_unchanged(world: World) -> None:
    """The app receives the exact bytes with a verifiable Standard Webhooks signature,
    and its TwiML reaches the provider unchanged."""
    signed = _twilio_voice(world, ALLOWED)
    r = world.send(signed)
    assert r.status_code == 200
    assert r.content == TWIML
    assert r.headers["content-type"].startswith("text/xml")
    got = world.app.wait_for_sync(1)[0]
    assert got.body == signed.body and got.method == "POST"
    assert got.header("x-twilio-signature") == signed.headers["x-twilio-signature"]
    assert got.header("x-sendergate-sender") == ALLOWED
    assert got.header("x-sendergate-rule") == "none"
    assert got.header("webhook-id") == got.header("x-sendergate-event-id")


def test_forward_verifies_with_standardwebhooks_package(world: World) -> None:
    """The gateway's signature verifies with the official `standardwebhooks` package
    (which parses JSON bodies, hence a Postmark event here)."""
    signed = _postmark(world, ALLOWED)
    assert world.send(signed).status_code == 200
    got = world.app.wait_for_sync(1)[0]
    assert got.body == signed.body
    payload = Webhook(WHSEC).verify(got.body.decode(), got.header_dict)  # raises if wrong
    assert payload["FromFull"]["Email"] == "bob@example.com"
    tampered = {**got.header_dict, "webhook-id": "evt_other"}
    with pytest.raises(WebhookVerificationError):
        Webhook(WHSEC).verify(got.body.decode(), tampered)


def test_stopped_downstream_yields_retry_and_nothing_is_lost(world: World) -> None:
    """With the app down the provider gets a retryable 5xx and the event is recorded as
    forward_failed; the provider's retry after the app is back is delivered."""
    signed = _twilio_sms(world, ALLOWED)
    world.downstream.stop()
    r = world.send(signed)
    assert r.status_code in (502, 503, 504)
    failed = events(world, outcome="forward_failed")
    assert failed and failed[0]["sender"] == ALLOWED
    world.downstream.start()
    r = world.send(signed)  # Twilio retries the same request
    assert r.status_code == 200
    got = world.app.wait_for_sync(1)
    assert got[0].body == signed.body
    assert events(world, outcome="forwarded")[0]["id"] == failed[0]["id"]


def test_retry_of_delivered_event_is_answered_without_second_forward(world: World) -> None:
    """A provider retry of an event already delivered gets the recorded answer, and the
    app sees it once."""
    signed = _twilio_voice(world, ALLOWED)
    first = world.send(signed)
    second = world.send(signed)
    assert first.status_code == second.status_code == 200
    assert second.content == first.content == TWIML
    settle()
    assert len(world.app.requests) == 1


def test_retry_reaching_a_replica_without_the_answer_is_answered_from_the_store(
    world: World,
) -> None:
    """The in-process answer cache is per replica and lost on restart: a retry that
    reaches a process that never saw the event is answered from the store's record (the
    batched retry-dedupe read), and the app still sees the event once."""
    signed = _twilio_voice(world, ALLOWED)
    assert world.send(signed).content == TWIML
    eid = world.app.requests[0].header("x-sendergate-event-id")
    deadline = time.monotonic() + 10  # the record is written in the background
    while world.admin("GET", f"/v1/events/{eid}").status_code != 200:
        assert time.monotonic() < deadline, "the delivered event was never recorded"
        time.sleep(0.02)
    world.pipeline.answers = AnswerCache()  # as another replica, or after a restart
    retried = [world.send(signed) for _ in range(3)]
    assert [(r.status_code, r.content) for r in retried] == [(200, TWIML)] * 3
    settle()
    assert len(world.app.requests) == 1


def test_app_5xx_makes_provider_retry(world: World) -> None:
    """An app answering 500 yields 503 to the provider and forward_failed in the record."""
    world.app.routes["/generic"] = Reply(500, "text/plain", b"boom")
    try:
        r = world.send(_generic(world, ALLOWED))
        assert r.status_code == 503
        assert b"boom" not in r.content
    finally:
        del world.app.routes["/generic"]


def test_release_delivers_quarantined_event(world: World) -> None:
    """Releasing a quarantined event forwards its original bytes to the app."""
    blocked = _twilio_sms(world, BLOCKED_NUMBER)
    assert world.send(blocked).status_code == 200
    quarantined = events(world, outcome="quarantined", sender=BLOCKED_NUMBER)
    event_id = quarantined[0]["id"]
    detail = world.admin("GET", f"/v1/events/{event_id}").json()
    assert detail["body"].encode() == blocked.body
    assert world.app.requests == []
    r = world.admin("POST", f"/v1/events/{event_id}/release")
    assert r.status_code == 200, r.text
    got = world.app.wait_for_sync(1)[0]
    assert got.body == blocked.body and got.header("x-sendergate-verdict") == "released"
    assert world.admin("GET", f"/v1/events/{event_id}").json()["outcome"] == "released"
    again = world.admin("POST", f"/v1/events/{event_id}/release")
    assert again.status_code == 409


def test_telnyx_call_control_drop_calls_reject_api(world: World) -> None:
    """A blocked Telnyx Call Control call is acked with 200 and rejected through the API
    with the source's key."""
    signed = _telnyx_call(world, BLOCKED_NUMBER)
    control_id = json.loads(signed.body)["data"]["payload"]["call_control_id"]
    assert world.send(signed).status_code == 200
    got = world.app.wait_for_sync(1)[0]
    assert got.path == f"/telnyx-api/calls/{control_id}/actions/reject"
    assert got.header("authorization") == "Bearer telnyx-api-key"
    assert json.loads(got.body) == {"cause": "CALL_REJECTED"}


def test_mail_to_two_mailboxes_is_decided_per_mailbox(world: World) -> None:
    """Mail to a blacklist and a whitelist mailbox: delivered for the first, quarantined
    for the second."""
    fields = ps.sendgrid_fields(to=("sales.team@acme.example", "support@acme.example"))
    signed = ps.sendgrid_request(SENDGRID_AUTH, world.hook("sendgrid"), fields)
    assert world.send(signed).status_code == 200
    got = world.app.wait_for_sync(1)
    assert [g.path for g in got] == ["/sendgrid"]
    dropped = events(world, target="support@acme.example", verdict="drop")
    assert dropped and dropped[0]["decision"]["reason"] == "mode_default"


# --- bad input ---------------------------------------------------------------------------


def test_bad_webhook_input_gets_clear_4xx(world: World) -> None:
    """Unknown source, unsigned, stale, replayed, oversized, truncated, wrong content type
    and missing fields: each a 4xx with a message, never a forward."""
    hook = world.hook("twilio")
    cases: list[tuple[str, ps.SignedRequest, int]] = []
    cases.append(
        ("unknown source", replace(_twilio_sms(world, ALLOWED), url=world.hook("nope")), 404)
    )
    cases.append(
        ("unsigned", _twilio_sms(world, ALLOWED).with_headers(x_twilio_signature=None), 401)
    )
    stale = ps.telnyx_request(
        world.telnyx,
        world.hook("telnyx"),
        ps.telnyx_message_received(ALLOWED, "+14155550100"),
        int(time.time()) - 3600,
    )
    cases.append(("stale", stale, 401))
    mg = _mailgun(world, ALLOWED)
    assert world.send(mg).status_code == 200
    cases.append(("replayed", mg, 401))
    truncated = _postmark(world, ALLOWED)
    cases.append(("truncated", truncated.with_body(truncated.body[:-20]), 400))
    cases.append(
        (
            "wrong content type",
            _postmark(world, ALLOWED).with_headers(content_type="text/html"),
            415,
        )
    )
    missing = ps.twilio_request(TWILIO_TOKEN, hook, [("Body", "hi")])
    cases.append(("missing fields", missing, 400))
    world.app.clear()
    for what, signed, status in cases:
        r = world.send(signed)
        assert r.status_code == status, (what, r.status_code, r.text)
        assert r.headers["content-type"] == "application/problem+json", what
        assert r.json()["detail"], what
    big = httpx.post(
        hook,
        content=b"x" * (10 * 1024 * 1024 + 1),
        headers={"content-type": "application/x-www-form-urlencoded"},
        timeout=30,
    )
    assert big.status_code == 413
    settle()
    assert world.app.requests == []
