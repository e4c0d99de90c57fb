"""Table-driven tests of ``gateway.rules``: one row per rule of SPEC §3.

Senders are built directly as ``Sender`` objects (no normaliser involved).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.models import (
    ORG_MAIL,
    ORG_PHONE,
    Action,
    Decision,
    Family,
    MatchType,
    Mode,
    Sender,
    Target,
    Verdict,
)
from gateway.rules import compile_rules, decide, redundant_rule_ids, scopes_matching
from gateway.store.base import SnapshotRule

NOW = 1_700_000_000.0
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)

MB = "me@ours.example"  # blacklist mailbox
WL = "wl@ours.example"  # whitelist mailbox
SH = "shadow@ours.example"  # blacklist mailbox in shadow mode
SHW = "shadow-wl@ours.example"  # whitelist mailbox in shadow mode
NUM = "+14155550100"  # blacklist number
NWL = "+14155550199"  # whitelist number
UNKNOWN_MB = "nobody@ours.example"
UNKNOWN_NUM = "+14155550000"


def mailbox(address: str, mode: Mode = "blacklist", enforce: bool = True) -> Target:
    return Target("mailbox", address, mode, enforce, EPOCH, EPOCH)


def number(e164: str, mode: Mode = "blacklist", enforce: bool = True) -> Target:
    return Target("number", e164, mode, enforce, EPOCH, EPOCH)


TARGETS = (
    mailbox(MB),
    mailbox(WL, "whitelist"),
    mailbox(SH, enforce=False),
    mailbox(SHW, "whitelist", enforce=False),
    number(NUM),
    number(NWL, "whitelist"),
)


def email(address: str) -> Sender:
    return Sender("email", address, address, domain=address.rpartition("@")[2])


def phone(e164: str) -> Sender:
    return Sender("phone", e164, e164)


def token(value: str) -> Sender:
    return Sender("token", value, value)


ANON = Sender("anonymous", "anonymous", "")
INVALID = Sender("invalid", "invalid", "not an address")


def row(
    rule_id: int,
    scope: str,
    action: Action,
    match_type: MatchType,
    target: str,
    sub: bool = True,
    expires_at: float | None = None,
) -> SnapshotRule:
    return (rule_id, scope, action, match_type, target, sub, expires_at)


@dataclass(frozen=True)
class Case:
    rows: tuple[SnapshotRule, ...]
    sender: Sender
    recipient: str
    verdict: Verdict
    rule: int | None
    family: Family = "mail"
    authenticated: bool = True
    envelope: Sender | None = None
    mail_mode: Mode = "blacklist"
    phone_mode: Mode = "blacklist"
    would_drop: bool = False
    unauthenticated_allow: bool = False
    mode: Mode | None = None  # checked when given
    action: Action | None = field(default=None)  # checked when given


def case(id_: str, *rows: SnapshotRule, **kw: Any) -> Any:
    return pytest.param(Case(rows=rows, **kw), id=id_)


CASES = [
    # 3. no candidate: the mode decides
    case(
        "blacklist-no-candidate-delivers",
        sender=email("a@b.example"),
        recipient=MB,
        verdict="deliver",
        rule=None,
        mode="blacklist",
    ),
    case(
        "whitelist-no-candidate-drops",
        sender=email("a@b.example"),
        recipient=WL,
        verdict="drop",
        rule=None,
        mode="whitelist",
    ),
    case(
        "phone-whitelist-no-candidate-drops",
        sender=phone("+33612345678"),
        recipient=NWL,
        family="phone",
        verdict="drop",
        rule=None,
        mode="whitelist",
    ),
    # match types
    case(
        "exact-email-block",
        row(1, MB, "block", "exact_email", "a@b.example"),
        sender=email("a@b.example"),
        recipient=MB,
        verdict="drop",
        rule=1,
        action="block",
    ),
    case(
        "exact-email-other-address-no-match",
        row(1, MB, "block", "exact_email", "a@b.example"),
        sender=email("c@b.example"),
        recipient=MB,
        verdict="deliver",
        rule=None,
    ),
    case(
        "domain-block-own-domain",
        row(1, MB, "block", "domain", "example.com"),
        sender=email("x@example.com"),
        recipient=MB,
        verdict="drop",
        rule=1,
    ),
    case(
        "domain-mute",
        row(1, MB, "mute", "domain", "example.com"),
        sender=email("x@example.com"),
        recipient=MB,
        verdict="mute",
        rule=1,
        action="mute",
    ),
    case(
        "domain-allow-in-whitelist",
        row(1, WL, "allow", "domain", "example.com"),
        sender=email("x@example.com"),
        recipient=WL,
        verdict="deliver",
        rule=1,
        action="allow",
    ),
    case(
        "invalid-rule-matches-invalid-sender",
        row(1, MB, "block", "invalid", "invalid"),
        sender=INVALID,
        recipient=MB,
        verdict="drop",
        rule=1,
    ),
    case(
        "invalid-rule-ignores-valid-sender",
        row(1, MB, "block", "invalid", "invalid"),
        sender=email("a@invalid"),
        recipient=MB,
        verdict="deliver",
        rule=None,
    ),
    case(
        "exact-number-block",
        row(1, NUM, "block", "exact_number", "+33612345678"),
        sender=phone("+33612345678"),
        recipient=NUM,
        family="phone",
        verdict="drop",
        rule=1,
    ),
    case(
        "number-prefix-block",
        row(1, NUM, "block", "number_prefix", "+1900"),
        sender=phone("+19005551234"),
        recipient=NUM,
        family="phone",
        verdict="drop",
        rule=1,
    ),
    case(
        "number-prefix-no-match",
        row(1, NUM, "block", "number_prefix", "+1900"),
        sender=phone("+19015551234"),
        recipient=NUM,
        family="phone",
        verdict="deliver",
        rule=None,
    ),
    case(
        "anonymous-rule",
        row(1, NUM, "block", "anonymous", "anonymous"),
        sender=ANON,
        recipient=NUM,
        family="phone",
        verdict="drop",
        rule=1,
    ),
    case(
        "anonymous-rule-ignores-numbers",
        row(1, NUM, "block", "anonymous", "anonymous"),
        sender=phone("+33612345678"),
        recipient=NUM,
        family="phone",
        verdict="deliver",
        rule=None,
    ),
    # whole-label domain matching
    case(
        "domain-never-matches-label-suffix",
        row(1, MB, "block", "domain", "example.com"),
        sender=email("x@evilexample.com"),
        recipient=MB,
        verdict="deliver",
        rule=None,
    ),
    case(
        "domain-with-subdomains-matches-deep",
        row(1, MB, "block", "domain", "example.com"),
        sender=email("x@a.b.example.com"),
        recipient=MB,
        verdict="drop",
        rule=1,
    ),
    case(
        "domain-without-subdomains-skips-sub",
        row(1, MB, "block", "domain", "example.com", sub=False),
        sender=email("x@a.example.com"),
        recipient=MB,
        verdict="deliver",
        rule=None,
    ),
    case(
        "domain-without-subdomains-matches-itself",
        row(1, MB, "block", "domain", "example.com", sub=False),
        sender=email("x@example.com"),
        recipient=MB,
        verdict="drop",
        rule=1,
    ),
    case(
        "tld-rule-matches-any-domain-under-it",
        row(1, MB, "block", "domain", "xyz"),
        sender=email("x@promo.spam.xyz"),
        recipient=MB,
        verdict="drop",
        rule=1,
    ),
    case(
        "tld-rule-ignores-other-tld",
        row(1, MB, "block", "domain", "xyz"),
        sender=email("x@xyz.com"),
        recipient=MB,
        verdict="deliver",
        rule=None,
    ),
    # 4. precedence
    case(
        "longest-prefix-wins-over-stronger-action",
        row(1, NUM, "block", "number_prefix", "+1"),
        row(2, NUM, "allow", "number_prefix", "+1900"),
        sender=phone("+19005551234"),
        recipient=NUM,
        family="phone",
        verdict="deliver",
        rule=2,
    ),
    case(
        "exact-email-beats-domain",
        row(1, MB, "block", "domain", "example.com"),
        row(2, MB, "allow", "exact_email", "ceo@example.com"),
        sender=email("ceo@example.com"),
        recipient=MB,
        verdict="deliver",
        rule=2,
    ),
    case(
        "exact-number-beats-prefix",
        row(1, NUM, "block", "number_prefix", "+1900"),
        row(2, NUM, "allow", "exact_number", "+19005551234"),
        sender=phone("+19005551234"),
        recipient=NUM,
        family="phone",
        verdict="deliver",
        rule=2,
    ),
    case(
        "more-labels-beat-fewer",
        row(1, MB, "block", "domain", "example.com"),
        row(2, MB, "allow", "domain", "a.example.com"),
        sender=email("x@b.a.example.com"),
        recipient=MB,
        verdict="deliver",
        rule=2,
    ),
    case(
        "target-beats-org-at-equal-specificity",
        row(1, ORG_MAIL, "block", "domain", "x.example"),
        row(2, MB, "allow", "domain", "x.example"),
        sender=email("a@x.example"),
        recipient=MB,
        verdict="deliver",
        rule=2,
    ),
    case(
        "specificity-before-scope",
        row(1, ORG_MAIL, "block", "domain", "a.x.example"),
        row(2, MB, "allow", "domain", "x.example"),
        sender=email("u@a.x.example"),
        recipient=MB,
        verdict="drop",
        rule=1,
    ),
    case(
        "org-exact-beats-target-domain",
        row(1, ORG_MAIL, "block", "exact_email", "u@x.example"),
        row(2, MB, "allow", "domain", "x.example"),
        sender=email("u@x.example"),
        recipient=MB,
        verdict="drop",
        rule=1,
    ),
    case(
        "org-applies-to-known-target",
        row(1, ORG_PHONE, "block", "number_prefix", "+1900"),
        sender=phone("+19005551234"),
        recipient=NUM,
        family="phone",
        verdict="drop",
        rule=1,
    ),
    case(
        "org-applies-to-unknown-recipient",
        row(1, ORG_MAIL, "block", "domain", "spam.example"),
        sender=email("a@spam.example"),
        recipient=UNKNOWN_MB,
        verdict="drop",
        rule=1,
        mode="blacklist",
    ),
    case(
        "unknown-recipient-uses-default-mail-mode",
        sender=email("a@b.example"),
        recipient=UNKNOWN_MB,
        mail_mode="whitelist",
        verdict="drop",
        rule=None,
        mode="whitelist",
    ),
    case(
        "unknown-recipient-uses-default-phone-mode",
        sender=phone("+33612345678"),
        recipient=UNKNOWN_NUM,
        family="phone",
        phone_mode="whitelist",
        mail_mode="blacklist",
        verdict="drop",
        rule=None,
        mode="whitelist",
    ),
    case(
        "other-targets-rules-do-not-apply",
        row(1, WL, "block", "domain", "spam.example"),
        sender=email("a@spam.example"),
        recipient=MB,
        verdict="deliver",
        rule=None,
    ),
    case(
        "full-tie-block-over-mute",
        row(1, MB, "mute", "exact_email", "from@x.example"),
        row(2, MB, "block", "exact_email", "env@y.example"),
        sender=email("from@x.example"),
        envelope=email("env@y.example"),
        recipient=MB,
        verdict="drop",
        rule=2,
    ),
    case(
        "full-tie-mute-over-allow",
        row(1, MB, "allow", "exact_email", "from@x.example"),
        row(2, MB, "mute", "exact_email", "env@y.example"),
        sender=email("from@x.example"),
        envelope=email("env@y.example"),
        recipient=MB,
        verdict="mute",
        rule=2,
    ),
    case(
        "full-tie-same-action-goes-to-from",
        row(1, MB, "block", "exact_email", "from@x.example"),
        row(2, MB, "block", "exact_email", "env@y.example"),
        sender=email("from@x.example"),
        envelope=email("env@y.example"),
        recipient=MB,
        verdict="drop",
        rule=1,
    ),
    case(
        "duplicate-slot-keeps-stronger-action",
        row(1, MB, "allow", "domain", "x.example"),
        row(2, MB, "block", "domain", "x.example"),
        sender=email("a@x.example"),
        recipient=MB,
        verdict="drop",
        rule=2,
    ),
    case(
        "duplicate-slot-keeps-stronger-action-whatever-the-order",
        row(1, MB, "block", "domain", "x.example"),
        row(2, MB, "allow", "domain", "x.example"),
        sender=email("a@x.example"),
        recipient=MB,
        verdict="drop",
        rule=1,
    ),
    case(
        "envelope-target-rule-beats-from-org-rule-at-equal-specificity",
        row(1, ORG_MAIL, "block", "exact_email", "a@x.example"),
        row(2, MB, "mute", "exact_email", "b@y.example"),
        sender=email("a@x.example"),
        envelope=email("b@y.example"),
        recipient=MB,
        verdict="mute",
        rule=2,
    ),
    case(
        "envelope-domain-with-more-labels-beats-from-domain",
        row(1, MB, "block", "domain", "x.example"),
        row(2, ORG_MAIL, "mute", "domain", "a.b.example"),
        sender=email("u@x.example"),
        envelope=email("v@a.b.example"),
        recipient=MB,
        verdict="mute",
        rule=2,
    ),
    # expiry
    case(
        "expired-rule-skipped-falls-through",
        row(1, MB, "block", "exact_email", "a@x.example", expires_at=NOW - 1),
        row(2, MB, "mute", "domain", "x.example"),
        sender=email("a@x.example"),
        recipient=MB,
        verdict="mute",
        rule=2,
    ),
    case(
        "expired-org-rule-falls-to-mode",
        row(1, ORG_MAIL, "allow", "domain", "x.example", expires_at=NOW - 1),
        sender=email("a@x.example"),
        recipient=WL,
        verdict="drop",
        rule=None,
    ),
    case(
        "unexpired-rule-applies",
        row(1, MB, "block", "exact_email", "a@x.example", expires_at=NOW + 1),
        row(2, MB, "mute", "domain", "x.example"),
        sender=email("a@x.example"),
        recipient=MB,
        verdict="drop",
        rule=1,
    ),
    case(
        "expires-at-now-is-expired",
        row(1, MB, "block", "exact_email", "a@x.example", expires_at=NOW),
        sender=email("a@x.example"),
        recipient=MB,
        verdict="deliver",
        rule=None,
    ),
    case(
        "expired-longer-prefix-falls-to-shorter",
        row(1, NUM, "mute", "number_prefix", "+1"),
        row(2, NUM, "block", "number_prefix", "+1900", expires_at=NOW),
        sender=phone("+19005551234"),
        recipient=NUM,
        family="phone",
        verdict="mute",
        rule=1,
    ),
    case(
        "expired-exact-number-falls-to-prefix",
        row(1, NUM, "allow", "exact_number", "+19005551234", expires_at=NOW - 60),
        row(2, ORG_PHONE, "block", "number_prefix", "+1900"),
        sender=phone("+19005551234"),
        recipient=NUM,
        family="phone",
        verdict="drop",
        rule=2,
    ),
    # 6. shadow
    case(
        "shadow-block-delivers-with-would-drop",
        row(1, SH, "block", "domain", "x.example"),
        sender=email("a@x.example"),
        recipient=SH,
        verdict="deliver",
        rule=1,
        would_drop=True,
        action="block",
    ),
    case(
        "shadow-whitelist-default-delivers-with-would-drop",
        sender=email("a@x.example"),
        recipient=SHW,
        verdict="deliver",
        rule=None,
        would_drop=True,
        mode="whitelist",
    ),
    case(
        "shadow-mute-stays-mute",
        row(1, SH, "mute", "domain", "x.example"),
        sender=email("a@x.example"),
        recipient=SH,
        verdict="mute",
        rule=1,
    ),
    case(
        "shadow-org-block-delivers",
        row(1, ORG_MAIL, "block", "domain", "x.example"),
        sender=email("a@x.example"),
        recipient=SH,
        verdict="deliver",
        rule=1,
        would_drop=True,
    ),
    # mail authentication
    case(
        "unauthenticated-allow-ignored-falls-to-whitelist-drop",
        row(1, WL, "allow", "exact_email", "a@x.example"),
        sender=email("a@x.example"),
        recipient=WL,
        authenticated=False,
        verdict="drop",
        rule=None,
        unauthenticated_allow=True,
    ),
    case(
        "authenticated-allow-delivers",
        row(1, WL, "allow", "exact_email", "a@x.example"),
        sender=email("a@x.example"),
        recipient=WL,
        verdict="deliver",
        rule=1,
    ),
    case(
        "unauthenticated-allow-falls-to-next-candidate",
        row(1, MB, "allow", "exact_email", "a@x.example"),
        row(2, ORG_MAIL, "allow", "domain", "x.example"),
        row(3, MB, "mute", "domain", "example"),
        sender=email("a@x.example"),
        recipient=MB,
        authenticated=False,
        verdict="mute",
        rule=3,
        unauthenticated_allow=True,
    ),
    case(
        "unauthenticated-losing-allow-sets-no-flag",
        row(1, MB, "block", "exact_email", "a@x.example"),
        row(2, MB, "allow", "domain", "x.example"),
        sender=email("a@x.example"),
        recipient=MB,
        authenticated=False,
        verdict="drop",
        rule=1,
        unauthenticated_allow=False,
    ),
    case(
        "unauthenticated-allow-ignored-envelope-block-decides",
        row(1, MB, "allow", "exact_email", "a@x.example"),
        row(2, MB, "block", "domain", "spam.example"),
        sender=email("a@x.example"),
        envelope=email("b@spam.example"),
        recipient=MB,
        authenticated=False,
        verdict="drop",
        rule=2,
        unauthenticated_allow=True,
    ),
    case(
        "unauthenticated-block-still-applies",
        row(1, MB, "block", "domain", "x.example"),
        sender=email("a@x.example"),
        recipient=MB,
        authenticated=False,
        verdict="drop",
        rule=1,
    ),
    case(
        "phone-allow-needs-no-authentication",
        row(1, NWL, "allow", "exact_number", "+33612345678"),
        sender=phone("+33612345678"),
        recipient=NWL,
        family="phone",
        authenticated=False,
        verdict="deliver",
        rule=1,
    ),
    # envelope sender
    case(
        "envelope-block-matches-while-from-is-fine",
        row(1, MB, "block", "domain", "spam.example"),
        sender=email("ceo@good.example"),
        envelope=email("bounce@spam.example"),
        recipient=MB,
        verdict="drop",
        rule=1,
    ),
    case(
        "envelope-mute-matches",
        row(1, ORG_MAIL, "mute", "exact_email", "b@spam.example"),
        sender=email("ceo@good.example"),
        envelope=email("b@spam.example"),
        recipient=MB,
        verdict="mute",
        rule=1,
    ),
    case(
        "envelope-cannot-satisfy-allow",
        row(1, WL, "allow", "domain", "good.example"),
        sender=email("x@forged.example"),
        envelope=email("b@good.example"),
        recipient=WL,
        verdict="drop",
        rule=None,
    ),
    case(
        "envelope-more-specific-block-beats-from-allow",
        row(1, MB, "allow", "domain", "good.example"),
        row(2, MB, "block", "exact_email", "b@bad.example"),
        sender=email("x@good.example"),
        envelope=email("b@bad.example"),
        recipient=MB,
        verdict="drop",
        rule=2,
    ),
    case(
        "from-more-specific-allow-beats-envelope-block",
        row(1, MB, "allow", "exact_email", "x@good.example"),
        row(2, MB, "block", "domain", "bad.example"),
        sender=email("x@good.example"),
        envelope=email("b@bad.example"),
        recipient=MB,
        verdict="deliver",
        rule=1,
    ),
    case(
        "envelope-invalid-matches-invalid-rule",
        row(1, MB, "block", "invalid", "invalid"),
        sender=email("x@good.example"),
        envelope=INVALID,
        recipient=MB,
        verdict="drop",
        rule=1,
    ),
    # tokens
    case(
        "token-matched-by-same-exact-number",
        row(1, NUM, "block", "exact_number", "acmebank"),
        sender=token("acmebank"),
        recipient=NUM,
        family="phone",
        verdict="drop",
        rule=1,
    ),
    case(
        "token-not-matched-by-other-token",
        row(1, NUM, "block", "exact_number", "acmebank"),
        sender=token("acmebank2"),
        recipient=NUM,
        family="phone",
        verdict="deliver",
        rule=None,
    ),
    case(
        "token-never-matched-by-prefix",
        row(1, NUM, "block", "number_prefix", "+1"),
        row(2, NUM, "block", "number_prefix", "+12"),
        sender=token("12345"),
        recipient=NUM,
        family="phone",
        verdict="deliver",
        rule=None,
    ),
    case(
        "sip-token-exact",
        row(1, ORG_PHONE, "mute", "exact_number", "sip:bob@x.example"),
        sender=token("sip:bob@x.example"),
        recipient=NUM,
        family="phone",
        verdict="mute",
        rule=1,
    ),
    # family isolation
    case(
        "org-mail-list-never-consulted-for-phone",
        row(1, ORG_MAIL, "block", "exact_number", "+33612345678"),
        sender=phone("+33612345678"),
        recipient=NUM,
        family="phone",
        verdict="deliver",
        rule=None,
    ),
    case(
        "org-phone-list-never-consulted-for-mail",
        row(1, ORG_PHONE, "block", "invalid", "invalid"),
        sender=INVALID,
        recipient=MB,
        verdict="deliver",
        rule=None,
    ),
    case(
        "mailbox-recipient-with-phone-family-is-unknown",
        row(1, MB, "block", "exact_number", "+33612345678"),
        sender=phone("+33612345678"),
        recipient=MB,
        family="phone",
        phone_mode="blacklist",
        verdict="deliver",
        rule=None,
    ),
]


@pytest.mark.parametrize("c", CASES)
def test_decide(c: Case) -> None:
    """Each SPEC §3 rule gives the documented verdict, rule and flags."""
    rs = compile_rules(TARGETS, c.rows, mail_mode=c.mail_mode, phone_mode=c.phone_mode)
    d = decide(
        rs,
        c.sender,
        c.recipient,
        c.family,
        now=NOW,
        authenticated=c.authenticated,
        envelope=c.envelope,
    )
    assert (d.verdict, d.rule) == (c.verdict, c.rule)
    assert d.reason == ("mode_default" if c.rule is None else "rule")
    assert d.would_drop is c.would_drop
    assert d.unauthenticated_allow is c.unauthenticated_allow
    assert (d.sender, d.recipient, d.family) == (c.sender.value, c.recipient, c.family)
    if c.mode is not None:
        assert d.mode == c.mode
    if c.action is not None:
        assert d.action == c.action
    if c.rule is None:
        assert d.action is None


def test_decision_fields_for_rule() -> None:
    """A rule decision carries the rule id, its action, reason "rule" and the target's mode."""
    rs = compile_rules(TARGETS, [row(7, WL, "mute", "domain", "x.example")])
    d = decide(rs, email("a@x.example"), WL, "mail", now=NOW)
    assert d == Decision(
        verdict="mute",
        rule=7,
        reason="rule",
        mode="whitelist",
        sender="a@x.example",
        recipient=WL,
        family="mail",
        action="mute",
    )


