"""gateway.client against a real gateway (uvicorn in a thread): the sync and the async
client, the problem+json carried by SenderGateError, and transport errors."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from gateway.client import (
    ApiCall,
    AsyncSenderGateClient,
    SenderGateClient,
    SenderGateConnectionError,
    SenderGateError,
    _rules_path,
)
from gateway.models import MatchType
from tests.apiserver import BLOCKED_PREFIX, HOME_NUMBER, ApiWorld, api_world
from tests.apptools import ADMIN_KEY, MEMBER_KEY
from tests.servers import RecordingApp, Reply, UvicornThread

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiWorld]:
    with api_world(tmp_path_factory.mktemp("client")) as w:
        yield w


@pytest.fixture
def gw(world: ApiWorld) -> Iterator[SenderGateClient]:
    with SenderGateClient(world.url, api_key=ADMIN_KEY, timeout=10) as client:
        yield client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- request building (no I/O) -------------------------------------------------------------


def test_scopes_map_to_their_rule_paths() -> None:
    """A scope string picks the mailbox, number or org-wide path; ids are URL-encoded
    with @ kept."""
    assert _rules_path("a+b@x.example") == "/v1/mailboxes/a%2Bb@x.example/contact-rules"
    assert _rules_path("+14155550100") == "/v1/numbers/%2B14155550100/contact-rules"
    assert _rules_path("org:mail") == "/v1/org/mail/contact-rules"
    assert _rules_path("ORG:PHONE") == "/v1/org/phone/contact-rules"


def test_query_drops_unset_values_and_spells_booleans() -> None:
    """None is not sent; booleans are true/false as the API expects."""
    call: ApiCall[None] = ApiCall("GET", "/x", {"a": None, "b": False, "c": 3})
    assert call.params() == {"b": "false", "c": 3}


# --- the sync client ----------------------------------------------------------------------


def test_health_and_readiness(gw: SenderGateClient) -> None:
    """healthz and readyz answer as dicts."""
    assert gw.healthz() == {"status": "ok"}
    ready = gw.readyz()
    assert ready["status"] == "ok" and "snapshot" in ready["checks"]


def test_mailbox_crud_normalises_and_encodes(gw: SenderGateClient) -> None:
    """A mailbox with + in its local part is created, found in any case, updated (with
    the mode-change notice), listed and deleted."""
    made = gw.create_mailbox("Client+Tag@ACME.example", filter_mode="blacklist")
    assert made["address"] == "client+tag@acme.example"
    assert gw.get_mailbox("CLIENT+tag@acme.example")["address"] == made["address"]
    changed = gw.update_mailbox(made["address"], filter_mode="whitelist", forward_url=None)
    assert changed["filter_mode"] == "whitelist"
    assert changed["filter_mode_change_notice"]["new_filter_mode"] == "whitelist"
    listed = gw.list_mailboxes(limit=200)
    assert made["address"] in [m["address"] for m in listed["items"]]
    assert gw.delete_mailbox(made["address"]) is None
    with pytest.raises(SenderGateError) as caught:
        gw.get_mailbox(made["address"])
    assert caught.value.status == 404


def test_number_crud_in_any_form(gw: SenderGateClient) -> None:
    """A number given in national form is stored E.164 and addressed with its + encoded."""
    made = gw.create_number("(415) 555-0177", sms_url="http://127.0.0.1:9/sms")
    assert made["number"] == "+14155550177"
    assert gw.get_number("+14155550177")["sms_url"] == "http://127.0.0.1:9/sms"
    assert gw.update_number("+14155550177", sms_url=None)["sms_url"] is None
    assert "+14155550177" in [n["number"] for n in gw.list_numbers()["items"]]
    gw.delete_number("+14155550177")


def test_rules_in_every_kind_of_scope(gw: SenderGateClient) -> None:
    """create/get/list/update/delete work the same for a mailbox, a number and org lists."""
    gw.create_mailbox("rules@acme.example")
    cases: list[tuple[str, MatchType, str | None, str]] = [
        ("rules@acme.example", "domain", "Spam.Example", "spam.example"),
        (HOME_NUMBER, "exact_number", "(415) 555-0199", "+14155550199"),
        ("org:mail", "exact_email", "Bad@Spam2.example", "bad@spam2.example"),
        ("org:phone", "anonymous", None, "anonymous"),
    ]
    for scope, match_type, target, stored in cases:
        rule = gw.create_rule(scope, "block", match_type, target, note="n", source="cli")
        assert (rule["match_target"], rule["source"], rule["note"]) == (stored, "cli", "n")
        assert gw.get_rule(scope, rule["id"]) == rule
        assert rule["id"] in [r["id"] for r in gw.list_rules(scope, action="block")["items"]]
        paused = gw.update_rule(scope, rule["id"], status="paused", expires_at=None)
        assert paused["status"] == "paused"
        gw.delete_rule(scope, rule["id"])
        deleted = gw.list_rules(scope, status="deleted")["items"]
        assert rule["id"] in [r["id"] for r in deleted]


def test_list_all_batch_and_check(gw: SenderGateClient) -> None:
    """The batch endpoint reports created, duplicate and refused per item; list_all_rules
    filters across scopes; check explains the decision."""
    gw.create_mailbox("batch@acme.example")
    result = gw.batch_create_rules(
        [
            {"scope": "batch@acme.example", "action": "block", "match_type": "domain",
             "match_target": "batch-spam.example"},
            {"scope": "batch@acme.example", "action": "block", "match_type": "domain",
             "match_target": "batch-spam.example"},
            {"scope": "nobody@acme.example", "action": "block", "match_type": "domain",
             "match_target": "x.example"},
        ]
    )  # fmt: skip
    assert [i["status"] for i in result["items"]] == ["created", "duplicate", "refused"]
    created = result["items"][0]["rule"]
    assert result["items"][1]["existing_rule_id"] == created["id"]
    assert "create it first" in result["items"][2]["reason"]
    page = gw.list_all_rules(match_target="batch-spam.example", channel="mail")
    assert [r["id"] for r in page["items"]] == [created["id"]]
    decision = gw.check("promo@batch-spam.example", "batch@acme.example")
    assert (decision["verdict"], decision["rule"]) == ("drop", created["id"])
    everywhere = gw.check_all("promo@batch-spam.example")
    assert {"scope": "batch@acme.example", "rule": created["id"], "action": "block"} in (
        everywhere["scopes"]
    )


def test_events_and_release(world: ApiWorld, gw: SenderGateClient) -> None:
    """A dropped SMS is listed, read in full and released to the application."""
    assert world.send_sms(BLOCKED_PREFIX + "5550001").status_code == 200
    page = gw.list_events(outcome="quarantined", sender=BLOCKED_PREFIX + "5550001")
    event = page["items"][0]
    assert event["decision"]["verdict"] == "drop"
    full = gw.get_event(event["id"])
    assert full["body_encoding"] == "utf-8" and BLOCKED_PREFIX in full["body"]
    released = gw.release_event(event["id"])
    assert released["outcome"] == "released" and released["response_status"] == 200
    with pytest.raises(SenderGateError) as caught:
        gw.release_event(event["id"])
    assert caught.value.status == 409 and "released" in caught.value.detail


# --- errors -------------------------------------------------------------------------------


def test_duplicate_carries_the_problem(gw: SenderGateClient) -> None:
    """A 409 raises SenderGateError with the problem's title, detail and existing_rule_id."""
    first = gw.create_rule("org:mail", "block", "domain", "dup.example")
    with pytest.raises(SenderGateError) as caught:
        gw.create_rule("org:mail", "mute", "domain", "DUP.example")
    exc = caught.value
    assert exc.status == 409 and exc.existing_rule_id == first["id"]
    assert exc.title == "Duplicate rule" and exc.problem["type"].endswith("/duplicate-rule")
    assert str(exc) == exc.message
    assert exc.message.startswith("409 Duplicate rule: a rule with")
    assert exc.message.endswith(f"(existing_rule_id: {first['id']})")


