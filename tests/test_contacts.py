"""Contacts (SPEC §6, §7): the in-memory tracker of the hot path, its flush into the store,
and the contacts API through HTTP (lists, one contact, PUT of a state or a category) on
both stores."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.contacts import ContactTracker, contact_scope, exact_rule_for
from gateway.models import ORG_MAIL, ORG_PHONE, Family, Sender, Target, TargetKind
from gateway.normalise import normalise_email, normalise_phone
from gateway.settings import MailboxDecl, NumberDecl, Settings, StoreSettings
from gateway.store.base import ContactDelta, ContactFilter, Store
from gateway.store.sqlite import SQLiteStore
from tests import providers_support as ps
from tests.apptools import ADMIN, MEMBER, make_settings

T0 = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
MAILBOX = "sales@acme.example"
NUMBER = "+14155550100"
PROBLEM = "application/problem+json"


def _mail(raw: str) -> Sender:
    return normalise_email(raw)


def _phone(raw: str) -> Sender:
    return normalise_phone(raw, "US")


# --- the tracker ---------------------------------------------------------------------------


def test_observe_counts_per_scope_and_sender_by_verdict() -> None:
    """Each observation counts once in total and once under its verdict, per (scope,
    sender); the same sender in two scopes is two contacts."""
    t = ContactTracker()
    bob = _mail("Bob <BOB@spam.example>")
    for verdict in ("deliver", "deliver", "mute", "drop"):
        t.observe(MAILBOX, bob, "mail", verdict, T0)
    t.observe(ORG_MAIL, bob, "mail", "drop", T0)
    deltas = {(d.scope, d.sender): d for d in t.drain()}
    mine = deltas[(MAILBOX, "bob@spam.example")]
    assert (mine.count, mine.delivered, mine.muted, mine.dropped) == (4, 2, 1, 1)
    assert mine.family == "mail" and mine.number_type is None
    org = deltas[(ORG_MAIL, "bob@spam.example")]
    assert (org.count, org.dropped) == (1, 1)
    assert t.drain() == [] and t.pending == 0


def test_observe_keeps_the_seen_window_whatever_the_order() -> None:
    """first_seen is the earliest and last_seen the latest observation, even out of order."""
    t = ContactTracker()
    bob = _mail("bob@spam.example")
    for minutes in (5, 1, 9, 3):
        t.observe(MAILBOX, bob, "mail", "deliver", T0 + timedelta(minutes=minutes))
    (delta,) = t.drain()
    assert (delta.first_seen, delta.last_seen) == (
        T0 + timedelta(minutes=1),
        T0 + timedelta(minutes=9),
    )


@pytest.mark.parametrize(
    ("raw", "number_type", "region"),
    [
        ("+447400123456", "mobile", "GB"),
        ("+4915112345678", "mobile", "DE"),
        ("+18005550100", "toll_free", "US"),
        ("anonymous", None, None),
        ("12345", None, None),
    ],
    ids=["gb-mobile", "de-mobile", "toll-free", "anonymous", "short-code"],
)
def test_phone_contacts_carry_number_type_and_region(
    raw: str, number_type: str | None, region: str | None
) -> None:
    """Phone numbers get phonenumbers' type and region; tokens and anonymous get none."""
    t = ContactTracker()
    t.observe(NUMBER, _phone(raw), "phone", "deliver", T0)
    (delta,) = t.drain()
    assert (delta.family, delta.number_type, delta.region) == ("phone", number_type, region)


def test_tracker_memory_is_bounded() -> None:
    """Past max_contacts distinct contacts, new ones are counted as overflowed while the
    ones already held keep counting."""
    t = ContactTracker(max_contacts=2)
    a, b, c = (_mail(f"{x}@spam.example") for x in "abc")
    t.observe(MAILBOX, a, "mail", "deliver", T0)
    t.observe(MAILBOX, b, "mail", "deliver", T0)
    t.observe(MAILBOX, c, "mail", "deliver", T0)
    t.observe(MAILBOX, a, "mail", "drop", T0)
    assert t.overflowed == 1
    assert {d.sender: d.count for d in t.drain()} == {"a@spam.example": 2, "b@spam.example": 1}