def test_ruleset_accessors() -> None:
    """A RuleSet exposes version, rule count, modes and targets, and cannot be changed."""
    rows = [row(1, MB, "block", "domain", "x.example"), row(2, ORG_PHONE, "mute", "anonymous", "")]
    rs = compile_rules(TARGETS, rows, mail_mode="whitelist", phone_mode="blacklist", version=9)
    assert (rs.version, rs.rule_count, rs.mail_mode, rs.phone_mode) == (
        9,
        2,
        "whitelist",
        "blacklist",
    )
    assert rs.target(MB) == TARGETS[0]
    assert rs.target(UNKNOWN_MB) is None
    with pytest.raises(AttributeError):
        rs.version = 10  # type: ignore[misc]


def test_compile_keeps_nothing_of_the_rows() -> None:
    """A compiled RuleSet decides the same after its input rows are mutated or dropped."""
    rows = [row(1, MB, "block", "domain", "x.example")]
    rs = compile_rules(TARGETS, rows)
    rows.clear()
    assert decide(rs, email("a@x.example"), MB, "mail", now=NOW).verdict == "drop"


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(row(1, MB, "ban", "domain", "x.example"), id="unknown-action"),  # type: ignore[arg-type]
        pytest.param(row(1, MB, "block", "regex", "x.*"), id="unknown-match-type"),  # type: ignore[arg-type]
        pytest.param(row(-1, MB, "block", "domain", "x.example"), id="negative-id"),
    ],
)
def test_compile_refuses_bad_rows(bad: SnapshotRule) -> None:
    """A row the compiler cannot represent is refused rather than silently mis-decided."""
    with pytest.raises(ValueError):
        compile_rules(TARGETS, [bad])


