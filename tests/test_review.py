"""The review (SPEC §7): ``plan`` table-driven on contacts, then dry run, apply, a second
apply and the schedule through HTTP on a seeded population, on both stores."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.models import ORG_MAIL, ORG_PHONE, Action, Family, NewRule
from gateway.review import Proposal, apply, plan
from gateway.settings import (
    MailboxDecl,
    NumberDecl,
    ReviewPolicy,
    ReviewSettings,
    Settings,
    StoreSettings,
)
from gateway.store.base import Contact, ContactDelta, ContactState, Store
from tests.apptools import ADMIN, MEMBER, make_settings

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
MAILBOX = "sales@acme.example"
NUMBER = "+14155550100"


def _contact(
    sender: str,
    scope: str = MAILBOX,
    *,
    state: ContactState = "unset",
    rule_id: int | None = None,
    count: int = 1,
    dropped: int = 0,
    days_ago: float = 30,
    category: str | None = None,
    number_type: str | None = None,
    region: str | None = None,
) -> Contact:
    family: Family = "mail" if "@" in scope or scope == ORG_MAIL else "phone"
    if state != "unset" and rule_id is None:
        rule_id = 1
    return Contact(
        scope=scope,
        sender=sender,
        family=family,
        state=state,
        rule_id=rule_id,
        count=count,
        delivered=count - dropped,
        muted=0,
        dropped=dropped,
        first_seen=NOW - timedelta(days=days_ago),
        last_seen=NOW,
        category=category,
        number_type=number_type,
        region=region,
    )


def _policy(name: str = "p", action: Action = "block", **conditions: Any) -> ReviewPolicy:
    return ReviewPolicy(name=name, action=action, **conditions)


def _decided(
    contacts: list[Contact], policies: list[ReviewPolicy], min_age_days: int = 7
) -> list[tuple[str, str, str]]:
    return [
        (p.contact.sender, p.policy_name, p.action)
        for p in plan(contacts, policies, now=NOW, min_age_days=min_age_days)
    ]


# --- plan: conditions -------------------------------------------------------------------------

_CONDITIONS: list[tuple[str, dict[str, Any], list[Contact], list[str]]] = [
    (
        "tld",
        {"tld_in": ("xyz", "top")},
        [
            _contact("a@b.xyz"),
            _contact("a@deep.sub.b.top"),
            _contact("a@xyz.example"),
            _contact("invalid"),
            _contact("+14155550123", NUMBER),
        ],
        ["a@b.xyz", "a@deep.sub.b.top"],
    ),
    (
        "domain",
        {"domain_in": ("spam.example",)},
        [
            _contact("a@spam.example"),
            _contact("a@mail.spam.example"),
            _contact("a@evilspam.example"),
            _contact("a@spam.example.org"),
        ],
        ["a@mail.spam.example", "a@spam.example"],
    ),
    (
        "min-count",
        {"min_count": 50},
        [_contact("a@x.example", count=49), _contact("b@x.example", count=50)],
        ["b@x.example"],
    ),
    (
        "min-dropped",
        {"min_dropped": 3},
        [_contact("a@x.example", count=9, dropped=2), _contact("b@x.example", count=3, dropped=3)],
        ["b@x.example"],
    ),
    (
        "category",
        {"category_in": ("spam", "cold-sales")},
        [
            _contact("a@x.example", category="spam"),
            _contact("b@x.example", category="friend"),
            _contact("c@x.example"),
        ],
        ["a@x.example"],
    ),
    (
        "number-type",
        {"number_type_in": ("voip", "premium_rate")},
        [
            _contact("+14155550001", NUMBER, number_type="voip"),
            _contact("+14155550002", NUMBER, number_type="mobile"),
            _contact("+14155550003", NUMBER),
            _contact("a@x.example"),
        ],
        ["+14155550001"],
    ),
    (
        "country",
        {"country_in": ("GB",)},
        [
            _contact("+447400123456", NUMBER, region="GB"),
            _contact("+14155550002", NUMBER, region="US"),
        ],
        ["+447400123456"],
    ),
    (
        "channel",
        {"channel": "phone"},
        [_contact("a@x.example"), _contact("anonymous", ORG_PHONE)],
        ["anonymous"],
    ),
    (
        "combined",
        {"channel": "mail", "tld_in": ("xyz",), "min_count": 10},
        [
            _contact("a@b.xyz", count=10),
            _contact("c@b.xyz", count=9),
            _contact("d@b.example", count=99),
        ],
        ["a@b.xyz"],
    ),
    (
        "no-conditions",
        {},
        [_contact("a@x.example"), _contact("+14155550001", NUMBER)],
        ["+14155550001", "a@x.example"],
    ),
]


@pytest.mark.parametrize(
    ("conditions", "contacts", "expected"),
    [c[1:] for c in _CONDITIONS],
    ids=[c[0] for c in _CONDITIONS],
)
def test_policy_conditions(
    conditions: dict[str, Any], contacts: list[Contact], expected: list[str]
) -> None:
    """Each condition narrows the contacts a policy acts on; all of them must hold, and a
    policy without conditions matches every contact."""
    decided = _decided(contacts, [_policy(**conditions)])
    assert sorted(sender for sender, _, _ in decided) == expected


def test_contacts_too_young_are_left_alone() -> None:
    """A contact first seen less than min_age_days ago is never acted on."""
    contacts = [
        _contact("old@x.xyz", days_ago=7),
        _contact("young@x.xyz", days_ago=6.9),
    ]
    assert _decided(contacts, [_policy(tld_in=("xyz",))]) == [("old@x.xyz", "p", "block")]
    assert _decided(contacts, [_policy(tld_in=("xyz",))], min_age_days=0) == [
        ("old@x.xyz", "p", "block"),
        ("young@x.xyz", "p", "block"),
    ]


def test_first_matching_policy_decides() -> None:
    """Policies are tried in order; the first that matches decides, the rest are not tried."""
    policies = [
        _policy("trusted", "allow", domain_in=("partner.example",)),
        _policy("junk", "block", tld_in=("xyz",)),
        _policy("noisy", "mute", min_count=10),
    ]
    contacts = [
        _contact("a@partner.example", count=99),
        _contact("b@spam.xyz", count=99),
        _contact("c@other.example", count=99),
        _contact("d@other.example", count=1),
    ]
    assert _decided(contacts, policies) == [
        ("a@partner.example", "trusted", "allow"),
        ("b@spam.xyz", "junk", "block"),
        ("c@other.example", "noisy", "mute"),
    ]


def test_contacts_with_a_rule_are_left_alone_unless_state_any() -> None:
    """A contact with an exact rule (even paused: rule_id without a state) is skipped by
    state="unset" policies, so a later state="any" policy may decide it; "any" proposes
    only a change, and when the contact already has its action the review stops there."""
    policies = [
        _policy("junk", "block", tld_in=("xyz",)),
        _policy("force-mute", "mute", state="any", min_count=5),
    ]
    contacts = [
        _contact("allowed@b.xyz", state="whitelisted", count=9),
        _contact("paused@b.xyz", rule_id=7, count=9),
        _contact("muted@b.xyz", state="muted", count=9),
        _contact("few@b.xyz", state="whitelisted", count=1),
        _contact("new@b.xyz", count=9),
    ]
    decided = plan(contacts, policies, now=NOW, min_age_days=7)
    assert [(p.contact.sender, p.policy_name, p.action) for p in decided] == [
        ("allowed@b.xyz", "force-mute", "mute"),
        ("new@b.xyz", "junk", "block"),
        ("paused@b.xyz", "force-mute", "mute"),
    ]
    assert "currently whitelisted" in decided[0].reason


def test_a_matching_policy_that_changes_nothing_still_decides() -> None:
    """With state="any", a contact that already has the policy's action gets no proposal,
    and later policies are not tried for it."""
    policies = [
        _policy("keep", "block", state="any", tld_in=("xyz",)),
        _policy("all", "allow", state="any"),
    ]
    assert _decided([_contact("a@b.xyz", state="blocked")], policies) == []


def test_reasons_say_why() -> None:
    """A proposal's reason names each condition that held."""
    (p,) = plan(
        [_contact("a@mail.b.xyz", count=73, dropped=4)],
        [_policy(tld_in=("xyz",), min_count=50, min_dropped=1, domain_in=("b.xyz",))],
        now=NOW,
        min_age_days=7,
    )
    for words in ("count 73 >= 50", "dropped 4 >= 1", "top-level domain xyz", "under b.xyz"):
        assert words in p.reason
    (every,) = plan([_contact("a@x.example")], [_policy()], now=NOW, min_age_days=0)
    assert every.reason == "matches every contact"


