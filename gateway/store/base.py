"""The store Protocol: what every backend (SQLite, Redis) must do.

Every backend passes the same contract suite (``tests/contract/``). Rules:

* Every write of a target or a rule bumps ``version()`` in the same transaction, so that
  a replica or worker that polls (SQLite) or is told (Redis) can reload its snapshot.
  Counter updates (rule hits, contacts) and events do not bump the version.
* Timestamps are timezone-aware UTC datetimes.
* A backend that cannot reach its storage raises ``StoreUnavailable``; ``DuplicateRule``
  carries the id of the rule that holds the slot; a missing row is ``None`` / ``False``,
  never an exception.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from gateway.errors import DuplicateRule
from gateway.models import (
    Action,
    Channel,
    MatchType,
    Mode,
    NewRule,
    Rule,
    Status,
    Target,
    TargetKind,
    Verdict,
)

# The compact row the snapshot compiler needs, for *active* rules only:
# (id, scope, action, match_type, match_target, include_subdomains, expires_at epoch or None)
SnapshotRule = tuple[int, str, Action, MatchType, str, bool, float | None]


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


@dataclass(frozen=True, slots=True)
class EventFilter:
    verdict: Verdict | None = None
    target: str | None = None  # recipient
    targets: tuple[str, ...] | None = None  # restrict to these recipients (member keys)
    sender: str | None = None
    outcome: str | None = None
    since: datetime | None = None


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

    async def add_rule_hits(self, hits: Mapping[int, tuple[int, datetime]]) -> None:
        """Add counts to rules' ``hits`` and set ``last_matched_at`` (rule id → (n, at)),
        never moving it back (flushes from several workers may arrive out of order).
        Unknown rule ids are ignored."""

    # --- events ----------------------------------------------------------------------
    async def put_events(self, events: Sequence[EventRecord]) -> None:
        """Insert or replace events by id (one transaction)."""

    async def get_event(self, event_id: str) -> EventRecord | None: ...
    async def find_event(
        self, source: str, provider_event_id: str, recipient: str
    ) -> EventRecord | None:
        """The newest event for this provider id and recipient (retry dedupe)."""

    async def list_events(
        self, flt: EventFilter, *, cursor: str | None, limit: int
    ) -> tuple[list[EventRecord], str | None]:
        """Newest first. ``cursor`` is opaque; returns (page, next cursor or None). A
        cursor this store did not make raises ``BadRequest``."""

    async def purge_events(self, before: datetime) -> int:
        """Delete events received before ``before``; return how many."""