async def test_flush_writes_the_counts_to_the_store(store: Store) -> None:
    """flush hands the aggregated counts to the store in one batch, and later flushes add
    to them: the stored counts match what was observed."""
    t = ContactTracker()
    senders = [_phone(f"+1415555{i:04d}") for i in range(20)]
    for i, sender in enumerate(senders):
        for n in range(i + 1):
            t.observe(NUMBER, sender, "phone", "drop" if n % 2 else "deliver", T0)
    assert await t.flush(store) == 20
    t.observe(NUMBER, senders[0], "phone", "mute", T0 + timedelta(hours=1))
    assert await t.flush(store) == 1
    assert await t.flush(store) == 0
    page, total = await store.list_contacts(
        ContactFilter(scopes=(NUMBER,)), sort="count", limit=50, offset=0
    )
    assert total == 20
    counts = {c.sender: (c.count, c.delivered, c.muted, c.dropped) for c in page}
    assert counts[senders[0].value] == (2, 1, 1, 0)
    assert counts[senders[19].value] == (20, 10, 0, 10)
    first = await store.get_contact(NUMBER, senders[0].value)
    assert first is not None and first.last_seen == T0 + timedelta(hours=1)
    assert first.number_type == "fixed_line_or_mobile" and first.region == "US"


async def test_flush_keeps_the_counts_while_the_store_is_down(tmp_path: Path) -> None:
    """When the store is unavailable the counts stay in memory, merged with what arrives
    meanwhile, and are written by the next flush that succeeds."""
    store = SQLiteStore(str(tmp_path / "gw.db"))  # not open yet: StoreUnavailable
    t = ContactTracker()
    bob = _mail("bob@spam.example")
    t.observe(MAILBOX, bob, "mail", "deliver", T0)
    assert await t.flush(store) == 0
    assert t.flush_errors == 1 and t.pending == 1
    t.observe(MAILBOX, bob, "mail", "drop", T0 + timedelta(minutes=1))
    await store.open()
    try:
        assert await t.flush(store) == 1
        c = await store.get_contact(MAILBOX, "bob@spam.example")
        assert c is not None and (c.count, c.delivered, c.dropped) == (2, 1, 1)
        assert (c.first_seen, c.last_seen) == (T0, T0 + timedelta(minutes=1))
    finally:
        await store.close()


def _target(kind: TargetKind, target_id: str) -> Target:
    return Target(kind, target_id, "blacklist", True, T0, T0)


@pytest.mark.parametrize(
    ("target", "family", "scope"),
    [
        (_target("mailbox", MAILBOX), "mail", MAILBOX),
        (_target("number", NUMBER), "phone", NUMBER),
        (None, "mail", ORG_MAIL),
        (None, "phone", ORG_PHONE),
        (_target("mailbox", MAILBOX), "phone", ORG_PHONE),
    ],
    ids=["mailbox", "number", "unknown-mail", "unknown-phone", "other-family"],
)
def test_contact_scope_is_the_target_or_the_org_list(
    target: Target | None, family: Family, scope: str
) -> None:
    """A contact is counted under its recipient's target, else the org list of its family."""
    assert contact_scope(target, family) == scope


@pytest.mark.parametrize(
    ("sender", "family", "expected"),
    [
        ("bob@spam.example", "mail", ("exact_email", "bob@spam.example")),
        ("invalid", "mail", ("invalid", "invalid")),
        ("+14155550123", "phone", ("exact_number", "+14155550123")),
        ("client:alice", "phone", ("exact_number", "client:alice")),
        ("12345", "phone", ("exact_number", "12345")),
        ("anonymous", "phone", ("anonymous", "anonymous")),
    ],
)
def test_exact_rule_for_each_kind_of_sender(
    sender: str, family: Family, expected: tuple[str, str]
) -> None:
    """The exact rule of a sender: exact_email, exact_number, or the invalid/anonymous word."""
    assert exact_rule_for(sender, family) == expected


def test_exact_rule_for_refuses_senders_no_rule_can_hold() -> None:
    """A long digit string that is not a possible number cannot be an exact_number target."""
    with pytest.raises(ValueError):
        exact_rule_for("123456789012", "phone")


# --- the API -------------------------------------------------------------------------------

GENERIC_SECRET = "contacts-generic-secret"