def test_senders_no_exact_rule_can_hold_are_skipped() -> None:
    """A contact whose sender cannot be an exact rule target gets no proposal."""
    assert _decided([_contact("123456789012", NUMBER)], [_policy()]) == []


async def test_apply_creates_changes_and_leaves_alone(store: Store) -> None:
    """apply creates missing exact rules, changes the slot's rule when it says something
    else, leaves it when it already says the same, with one audit entry per write."""
    held = await store.create_rule(
        _new_rule("held@b.xyz", "allow", status="paused"),
    )
    same = await store.create_rule(_new_rule("same@b.xyz", "block"))
    proposals = [
        Proposal(_contact("new@b.xyz"), "junk", "block", "r"),
        Proposal(_contact("held@b.xyz", rule_id=held.id), "junk", "block", "r"),
        Proposal(_contact("same@b.xyz"), "junk", "block", "r"),
    ]
    outcomes = await apply(store, proposals, now=NOW)
    assert [o.outcome for o in outcomes] == ["created", "updated", "unchanged"]
    assert outcomes[1].rule_id == held.id and outcomes[2].rule_id == same.id
    changed = await store.get_rule(held.id)
    assert changed is not None and (changed.action, changed.status) == ("block", "active")
    created_id = outcomes[0].rule_id
    assert created_id is not None
    created = await store.get_rule(created_id)
    assert created is not None
    assert (created.source, created.match_type, created.match_target) == (
        "review:junk",
        "exact_email",
        "new@b.xyz",
    )
    entries, total = await store.list_audit(actor="review:junk", limit=10, offset=0)
    assert total == 2
    assert sorted(e.action for e in entries) == ["rule.create", "rule.update"]


