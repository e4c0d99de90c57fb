"""The store Protocol: what every backend (SQLite, Redis) must do.

Every backend passes the same contract suite (``tests/contract/``). Rules:

* Every write of a target or a rule bumps ``version()`` in the same transaction, so that
  a replica or worker that polls (SQLite) or is told (Redis) can reload its snapshot.
  Counter updates (rule hits, contacts), contact categories, audit entries and events do
  not bump the version.
* The same transaction logs what the write changed (``changed_scopes``): for a target
  write, the target's id as a whole scope (its rules are in that scope); for a rule write,
  each rule's scope with the ids of the rules changed in it. A reader then reloads only
  those scopes (``scope_rules``), or in a large scope only those rules (``rule_states``).
* Timestamps are timezone-aware UTC datetimes.
* A backend that cannot reach its storage raises ``StoreUnavailable``; ``DuplicateRule``
  carries the id of the rule that holds the slot; a missing row is ``None`` / ``False``,
  never an exception.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal, Protocol

from gateway.errors import DuplicateRule
from gateway.models import (
    Action,
    Channel,
    Family,
    MatchType,
    Mode,
    NewRule,
    Rule,
    Status,
    Target,
    TargetKind,
    Verdict,
)

# Every store logs the scopes of its last CHANGE_LOG_KEEP versions (``changed_scopes``); a
# write that changed more than CHANGE_LOG_MAX_SCOPES scopes is logged as "too many", and
# more than CHANGE_LOG_MAX_RULES rules of one scope as that whole scope.
CHANGE_LOG_KEEP: Final = 10_000
CHANGE_LOG_MAX_SCOPES: Final = 128
CHANGE_LOG_MAX_RULES: Final = 128

# What one write changed: scope → the ids of the rules it changed there, or None for the
# whole scope (a target write, or too many rules to list).
Change = Mapping[str, tuple[int, ...] | None]

# The compact row the snapshot compiler needs, for *active* rules only:
# (id, scope, action, match_type, match_target, include_subdomains, expires_at epoch or None)
SnapshotRule = tuple[int, str, Action, MatchType, str, bool, float | None]

# One rule as ``rule_states`` reads it: (id, scope, match_type, match_target, its compact
# row when it is active, else None). A rule's scope, match_type and match_target never
# change, so they say where the rule sits in a compiled snapshot even once it is gone.
RuleState = tuple[int, str, MatchType, str, SnapshotRule | None]


@dataclass(frozen=True, slots=True)
class RuleFilter:
    """Filters for listing rules. ``None`` means "any". ``scopes`` restricts to a set of
    scope strings; ``family`` to mail or phone scopes. Deleted rules are listed only
    when ``status == "deleted"`` is asked for explicitly."""

    scopes: tuple[str, ...] | None = None
    family: str | None = None
    action: Action | None = None
    match_type: MatchType | None = None
    match_target: str | None = None
    status: Status | None = None


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One received webhook, its decision and its outcome.

    ``outcome`` is one of ``forwarded``, ``quarantined``, ``forward_failed``, ``released``,
    ``answered`` (a handshake such as the SNS subscription confirmation). ``body`` and
    ``headers`` are kept for every event so that quarantine can be released and a retry
    answered from the record; retention purges them (``purge_events``).
    """

    id: str
    source: str
    provider: str
    channel: Channel
    provider_event_id: str | None
    sender: str
    envelope_sender: str | None
    recipient: str
    verdict: Verdict
    rule: int | None
    reason: str
    mode: Mode
    would_drop: bool
    unauthenticated_allow: bool
    outcome: str
    received_at: datetime
    method: str
    path: str
    query: str
    content_type: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    forward_url: str | None = None
    forward_status: int | None = None
    response_status: int | None = None
    response_content_type: str | None = None
    response_body: bytes | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # provider details (auth results...)


#: Outcomes of an event whose application answer was delivered (a retry is answered from
#: the record instead of being forwarded again).
DELIVERED_OUTCOMES: tuple[str, ...] = ("forwarded", "released")


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """The application's answer to a delivered event, as ``delivered_answers`` reads it:
    only the columns a provider's retry is answered from, not the whole record."""

    status: int
    content_type: str | None
    body: bytes


@dataclass(frozen=True, slots=True)
class EventFilter:
    verdict: Verdict | None = None
    target: str | None = None  # recipient
    targets: tuple[str, ...] | None = None  # restrict to these recipients (member keys)
    sender: str | None = None
    outcome: str | None = None
    since: datetime | None = None


# --- contacts and audit -------------------------------------------------------------------

ContactState = Literal["blocked", "whitelisted", "muted", "unset"]
ContactSort = Literal["count", "last_seen", "first_seen"]
CONTACT_STATES: tuple[ContactState, ...] = ("blocked", "whitelisted", "muted", "unset")
CONTACT_SORTS: tuple[ContactSort, ...] = ("count", "last_seen", "first_seen")
# A contact's state is the action of its exact rule (SPEC §7).
STATE_OF_ACTION: dict[Action, ContactState] = {
    "block": "blocked",
    "allow": "whitelisted",
    "mute": "muted",
}
ACTION_OF_STATE: dict[ContactState, Action] = {v: k for k, v in STATE_OF_ACTION.items()}