# --- replace_scopes ----------------------------------------------------------------------


def test_replace_scopes_recompiles_only_the_given_scopes() -> None:
    """replace_scopes swaps in the given scopes' rows and shares every other scope's
    compiled data with the old RuleSet, which is left as it was."""
    rows = [
        row(1, MB, "block", "domain", "x.example"),
        row(2, WL, "allow", "exact_email", "a@y.example"),
        row(3, ORG_MAIL, "mute", "domain", "z.example"),
        row(4, ORG_PHONE, "block", "number_prefix", "+1900"),
    ]
    old = compile_rules(TARGETS, rows, version=1)
    new = old.replace_scopes(
        [mailbox(MB)], {MB: [row(5, MB, "mute", "domain", "x.example")]}, version=2
    )
    assert (new.version, new.rule_count) == (2, 4)
    assert new._scopes[WL] is old._scopes[WL]
    assert new._scopes[ORG_MAIL] is old._scopes[ORG_MAIL]
    assert new._entries[WL] is old._entries[WL]
    assert decide(new, email("a@x.example"), MB, "mail", now=NOW).verdict == "mute"
    assert decide(old, email("a@x.example"), MB, "mail", now=NOW).verdict == "drop"
    # An org list change reaches every recipient of its family, known or not.
    newer = new.replace_scopes(
        [], {ORG_PHONE: [row(6, ORG_PHONE, "mute", "anonymous", "")]}, version=3
    )
    assert newer.rule_count == 4
    assert newer._scopes[MB] is new._scopes[MB]
    # Entries do not point at the org list: they are shared too.
    assert newer._entries[NUM] is new._entries[NUM]
    for recipient in (NUM, NWL, UNKNOWN_NUM):
        assert decide(newer, phone("+19005550000"), recipient, "phone", now=NOW).rule is None
        assert decide(newer, ANON, recipient, "phone", now=NOW).verdict == "mute"