def _new_rule(target: str, action: Action, **changes: Any) -> NewRule:
    rule = NewRule(scope=MAILBOX, action=action, match_type="exact_email", match_target=target)
    return replace(rule, **changes)


# --- through HTTP -----------------------------------------------------------------------------

POLICIES = (
    ReviewPolicy(name="trusted", action="allow", domain_in=("partner.example",)),
    ReviewPolicy(name="junk-tlds", action="block", tld_in=("xyz", "top", "click", "buzz", "icu")),
    ReviewPolicy(name="repeat-offenders", action="block", min_count=50),
    ReviewPolicy(name="premium", action="block", channel="phone", number_type_in=("premium_rate",)),
)


def _settings(tmp_path: Path, store: StoreSettings, **review: Any) -> Settings:
    return make_settings(
        tmp_path,
        store=store,
        mailboxes=(MailboxDecl(MAILBOX),),
        numbers=(NumberDecl(NUMBER),),
        review=ReviewSettings(**{"min_age_days": 7, "policies": POLICIES, **review}),
    )


def _delta(
    sender: str, scope: str = MAILBOX, *, count: int = 1, days_ago: float = 30, **kw: Any
) -> ContactDelta:
    now = datetime.now(UTC)
    family: Family = "mail" if "@" in scope or scope == ORG_MAIL else "phone"
    return ContactDelta(
        scope=scope,
        sender=sender,
        family=family,
        count=count,
        delivered=count,
        muted=0,
        dropped=0,
        first_seen=now - timedelta(days=days_ago),
        last_seen=now,
        **kw,
    )