def test_validation_and_member_errors(world: ApiWorld, gw: SenderGateClient) -> None:
    """422 carries the errors list; a member key gets 403; no key gets 401."""
    with pytest.raises(SenderGateError) as caught:
        gw.create_rule("org:mail", "block", "domain", "not a domain")
    assert caught.value.status == 422
    assert caught.value.problem["errors"][0]["field"] == "match_target"
    with SenderGateClient(world.url, api_key=MEMBER_KEY) as member:
        assert member.list_rules(HOME_NUMBER)["total"] >= 0  # its own target
        with pytest.raises(SenderGateError) as forbidden:
            member.create_rule("org:mail", "block", "domain", "m.example")
    assert forbidden.value.status == 403 and "member key" in forbidden.value.detail
    with SenderGateClient(world.url) as anonymous, pytest.raises(SenderGateError) as missing:
        anonymous.list_mailboxes()
    assert missing.value.status == 401


def test_connection_refused_is_status_0() -> None:
    """Nothing listening: SenderGateConnectionError, status 0, a message naming the URL."""
    url = f"http://127.0.0.1:{free_port()}"
    with SenderGateClient(url) as client, pytest.raises(SenderGateConnectionError) as caught:
        client.healthz()
    assert caught.value.status == 0 and isinstance(caught.value, SenderGateError)
    assert url in caught.value.message and "cannot connect" in caught.value.message
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