@dataclass
class Api:
    client: TestClient
    app: Starlette

    @property
    def store(self) -> Store:
        store: Store = self.app.state.gw.store
        return store

    def seed(self, deltas: list[ContactDelta]) -> None:
        """Write contacts straight into the app's store (the pipeline's counting is tested
        with the tracker above)."""
        portal = self.client.portal
        assert portal is not None
        portal.call(self.store.add_contacts, deltas)

    def get(self, path: str, headers: dict[str, str] = ADMIN, **params: Any) -> Any:
        r = self.client.get(path, params=params, headers=headers)
        assert r.status_code == 200, r.text
        return r.json()

    def check(self, sender: str, to: str) -> Any:
        """The /v1/check decision for ``sender`` writing to ``to``."""
        r = self.client.get("/v1/check", params={"from": sender, "to": to}, headers=ADMIN)
        assert r.status_code == 200, r.text
        return r.json()

    def put(self, path: str, body: dict[str, Any], headers: dict[str, str] = ADMIN) -> Any:
        r = self.client.put(path, json=body, headers=headers)
        assert r.status_code == 200, r.text
        return r.json()

    def sms(self, sender: str, to: str = NUMBER) -> int:
        """A signed SMS webhook through the generic source; answers the status (200 for a
        drop; a delivery fails with 5xx, as the forward URL leads nowhere)."""
        body = json.dumps({"id": sender + to, "from": sender, "to": to}).encode()
        signed = ps.generic_hmac_request(GENERIC_SECRET, "http://testserver/hooks/generic", body)
        r = self.client.post("/hooks/generic", content=signed.body, headers=signed.headers)
        return r.status_code


def _settings(tmp_path: Path, **changes: Any) -> Settings:
    source = ps.source(
        "generic",
        GENERIC_SECRET,
        options={
            "channel": "sms",
            "sender_field": "from",
            "recipient_field": "to",
            "event_id_field": "id",
        },
    )
    changes.setdefault("sources", {"generic": source})
    changes.setdefault("mailboxes", (MailboxDecl(MAILBOX), MailboxDecl("other@acme.example")))
    changes.setdefault("numbers", (NumberDecl(NUMBER),))
    return make_settings(tmp_path, **changes)


@pytest.fixture
def api(tmp_path: Path, app_store: StoreSettings) -> Iterator[Api]:
    """The app on each store."""
    app = create_app(_settings(tmp_path, store=app_store))
    with TestClient(app) as client:
        yield Api(client, app)


def _delta(
    sender: str,
    scope: str = MAILBOX,
    *,
    count: int = 1,
    dropped: int = 0,
    days_ago: float = 30,
    last_days_ago: float | None = None,
    number_type: str | None = None,
    region: str | None = None,
) -> ContactDelta:
    now = datetime.now(UTC)
    family: Family = "mail" if "@" in scope or scope == ORG_MAIL else "phone"
    return ContactDelta(
        scope=scope,
        sender=sender,
        family=family,
        count=count,
        delivered=count - dropped,
        muted=0,
        dropped=dropped,
        first_seen=now - timedelta(days=days_ago),
        last_seen=now - timedelta(days=days_ago if last_days_ago is None else last_days_ago),
        number_type=number_type,
        region=region,
    )


MB_CONTACTS = f"/v1/mailboxes/{MAILBOX}/contacts"
NB_CONTACTS = f"/v1/numbers/{NUMBER}/contacts"


def test_list_has_the_cleanbox_shape_and_sorts(api: Api) -> None:
    """A mailbox's contacts come as {data, page, per_page, total, total_pages}, by count
    descending unless asked otherwise."""
    api.seed(
        [
            _delta("a@x.example", count=5, days_ago=10, last_days_ago=1),
            _delta("b@x.example", count=9, days_ago=20, last_days_ago=3),
            _delta("c@x.example", count=1, days_ago=5, last_days_ago=2),
            _delta("d@x.example", "other@acme.example", count=99),
        ]
    )
    page = api.get(MB_CONTACTS)
    assert set(page) == {"data", "page", "per_page", "total", "total_pages"}
    assert (page["page"], page["per_page"], page["total"], page["total_pages"]) == (1, 50, 3, 1)
    assert [c["sender"] for c in page["data"]] == ["b@x.example", "a@x.example", "c@x.example"]
    first = page["data"][0]
    assert set(first) == {
        "sender",
        "scope",
        "state",
        "rule",
        "count",
        "delivered",
        "muted",
        "dropped",
        "first_seen",
        "last_seen",
        "category",
    }
    assert (first["scope"], first["state"], first["count"]) == (MAILBOX, "unset", 9)
    assert first["first_seen"].endswith("Z")
    by_last = api.get(MB_CONTACTS, sort="last_seen")
    assert [c["sender"][0] for c in by_last["data"]] == ["a", "c", "b"]
    oldest = api.get(MB_CONTACTS, sort="first_seen", dir="asc")
    assert [c["sender"][0] for c in oldest["data"]] == ["b", "a", "c"]