POPULATION = [
    _delta("ceo@partner.example", count=80),  # trusted (first match), not a repeat offender
    _delta("promo@deals.xyz"),  # junk-tlds
    _delta("promo@deals.xyz", ORG_MAIL),  # junk-tlds, in the org list
    _delta("win@prize.click", days_ago=2),  # too young
    _delta("bulk@news.example", count=50),  # repeat-offenders
    _delta("friend@home.example", count=49),  # nothing
    _delta("+19005550100", NUMBER, number_type="premium_rate", region="US"),  # premium
    _delta("+14155550123", NUMBER, number_type="fixed_line_or_mobile", region="US"),
    _delta("old@gone.xyz", "deleted@acme.example"),  # scope no longer exists
]
EXPECTED = [
    (MAILBOX, "bulk@news.example", "repeat-offenders", "block"),
    (MAILBOX, "ceo@partner.example", "trusted", "allow"),
    (MAILBOX, "promo@deals.xyz", "junk-tlds", "block"),
    (NUMBER, "+19005550100", "premium", "block"),
    (ORG_MAIL, "promo@deals.xyz", "junk-tlds", "block"),
]


def _seed(client: TestClient, app: Starlette, deltas: list[ContactDelta]) -> None:
    portal = client.portal
    assert portal is not None
    portal.call(app.state.gw.store.add_contacts, deltas)


@pytest.fixture
def seeded(tmp_path: Path, app_store: StoreSettings) -> Iterator[TestClient]:
    """The app on each store, with ``POPULATION`` in its contacts."""
    app = create_app(_settings(tmp_path, app_store))
    with TestClient(app) as client:
        _seed(client, app, POPULATION)
        yield client


def _review(client: TestClient, body: dict[str, Any] | None) -> Any:
    r = client.post("/v1/review", json=body, headers=ADMIN)
    assert r.status_code == 200, r.text
    return r.json()


def _rows(result: Any) -> list[tuple[str, str, str, str]]:
    return sorted((p["scope"], p["sender"], p["policy"], p["action"]) for p in result["proposals"])


def test_dry_run_proposes_exactly_what_the_policies_say(seeded: TestClient) -> None:
    """A dry run lists one proposal per contact its policies act on, with reasons, and
    writes nothing: no rule, no audit entry, decisions unchanged."""
    before_audit = seeded.get("/v1/audit", headers=ADMIN).json()["total"]
    for body in (None, {}, {"apply": False}):
        result = _review(seeded, body)
        assert result["dry_run"] is True and result["written"] == 0
        assert _rows(result) == sorted(EXPECTED)
        assert result["policies"] == [p.name for p in POLICIES]
        assert result["reviewed"] == 7  # old enough and in a scope that exists
        assert all(p["reason"] and "outcome" not in p for p in result["proposals"])
    assert seeded.get("/v1/contact-rules", headers=ADMIN).json()["total"] == 0
    assert seeded.get("/v1/audit", headers=ADMIN).json()["total"] == before_audit
    check = {"from": "promo@deals.xyz", "to": MAILBOX}
    assert seeded.get("/v1/check", params=check, headers=ADMIN).json()["verdict"] == "deliver"