def test_replace_scopes_applies_target_changes() -> None:
    """Targets given are the changed scopes' targets as they now are: a changed scope
    whose target is not given has lost it; a target may change without its rules."""
    rows = [row(1, MB, "block", "domain", "x.example"), row(2, NUM, "block", "anonymous", "")]
    rs = compile_rules(TARGETS, rows, mail_mode="whitelist", version=1)
    # Settings only: mode and enforce change, the rule stays.
    rs = rs.replace_scopes([mailbox(MB, "whitelist", enforce=False)], {}, version=2)
    shadow = decide(rs, email("a@x.example"), MB, "mail", now=NOW)
    assert (shadow.verdict, shadow.would_drop, shadow.mode, shadow.rule) == (
        "deliver",
        True,
        "whitelist",
        1,
    )
    # Deleted: its scope is empty and the recipient is unknown (the default mode).
    rs = rs.replace_scopes([], {MB: []}, version=3)
    assert rs.target(MB) is None and rs.rule_count == 1
    gone = decide(rs, email("a@x.example"), MB, "mail", now=NOW)
    assert (gone.verdict, gone.reason, gone.mode) == ("drop", "mode_default", "whitelist")
    # Created again, with a rule.
    rs = rs.replace_scopes([mailbox(MB)], {MB: [row(3, MB, "mute", "invalid", "")]}, version=4)
    assert rs.target(MB) == mailbox(MB) and rs.rule_count == 2
    assert decide(rs, INVALID, MB, "mail", now=NOW).verdict == "mute"


