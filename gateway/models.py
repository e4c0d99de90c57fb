"""The nouns of SenderGate: frozen, slotted dataclasses shared by every layer.

Nothing here does I/O. Timestamps are timezone-aware UTC ``datetime`` values in the
store layer and plain ``float`` epoch seconds on the hot path (``rules.decide``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, NamedTuple

Channel = Literal["email", "sms", "voice"]
Family = Literal["mail", "phone"]  # which org-wide list and which match types apply
Action = Literal["allow", "block", "mute"]
MatchType = Literal[
    "exact_email", "domain", "invalid", "exact_number", "number_prefix", "anonymous"
]
Status = Literal["active", "paused", "deleted"]
Verdict = Literal["deliver", "mute", "drop"]
Mode = Literal["blacklist", "whitelist"]
TargetKind = Literal["mailbox", "number"]
SenderKind = Literal["email", "phone", "token", "anonymous", "invalid"]

ACTIONS: tuple[Action, ...] = ("allow", "block", "mute")
MAIL_MATCH_TYPES: tuple[MatchType, ...] = ("exact_email", "domain", "invalid")
PHONE_MATCH_TYPES: tuple[MatchType, ...] = ("exact_number", "number_prefix", "anonymous")
MATCH_TYPES: tuple[MatchType, ...] = MAIL_MATCH_TYPES + PHONE_MATCH_TYPES
STATUSES: tuple[Status, ...] = ("active", "paused", "deleted")
MODES: tuple[Mode, ...] = ("blacklist", "whitelist")

# Scopes are plain strings: a mailbox address ("a@b.example"), an E.164 number
# ("+14155550100"), or one of the two org-wide lists. The same spelling is used in the
# API, the CLI's CSV files and the stores, so that nothing needs translating.
ORG_MAIL = "org:mail"
ORG_PHONE = "org:phone"
ORG_SCOPES = (ORG_MAIL, ORG_PHONE)


def family_of_scope(scope: str) -> Family:
    """Which family a scope string belongs to (mail for addresses and org:mail)."""
    if scope == ORG_MAIL or (scope != ORG_PHONE and "@" in scope):
        return "mail"
    return "phone"


def family_of_channel(channel: Channel) -> Family:
    return "mail" if channel == "email" else "phone"


def family_of_match_type(match_type: MatchType) -> Family:
    return "mail" if match_type in MAIL_MATCH_TYPES else "phone"


@dataclass(frozen=True, slots=True)
class Sender:
    """A normalised sender (or recipient) identity.

    ``value`` is what rules match against: a lowercase address with an A-label domain,
    an E.164 number, a lowercase token (short code, alphanumeric id, ``client:``/``sip:``
    identity), or the words ``anonymous`` / ``invalid``.
    """

    kind: SenderKind
    value: str
    raw: str
    domain: str | None = None  # email only: the A-label domain of ``value``
    prefix: str | None = None  # phone only: a stripped provider prefix (whatsapp, tel, ...)


@dataclass(frozen=True, slots=True)
class Target:
    """One of our recipients: a mailbox or a number, with its filter settings."""

    kind: TargetKind
    id: str  # normalised address or E.164 number; also the scope string of its rules
    filter_mode: Mode
    enforce: bool
    created_at: datetime
    updated_at: datetime
    forward_url: str | None = None  # mailbox override
    voice_url: str | None = None  # number overrides
    sms_url: str | None = None
    rate_limit: str | None = None  # "N/second|minute|hour|day"


@dataclass(frozen=True, slots=True)
class NewRule:
    """A rule as asked for, already normalised and validated, before the store numbers it."""

    scope: str
    action: Action
    match_type: MatchType
    match_target: str
    include_subdomains: bool = True
    status: Status = "active"
    expires_at: datetime | None = None
    note: str | None = None
    source: str = "api"


@dataclass(frozen=True, slots=True)
class Rule:
    id: int
    scope: str
    action: Action
    match_type: MatchType
    match_target: str
    include_subdomains: bool
    status: Status
    expires_at: datetime | None
    note: str | None
    source: str
    hits: int
    last_matched_at: datetime | None
    created_at: datetime
    updated_at: datetime


class Decision(NamedTuple):
    """The outcome of ``rules.decide``.

    ``verdict`` is what happens to the event (already ``deliver`` for a shadow target);
    ``would_drop`` records that the rules said drop but the target does not enforce.
    ``reason`` is one of ``rule``, ``mode_default``, ``rate_limited``.
    ``unauthenticated_allow`` records that an allow rule matched the From address but was
    ignored because the From domain was not authenticated.

    A NamedTuple rather than a frozen dataclass: it is built once per decision on the hot
    path, and a frozen dataclass's ``__init__`` costs about 1 µs more (bench/decide.py).
    """

    verdict: Verdict
    rule: int | None
    reason: str
    mode: Mode
    sender: str
    recipient: str
    family: Family
    action: Action | None = None  # the winning rule's action, None for mode_default
    would_drop: bool = False
    unauthenticated_allow: bool = False