def test_apply_writes_then_a_second_apply_writes_nothing(seeded: TestClient) -> None:
    """apply writes one exact rule per proposal (source review:POLICY) with an audit entry
    each, decisions follow at once, and a second apply proposes and writes nothing."""
    result = _review(seeded, {"apply": True})
    assert result["dry_run"] is False and result["written"] == len(EXPECTED)
    assert _rows(result) == sorted(EXPECTED)
    assert {p["outcome"] for p in result["proposals"]} == {"created"}
    rules = seeded.get("/v1/contact-rules", headers=ADMIN).json()["items"]
    assert sorted((r["scope"], r["match_target"], r["source"], r["action"]) for r in rules) == (
        sorted((s, t, f"review:{p}", a) for s, t, p, a in EXPECTED)
    )
    check = {"from": "promo@deals.xyz", "to": MAILBOX}
    assert seeded.get("/v1/check", params=check, headers=ADMIN).json()["verdict"] == "drop"
    contact = seeded.get(f"/v1/mailboxes/{MAILBOX}/contacts/promo@deals.xyz", headers=ADMIN)
    assert contact.json()["state"] == "blocked"
    log = seeded.get("/v1/audit", params={"limit": 200}, headers=ADMIN).json()["items"]
    review_entries = [e for e in log if e["actor"].startswith("review:")]
    assert sorted((e["actor"], e["scope"], e["after"]["match_target"]) for e in review_entries) == (
        sorted((f"review:{p}", s, t) for s, t, p, _ in EXPECTED)
    )
    assert all(e["action"] == "rule.create" for e in review_entries)
    assert next(e for e in log if e["action"] == "review.apply")["actor"] == "ops"

    again = _review(seeded, {"apply": True})
    assert (again["proposals"], again["written"]) == ([], 0)
    assert seeded.get("/v1/contact-rules", headers=ADMIN).json()["total"] == len(EXPECTED)
    log_after = seeded.get("/v1/audit", params={"limit": 200}, headers=ADMIN).json()
    assert [e for e in log_after["items"] if e["actor"].startswith("review:")] == review_entries


def test_review_leaves_user_rules_alone(seeded: TestClient) -> None:
    """A contact a user already ruled on is not touched by state="unset" policies."""
    r = seeded.put(
        f"/v1/mailboxes/{MAILBOX}/contacts/promo@deals.xyz",
        json={"state": "whitelisted"},
        headers=ADMIN,
    )
    assert r.status_code == 200
    result = _review(seeded, {"apply": True})
    assert (MAILBOX, "promo@deals.xyz", "junk-tlds", "block") not in _rows(result)
    contact = seeded.get(f"/v1/mailboxes/{MAILBOX}/contacts/promo@deals.xyz", headers=ADMIN)
    assert contact.json()["state"] == "whitelisted"


def test_review_is_admin_only_and_validated(seeded: TestClient) -> None:
    """Members may not run the review (dry run included); bodies are validated."""
    assert seeded.post("/v1/review", json={}, headers=MEMBER).status_code == 403
    assert seeded.post("/v1/review", json={"apply": "yes"}, headers=ADMIN).status_code == 422
    assert seeded.post("/v1/review", json={"aply": True}, headers=ADMIN).status_code == 422
    assert seeded.post("/v1/review").status_code == 401


def test_review_schedule_applies_inside_the_server(
    tmp_path: Path, app_store: StoreSettings
) -> None:
    """With [review] interval the server applies the review by itself."""
    app = create_app(_settings(tmp_path, app_store, interval_s=0.1))
    with TestClient(app) as client:
        _seed(client, app, POPULATION)
        deadline = time.monotonic() + 10
        total = 0
        while time.monotonic() < deadline:
            total = client.get("/v1/contact-rules", headers=ADMIN).json()["total"]
            if total == len(EXPECTED):
                break
            time.sleep(0.05)
        assert total == len(EXPECTED)
        check = {"from": "promo@deals.xyz", "to": MAILBOX}
        deadline = time.monotonic() + 5
        verdict = ""
        while time.monotonic() < deadline:
            verdict = client.get("/v1/check", params=check, headers=ADMIN).json()["verdict"]
            if verdict == "drop":
                break
            time.sleep(0.05)
        assert verdict == "drop"