def test_replace_scopes_refuses_rows_under_another_scope() -> None:
    rs = compile_rules(TARGETS, [])
    with pytest.raises(ValueError, match="scope"):
        rs.replace_scopes([], {MB: [row(1, WL, "block", "domain", "x.example")]}, version=1)


# --- scopes_matching ---------------------------------------------------------------------

MATCH_ROWS = (
    row(1, ORG_MAIL, "block", "domain", "x.example"),
    row(2, MB, "allow", "exact_email", "a@x.example"),
    row(3, MB, "block", "domain", "x.example"),
    row(4, WL, "mute", "domain", "example"),
    row(5, WL, "block", "domain", "x.example", expires_at=NOW),
    row(6, "orphan@ours.example", "block", "domain", "other.example"),
    row(7, NUM, "block", "exact_number", "+33612345678"),
    row(8, ORG_PHONE, "allow", "number_prefix", "+33"),
    row(9, NWL, "allow", "anonymous", "anonymous"),
)


@pytest.mark.parametrize(
    ("sender", "family", "expected"),
    [
        pytest.param(
            email("a@x.example"),
            "mail",
            [(ORG_MAIL, 1, "block"), (MB, 2, "allow"), (WL, 4, "mute")],
            id="org-first-then-targets-each-with-its-own-winner",
        ),
        pytest.param(email("a@nowhere.test"), "mail", [], id="no-match-no-scopes"),
        pytest.param(
            phone("+33612345678"),
            "phone",
            [(ORG_PHONE, 8, "allow"), (NUM, 7, "block")],
            id="phone-scopes",
        ),
        pytest.param(ANON, "phone", [(NWL, 9, "allow")], id="anonymous"),
        pytest.param(email("a@x.example"), "phone", [], id="other-family-scopes-excluded"),
    ],
)
def test_scopes_matching(
    sender: Sender, family: Family, expected: list[tuple[str, int, Action]]
) -> None:
    """Every scope of the family in which the sender matches a live rule, with its winner."""
    rs = compile_rules(TARGETS, MATCH_ROWS)
    assert scopes_matching(rs, sender, family, now=NOW) == expected