def test_list_pages(api: Api) -> None:
    """page and per_page walk the list; total_pages is ceil(total / per_page)."""
    api.seed([_delta(f"u{i:02d}@x.example", count=i + 1) for i in range(7)])
    seen: list[str] = []
    for page_no in (1, 2, 3):
        page = api.get(MB_CONTACTS, page=page_no, per_page=3)
        assert (page["page"], page["per_page"], page["total"], page["total_pages"]) == (
            page_no,
            3,
            7,
            3,
        )
        seen.extend(c["sender"] for c in page["data"])
    assert seen == [f"u{i:02d}@x.example" for i in range(6, -1, -1)]
    assert api.get(MB_CONTACTS, page=4, per_page=3)["data"] == []


@pytest.mark.parametrize(
    "query",
    ["per_page=0", "per_page=201", "page=0", "sort=name", "dir=up", "state=nice", "colour=red"],
)
def test_list_query_is_validated(api: Api, query: str) -> None:
    """Out-of-range paging, unknown sorts, directions, states and parameters are 422."""
    r = api.client.get(f"{MB_CONTACTS}?{query}", headers=ADMIN)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM


def test_phone_contacts_show_number_type_and_region(api: Api) -> None:
    """Contacts of a number carry number_type and region; mail contacts do not."""
    api.seed([_delta("+447400123456", NUMBER, number_type="mobile", region="GB")])
    (contact,) = api.get(NB_CONTACTS)["data"]
    assert (contact["number_type"], contact["region"]) == ("mobile", "GB")


def test_get_one_contact_normalises_the_sender(api: Api) -> None:
    """GET .../contacts/{sender} finds the contact by any spelling of the sender; an
    unseen sender or one that is not an address is 404."""
    api.seed([_delta("bob@spam.example"), _delta("+14155550123", NUMBER)])
    found = api.get(f"{MB_CONTACTS}/{quote('Bob <BOB@Spam.Example>')}")
    assert found["sender"] == "bob@spam.example"
    assert api.get(f"{NB_CONTACTS}/{quote('(415) 555-0123')}")["sender"] == "+14155550123"
    for path in (f"{MB_CONTACTS}/alice@spam.example", f"{MB_CONTACTS}/not-an-address"):
        r = api.client.get(path, headers=ADMIN)
        assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
    r = api.client.get("/v1/mailboxes/nobody@acme.example/contacts", headers=ADMIN)
    assert r.status_code == 404


def test_put_state_writes_changes_and_removes_the_exact_rule(api: Api) -> None:
    """PUT state blocks, mutes, whitelists and unsets the sender with one exact rule
    (source contact), and /v1/check follows each change at once."""
    api.seed([_delta("bob@spam.example")])
    path = f"{MB_CONTACTS}/bob@spam.example"

    blocked = api.put(path, {"state": "blocked"})
    assert blocked["state"] == "blocked" and blocked["rule"] is not None
    rule = api.get(f"/v1/mailboxes/{MAILBOX}/contact-rules/{blocked['rule']}")
    assert (rule["action"], rule["match_type"], rule["match_target"], rule["source"]) == (
        "block",
        "exact_email",
        "bob@spam.example",
        "contact",
    )
    assert api.check("bob@spam.example", MAILBOX)["verdict"] == "drop"

    muted = api.put(path, {"state": "muted"})
    assert (muted["state"], muted["rule"]) == ("muted", blocked["rule"])
    assert api.check("bob@spam.example", MAILBOX)["verdict"] == "mute"

    allowed = api.put(path, {"state": "whitelisted"})
    assert (allowed["state"], allowed["rule"]) == ("whitelisted", blocked["rule"])
    assert api.check("bob@spam.example", MAILBOX)["verdict"] == "deliver"
    assert api.check("bob@spam.example", MAILBOX)["rule"] == blocked["rule"]

    unset = api.put(path, {"state": "unset"})
    assert (unset["state"], unset["rule"]) == ("unset", None)
    assert api.check("bob@spam.example", MAILBOX)["reason"] == "mode_default"
    assert api.get(f"/v1/mailboxes/{MAILBOX}/contact-rules")["total"] == 0
    assert api.put(path, {"state": "unset"})["state"] == "unset"