def exact_match_type(sender: str, family: Family) -> MatchType:
    """The match_type of the rule that matches exactly this normalised sender: ``invalid``
    and ``anonymous`` for those words, else ``exact_email`` (mail) or ``exact_number``
    (phone numbers and tokens). A store joins contacts to rules with it."""
    if family == "mail":
        return "invalid" if sender == "invalid" else "exact_email"
    return "anonymous" if sender == "anonymous" else "exact_number"


@dataclass(frozen=True, slots=True)
class ContactDelta:
    """Counts to add to one contact (a scope and a normalised sender), as aggregated in
    memory between flushes (``gateway.contacts.ContactTracker``).

    ``count`` is the total (delivered + muted + dropped). ``number_type`` / ``region``
    (phones only) replace the stored ones when ``number_type`` is given."""

    scope: str
    sender: str
    family: Family
    count: int
    delivered: int
    muted: int
    dropped: int
    first_seen: datetime
    last_seen: datetime
    number_type: str | None = None
    region: str | None = None


@dataclass(frozen=True, slots=True)
class Contact:
    """A (scope, normalised sender) pair seen in traffic (SPEC §6, §7).

    ``rule_id`` is the non-deleted exact rule of this sender in this scope (the one that
    holds the slot: active, paused or expired), or ``None``. ``state`` is that rule's
    action when the rule is in force (active and not expired), else ``unset``."""

    scope: str
    sender: str
    family: Family
    state: ContactState
    rule_id: int | None
    count: int
    delivered: int
    muted: int
    dropped: int
    first_seen: datetime
    last_seen: datetime
    category: str | None = None
    number_type: str | None = None
    region: str | None = None


@dataclass(frozen=True, slots=True)
class ContactFilter:
    """Filters for listing contacts; ``None`` means "any". ``scopes`` restricts to a set
    of scope strings (an empty tuple lists nothing)."""

    scopes: tuple[str, ...] | None = None
    family: Family | None = None
    state: ContactState | None = None