# --- redundant_rule_ids ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("own", "org", "mode", "expected"),
    [
        pytest.param(
            (row(1, WL, "block", "exact_email", "a@x.example"),),
            (),
            "whitelist",
            [1],
            id="whitelist-lone-block-redundant",
        ),
        pytest.param(
            (
                row(1, WL, "block", "exact_email", "a@x.example"),
                row(2, WL, "allow", "domain", "x.example"),
            ),
            (),
            "whitelist",
            [],
            id="whitelist-block-inside-allowed-domain-kept",
        ),
        pytest.param(
            (row(1, WL, "block", "exact_email", "a@x.example"),),
            (row(2, ORG_MAIL, "allow", "domain", "example"),),
            "whitelist",
            [],
            id="whitelist-org-tld-allow-keeps-block",
        ),
        pytest.param(
            (
                row(1, WL, "block", "exact_email", "a@x.example"),
                row(2, WL, "allow", "exact_email", "b@x.example"),
            ),
            (),
            "whitelist",
            [1],
            id="whitelist-allow-of-other-address-does-not-keep-block",
        ),
        pytest.param(
            (
                row(1, WL, "block", "exact_email", "a@x.example"),
                row(2, WL, "allow", "domain", "a.x.example"),
            ),
            (),
            "whitelist",
            [1],
            id="whitelist-allow-of-subdomain-does-not-cover-parent-address",
        ),
        pytest.param(
            (
                row(1, WL, "block", "domain", "x.example"),
                row(2, WL, "allow", "exact_email", "ceo@x.example"),
            ),
            (),
            "whitelist",
            [],
            id="whitelist-exact-allow-inside-blocked-domain-keeps-it",
        ),
        pytest.param(
            (
                row(1, WL, "block", "domain", "x.example"),
                row(2, WL, "allow", "domain", "mail.x.example"),
            ),
            (),
            "whitelist",
            [],
            id="whitelist-subdomain-allow-keeps-blocked-domain",
        ),
        pytest.param(
            (
                row(1, WL, "block", "domain", "x.example", sub=False),
                row(2, WL, "allow", "domain", "mail.x.example"),
            ),
            (),
            "whitelist",
            [1],
            id="whitelist-subdomain-allow-outside-exact-domain-block",
        ),
        pytest.param(
            (
                row(1, WL, "block", "domain", "x.example"),
                row(2, WL, "allow", "domain", "evilx.example"),
            ),
            (),
            "whitelist",
            [1],
            id="whitelist-label-suffix-is-not-overlap",
        ),
        pytest.param(
            (row(1, WL, "block", "domain", "x.example"), row(2, WL, "mute", "domain", "example")),
            (),
            "whitelist",
            [],
            id="whitelist-mute-delivers-so-keeps-block",
        ),
        pytest.param(
            (row(1, WL, "allow", "domain", "x.example"), row(2, WL, "mute", "domain", "y.example")),
            (),
            "whitelist",
            [],
            id="whitelist-allow-and-mute-never-reported",
        ),
        pytest.param(
            (
                row(1, NWL, "block", "number_prefix", "+1900"),
                row(2, NWL, "allow", "exact_number", "+19005551234"),
                row(3, NWL, "block", "number_prefix", "+44"),
                row(4, NWL, "block", "exact_number", "+33612345678"),
            ),
            (row(5, ORG_PHONE, "allow", "number_prefix", "+336"),),
            "whitelist",
            [3],
            id="whitelist-prefixes",
        ),
        pytest.param(
            (
                row(1, NWL, "block", "anonymous", "anonymous"),
                row(2, NWL, "block", "exact_number", "acmebank"),
            ),
            (row(3, ORG_PHONE, "allow", "exact_number", "acmebank"),),
            "whitelist",
            [1],
            id="whitelist-anonymous-and-tokens",
        ),
        pytest.param(
            (
                row(1, MB, "allow", "exact_email", "a@x.example"),
                row(2, MB, "allow", "domain", "y.example"),
                row(3, MB, "allow", "invalid", "invalid"),
            ),
            (row(4, ORG_MAIL, "block", "domain", "x.example"),),
            "blacklist",
            [2, 3],
            id="blacklist-allow-redundant-without-overlapping-block",
        ),
        pytest.param(
            (
                row(1, MB, "allow", "domain", "x.example"),
                row(2, MB, "block", "exact_email", "a@y.example"),
                row(3, MB, "allow", "domain", "y.example", sub=False),
            ),
            (row(4, ORG_MAIL, "mute", "domain", "sub.x.example"),),
            "blacklist",
            [],
            id="blacklist-block-or-mute-inside-keeps-allow",
        ),
        pytest.param(
            (
                row(1, NUM, "allow", "exact_number", "+19005551234"),
                row(2, NUM, "allow", "number_prefix", "+44"),
            ),
            (row(3, ORG_PHONE, "block", "number_prefix", "+1900"),),
            "blacklist",
            [2],
            id="blacklist-prefixes",
        ),
    ],
)
def test_redundant_rule_ids(
    own: tuple[SnapshotRule, ...], org: tuple[SnapshotRule, ...], mode: Mode, expected: list[int]
) -> None:
    """Rules the new mode makes redundant: those no rule of the opposite effect overlaps."""
    assert redundant_rule_ids(own, org, mode) == expected