def test_put_state_and_the_next_webhook_obeys(api: Api) -> None:
    """After PUT state=blocked the very next webhook from that sender is dropped; after
    unset it is delivered (here: forwarded to an app that is not there, so 5xx)."""
    api.seed([_delta("+14155550123", NUMBER)])
    path = f"{NB_CONTACTS}/+14155550123"
    assert api.sms("+14155550123") >= 500
    api.put(path, {"state": "blocked"})
    assert api.sms("(415) 555-0123") == 200
    dropped = api.get("/v1/events", verdict="drop")["items"]
    assert [e["sender"] for e in dropped] == ["+14155550123"]
    api.put(path, {"state": "unset"})
    assert api.sms("+1 415 555 0123") >= 500


def test_put_state_takes_over_a_paused_or_expired_rule(api: Api) -> None:
    """A paused or expired exact rule is the contact's rule: PUT state makes it active with
    the new action (same id) instead of failing on the slot."""
    api.seed([_delta("bob@spam.example"), _delta("eve@spam.example")])
    rules = f"/v1/mailboxes/{MAILBOX}/contact-rules"
    paused = api.client.post(
        rules,
        headers=ADMIN,
        json={
            "action": "allow",
            "match_type": "exact_email",
            "match_target": "bob@spam.example",
            "status": "paused",
        },
    ).json()
    expired = api.client.post(
        rules,
        headers=ADMIN,
        json={
            "action": "block",
            "match_type": "exact_email",
            "match_target": "eve@spam.example",
            "expires_at": "2020-01-01T00:00:00Z",
        },
    ).json()
    assert api.get(f"{MB_CONTACTS}/bob@spam.example")["state"] == "unset"
    bob = api.put(f"{MB_CONTACTS}/bob@spam.example", {"state": "blocked"})
    assert (bob["state"], bob["rule"]) == ("blocked", paused["id"])
    eve = api.put(f"{MB_CONTACTS}/eve@spam.example", {"state": "blocked"})
    assert (eve["state"], eve["rule"]) == ("blocked", expired["id"])
    rule = api.get(f"{rules}/{expired['id']}")
    assert (rule["status"], rule["expires_at"]) == ("active", None)


def test_put_category_sets_and_clears_the_label(api: Api) -> None:
    """PUT category labels a contact (null or empty clears it) without touching rules."""
    api.seed([_delta("bob@spam.example")])
    path = f"{MB_CONTACTS}/bob@spam.example"
    tagged = api.put(path, {"category": "newsletter"})
    assert (tagged["category"], tagged["state"]) == ("newsletter", "unset")
    assert api.get(path)["category"] == "newsletter"
    both = api.put(path, {"state": "muted", "category": "vendor"})
    assert (both["category"], both["state"]) == ("vendor", "muted")
    assert api.put(path, {"category": None})["category"] is None
    assert api.put(path, {"category": "x"})["category"] == "x"
    assert api.put(path, {"category": "  "})["category"] is None


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"state": "friendly"}, 422),
        ({}, 422),
        ({"state": "blocked", "colour": "red"}, 422),
        ({"category": 5}, 422),
        ([1], 400),
    ],
    ids=["unknown-state", "empty", "unknown-field", "category-type", "not-object"],
)
def test_put_body_is_validated(api: Api, body: Any, status: int) -> None:
    """PUT bodies are validated like the rest of the admin API."""
    api.seed([_delta("bob@spam.example")])
    r = api.client.put(f"{MB_CONTACTS}/bob@spam.example", json=body, headers=ADMIN)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM


def test_put_on_unseen_or_unrulable_senders(api: Api) -> None:
    """PUT on a sender never seen in the scope is 404 (create a rule instead); on a sender
    no exact rule can hold it is 422."""
    api.seed([_delta("123456789012", NUMBER)])
    r = api.client.put(f"{MB_CONTACTS}/new@spam.example", json={"state": "blocked"}, headers=ADMIN)
    assert r.status_code == 404
    r = api.client.put(f"{NB_CONTACTS}/123456789012", json={"state": "blocked"}, headers=ADMIN)
    assert r.status_code == 422 and r.json()["detail"].startswith("state:")


def test_list_across_all_scopes_for_admins(api: Api) -> None:
    """/v1/contacts lists every scope (org lists included) with state, channel and scope
    filters; /v1/org/{family}/contacts lists an org list."""
    api.seed(
        [
            _delta("a@x.example", count=3),
            _delta("b@x.example", ORG_MAIL, count=2),
            _delta("+14155550123", NUMBER, count=5),
            _delta("anonymous", ORG_PHONE, count=1),
        ]
    )
    api.put(f"{MB_CONTACTS}/a@x.example", {"state": "blocked"})
    everything = api.get("/v1/contacts")
    assert [c["sender"] for c in everything["data"]] == [
        "+14155550123",
        "a@x.example",
        "b@x.example",
        "anonymous",
    ]
    phone = api.get("/v1/contacts", channel="sms")
    assert {c["sender"] for c in phone["data"]} == {"+14155550123", "anonymous"}
    blocked = api.get("/v1/contacts", state="blocked")
    assert [c["sender"] for c in blocked["data"]] == ["a@x.example"]
    unset = api.get("/v1/contacts", state="unset", channel="mail")
    assert [c["sender"] for c in unset["data"]] == ["b@x.example"]
    scoped = api.get("/v1/contacts", scope="ORG:MAIL")
    assert [c["scope"] for c in scoped["data"]] == [ORG_MAIL]
    org = api.get("/v1/org/phone/contacts")
    assert [c["sender"] for c in org["data"]] == ["anonymous"]
    anon = api.put("/v1/org/phone/contacts/anonymous", {"state": "blocked"})
    assert anon["state"] == "blocked"
    assert api.check("anonymous", "+14155550199")["verdict"] == "drop"


def test_members_read_contacts_of_their_targets_only(api: Api) -> None:
    """A member key reads the contacts of its own targets; other targets, org lists,
    /v1/contacts and every PUT are 403."""
    api.seed([_delta("bob@spam.example"), _delta("eve@spam.example", "other@acme.example")])
    assert api.get(MB_CONTACTS, headers=MEMBER)["total"] == 1
    assert api.get(f"{MB_CONTACTS}/bob@spam.example", headers=MEMBER)["sender"] == (
        "bob@spam.example"
    )
    for path in (
        "/v1/mailboxes/other@acme.example/contacts",
        "/v1/contacts",
        "/v1/org/mail/contacts",
    ):
        r = api.client.get(path, headers=MEMBER)
        assert r.status_code == 403, path
    r = api.client.put(f"{MB_CONTACTS}/bob@spam.example", json={"state": "blocked"}, headers=MEMBER)
    assert r.status_code == 403 and r.headers["content-type"] == PROBLEM
    assert api.client.get(MB_CONTACTS).status_code == 401


def test_contact_puts_are_audited(api: Api) -> None:
    """Each rule a PUT writes, changes or removes, and each category change, is one audit
    entry with the key's name as actor."""
    api.seed([_delta("bob@spam.example")])
    path = f"{MB_CONTACTS}/bob@spam.example"
    api.put(path, {"state": "blocked", "category": "spam"})
    api.put(path, {"state": "blocked"})  # no change: no entry
    api.put(path, {"state": "muted"})
    api.put(path, {"state": "unset"})
    log = api.get("/v1/audit", scope=MAILBOX, actor="ops")["items"]
    assert [(e["actor"], e["action"]) for e in log] == [
        ("ops", "rule.delete"),
        ("ops", "rule.update"),
        ("ops", "contact.category"),
        ("ops", "rule.create"),
    ]
    assert (log[1]["before"]["action"], log[1]["after"]["action"]) == ("block", "mute")
    assert log[2]["after"] == {"sender": "bob@spam.example", "category": "spam"}
    assert log[3]["before"] is None and log[3]["after"]["source"] == "contact"