@dataclass(frozen=True, slots=True)
class NewAudit:
    """One change to record: who (``actor``: an API key name, ``config``,
    ``review:POLICY``) did what (``action`` such as ``rule.create``, ``target.update``)
    to which scope and rule, with JSON-ready pictures of before and after."""

    at: datetime
    actor: str
    action: str
    scope: str | None = None
    rule_id: int | None = None
    before: Mapping[str, Any] | None = None
    after: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    scope: str | None
    rule_id: int | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class Store(Protocol):
    """Storage for targets, rules and events. All methods are coroutines so that the
    Redis backend fits; the SQLite backend runs its queries on one worker thread."""

    name: str  # "sqlite" or "redis": shown by /readyz

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` when the store cannot answer."""

    async def version(self) -> int:
        """A number that grows on every target or rule write, in any process."""

    # --- targets -------------------------------------------------------------------
    async def list_targets(
        self, kind: TargetKind, *, ids: Sequence[str] | None = None, limit: int, offset: int
    ) -> tuple[list[Target], int]:
        """Newest first; ``ids`` restricts to those targets. Returns (page, total)."""

    async def all_targets(self) -> list[Target]: ...
    async def get_target(self, kind: TargetKind, target_id: str) -> Target | None: ...
    async def create_target(self, target: Target) -> Target:
        """Raise ``Conflict`` if a target with this kind and id exists."""

    async def update_target(
        self, kind: TargetKind, target_id: str, changes: Mapping[str, Any]
    ) -> Target | None:
        """Apply ``changes`` (field → value, already validated) and bump ``updated_at``.
        Only ``filter_mode``, ``enforce``, ``forward_url``, ``voice_url``, ``sms_url`` and
        ``rate_limit`` may change; another field raises ``ValueError``."""

    async def delete_target(self, kind: TargetKind, target_id: str) -> bool:
        """Delete the target and mark its rules deleted; False if there was no target."""

    # --- rules ---------------------------------------------------------------------
    async def create_rule(self, rule: NewRule) -> Rule:
        """Raise ``DuplicateRule`` when the (scope, match_type, match_target) slot is held
        by a non-deleted rule."""

    async def create_rules(self, rules: Sequence[NewRule]) -> list[Rule | DuplicateRule]:
        """Batch create in one transaction; each item is the new rule or the duplicate."""

    async def get_rule(self, rule_id: int) -> Rule | None: ...
    async def update_rule(self, rule_id: int, changes: Mapping[str, Any]) -> Rule | None:
        """Change action, status, expires_at or note; bumps ``updated_at``. Another field
        raises ``ValueError``; bringing a deleted rule back into a slot that another rule
        now holds raises ``DuplicateRule``."""

    async def delete_rule(self, rule_id: int) -> Rule | None:
        """Mark the rule deleted (it frees its slot); return it, or None if unknown."""

    async def list_rules(
        self, flt: RuleFilter, *, limit: int, offset: int
    ) -> tuple[list[Rule], int]:
        """Newest first (created_at, then id, descending). Returns (page, total)."""

    async def snapshot_rules(self) -> tuple[int, list[Target], list[SnapshotRule]]:
        """(version, all targets, active rules as compact rows), read consistently."""

    async def scope_rules(
        self, scopes: Sequence[str]
    ) -> tuple[int, list[Target], dict[str, list[SnapshotRule]]]:
        """What ``snapshot_rules`` says about some scopes only: (version, the targets whose
        id is one of ``scopes``, each scope's active rules as compact rows). Every scope
        asked for is a key of the dict, with an empty list when it holds no active rule.

        The version is read before the rows: every write it counts is in them. A write
        that lands during the read may be partly in them; its version is larger, so the
        caller, who hears of that write, reads its scopes again."""

    async def changed_scopes(self, since: int) -> tuple[int, dict[int, Change | None]] | None:
        """The current version and, for each version after ``since`` up to it, what that
        write changed (a ``Change``: scope → rule ids, or None for the whole scope; the
        whole ``Change`` is None for a write of more than ``CHANGE_LOG_MAX_SCOPES``
        scopes). ``None`` when the store cannot list every one of those versions: its
        change log does not reach back that far (it keeps the last ``CHANGE_LOG_KEEP``),
        or ``since`` is ahead of the store (restored from a backup). The caller then
        reloads everything."""

    async def rule_states(self, ids: Sequence[int]) -> tuple[int, list[RuleState]]:
        """(version, the state of each of these rules that exists, in any order). As for
        ``scope_rules``, the version is read before the rules."""

    async def add_rule_hits(self, hits: Mapping[int, tuple[int, datetime]]) -> None:
        """Add counts to rules' ``hits`` and set ``last_matched_at`` (rule id → (n, at)),
        never moving it back (flushes from several workers may arrive out of order).
        Unknown rule ids are ignored."""

    # --- events ----------------------------------------------------------------------
    async def put_events(self, events: Sequence[EventRecord]) -> None:
        """Insert or replace events by id (one transaction), except that a delivered
        record (outcome in ``DELIVERED_OUTCOMES``) is never replaced by an undelivered
        one: replicas handling retries of one event may write in either order."""

    async def get_event(self, event_id: str) -> EventRecord | None: ...
    async def delivered_answers(self, event_ids: Sequence[str]) -> dict[str, StoredAnswer]:
        """The stored answers of those of ``event_ids`` that were delivered (outcome in
        ``DELIVERED_OUTCOMES`` with a response status); the others are left out. One
        round trip for many ids: the relay path asks this for every first delivery."""
        ...

    def delivered_answers_nowait(self, event_ids: Sequence[str]) -> dict[str, StoredAnswer] | None:
        """The same, read without waiting and without leaving the calling thread, when
        this store can (SQLite: a local read-only connection); None when it cannot (then
        use ``delivered_answers``). Never raises for an unavailable store."""
        ...

    async def list_events(
        self, flt: EventFilter, *, cursor: str | None, limit: int
    ) -> tuple[list[EventRecord], str | None]:
        """Newest first. ``cursor`` is opaque; returns (page, next cursor or None). A
        cursor this store did not make raises ``BadRequest``."""

    async def purge_events(self, before: datetime) -> int:
        """Delete events received before ``before``; return how many."""

    async def count_events(self, outcome: str) -> int:
        """How many stored events have this ``outcome`` now (``quarantined``: the events
        held in quarantine). A replaced event counts under its new outcome only (a
        release moves it to ``released``) and a purged one not at all. Cheap: an index
        count, not a scan of the events (it feeds a gauge refreshed every few seconds)."""

    # --- contacts --------------------------------------------------------------------
    async def add_contacts(self, deltas: Sequence[ContactDelta]) -> None:
        """Upsert contacts in one transaction: add the counts, keep the earliest
        ``first_seen`` and the latest ``last_seen`` (flushes from several workers may
        arrive out of order), set ``number_type`` and ``region`` when ``number_type`` is
        given. A new contact starts with no category."""

    async def list_contacts(
        self,
        flt: ContactFilter,
        *,
        sort: ContactSort = "count",
        descending: bool = True,
        limit: int,
        offset: int,
    ) -> tuple[list[Contact], int]:
        """One page sorted by ``sort`` (ties by scope, then sender, ascending), and the
        total that matches ``flt``."""

    async def get_contact(self, scope: str, sender: str) -> Contact | None: ...
    async def set_contact_category(
        self, scope: str, sender: str, category: str | None
    ) -> Contact | None:
        """Set (or clear, with ``None``) the contact's category; None if unknown."""

    # --- audit -------------------------------------------------------------------------
    async def add_audit(self, entries: Sequence[NewAudit]) -> None:
        """Append audit entries in one transaction; each gets a new, growing id."""

    async def list_audit(
        self, *, scope: str | None = None, actor: str | None = None, limit: int, offset: int
    ) -> tuple[list[AuditEntry], int]:
        """Newest first (``at``, then id, descending), optionally only one scope or one
        actor. Returns (page, total)."""