def test_timeout_non_problem_answers_and_not_ready() -> None:
    """A slow server is a transport error; an answer that is not problem+json (a proxy's
    502 page) still becomes SenderGateError with its status and text; readyz's 503 is an
    answer, not an error."""
    failing = b'{"status":"failing","checks":{"sqlite":{"status":"failing"}}}'
    app = RecordingApp(
        routes={
            "/healthz": Reply(delay_s=2.0),
            "/v1/mailboxes": Reply(502, "text/html", b"<h1>bad gateway</h1>"),
            "/readyz": Reply(503, "application/json", failing),
        }
    )
    with UvicornThread(app) as server, SenderGateClient(server.url, timeout=0.2) as client:
        with pytest.raises(SenderGateConnectionError, match=r"no answer within 0\.2 s"):
            client.healthz()
        with pytest.raises(SenderGateError) as caught:
            client.list_mailboxes()
        assert client.readyz()["status"] == "failing"
    assert caught.value.status == 502 and caught.value.title == "Bad Gateway"
    assert caught.value.detail == "<h1>bad gateway</h1>"


# --- the async client ---------------------------------------------------------------------


async def test_async_client_same_calls(world: ApiWorld) -> None:
    """The async client makes the same calls and raises the same errors."""
    async with AsyncSenderGateClient(world.url, api_key=ADMIN_KEY) as gw:
        assert (await gw.healthz())["status"] == "ok"
        made = await gw.create_mailbox("async@acme.example")
        rule = await gw.create_rule(made["address"], "allow", "exact_email", "a@b.example")
        assert (await gw.get_rule(made["address"], rule["id"]))["action"] == "allow"
        page = await gw.list_all_rules(scope=made["address"])
        assert [r["id"] for r in page["items"]] == [rule["id"]]
        decision = await gw.check("a@b.example", made["address"])
        assert decision["verdict"] == "deliver" and decision["rule"] == rule["id"]
        with pytest.raises(SenderGateError) as caught:
            await gw.create_rule(made["address"], "block", "exact_email", "A@B.example")
        assert caught.value.existing_rule_id == rule["id"]
        assert (await gw.list_events(limit=1))["items"] is not None
        await gw.delete_mailbox(made["address"])


async def test_async_connection_refused() -> None:
    """The async client maps transport errors the same way."""
    async with AsyncSenderGateClient(f"http://127.0.0.1:{free_port()}") as gw:
        with pytest.raises(SenderGateConnectionError) as caught:
            await gw.list_mailboxes()
    assert caught.value.status == 0 and "cannot connect" in caught.value.message
