"""Contacts: every (scope, normalised sender) seen in traffic, with its counts (SPEC §7).

The hot path calls ``ContactTracker.observe`` once per decided event and recipient: a dict
update in memory, no await, no store. A background task (``run``, or whoever owns the
recorder loop) calls ``flush``, which hands the aggregated counts to the store in one
batch (``Store.add_contacts``). When the store is unavailable the counts are kept and
retried on the next flush; the buffer is bounded by the number of distinct contacts it
holds, and observations of new contacts past that bound are counted in ``overflowed``.

A contact's scope is the recipient's target id when the recipient is one of our targets,
else the org-wide list of its family (``org:mail`` / ``org:phone``), the same scopes
that rules live in: a contact's ``state`` is its exact rule in that scope.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from gateway import normalise
from gateway.errors import StoreUnavailable
from gateway.models import ORG_MAIL, ORG_PHONE, Family, MatchType, Sender, Target
from gateway.store.base import ContactDelta, Store, exact_match_type

log = logging.getLogger("sendergate.contacts")

__all__ = ["ContactTracker", "contact_scope", "exact_rule_for"]


def contact_scope(target: Target | None, family: Family) -> str:
    """The scope a contact is counted in: the recipient's target (``ruleset.target(r)``)
    when it is one of ``family``, else that family's org-wide list."""
    if target is not None and (target.kind == "mailbox") == (family == "mail"):
        return target.id
    return ORG_MAIL if family == "mail" else ORG_PHONE


def exact_rule_for(sender: str, family: Family, region: str = "US") -> tuple[MatchType, str]:
    """(match_type, match_target) of the rule that matches exactly this normalised sender.

    Raises ``ValueError`` when no rule can hold it: a few senders normalise to a token
    that rules refuse (an impossible number kept as a long digit string, for instance),
    and such a contact can only be ruled on by prefix or by the mode.
    """
    match_type = exact_match_type(sender, family)
    target = normalise.normalise_rule_target(match_type, sender, region)
    if target != sender:
        raise ValueError(f"{sender!r} cannot be the target of an {match_type} rule")
    return match_type, target


class _Pending:
    """Counts of one contact since the last flush (mutable, hot path)."""

    __slots__ = (
        "count",
        "delivered",
        "dropped",
        "family",
        "first_seen",
        "last_seen",
        "muted",
        "number_type",
        "region",
    )

    def __init__(
        self, family: Family, at: datetime, number_type: str | None, region: str | None
    ) -> None:
        self.family: Family = family
        self.count = 0
        self.delivered = 0
        self.muted = 0
        self.dropped = 0
        self.first_seen = at
        self.last_seen = at
        self.number_type = number_type
        self.region = region


class ContactTracker:
    """In-memory aggregation of contact counts between flushes (see the module docs)."""

    def __init__(self, *, max_contacts: int = 100_000) -> None:
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._max = max_contacts
        self._lock = asyncio.Lock()
        self.overflowed = 0
        self.flush_errors = 0

    @property
    def pending(self) -> int:
        """Distinct contacts waiting to be flushed."""
        return len(self._pending)

    def observe(
        self, scope: str, sender: Sender, family: Family, verdict: str, at: datetime
    ) -> None:
        """Count one decided event of ``sender`` in ``scope``. ``verdict`` is what happened
        to it (``deliver``, ``mute`` or ``drop``; a shadow target's would-be drop was
        delivered). O(1), no await; phone details come from a cached lookup."""
        key = (scope, sender.value)
        p = self._pending.get(key)
        if p is None:
            if len(self._pending) >= self._max:
                self.overflowed += 1
                return
            number_type: str | None = None
            region: str | None = None
            if sender.kind == "phone":
                number_type, region = normalise.phone_info(sender.value)
            p = self._pending[key] = _Pending(family, at, number_type, region)
        else:
            if at < p.first_seen:
                p.first_seen = at
            if at > p.last_seen:
                p.last_seen = at
        p.count += 1
        if verdict == "drop":
            p.dropped += 1
        elif verdict == "mute":
            p.muted += 1
        else:
            p.delivered += 1

    def drain(self) -> list[ContactDelta]:
        """Take everything counted so far, as deltas for ``Store.add_contacts``."""
        pending, self._pending = self._pending, {}
        return [
            ContactDelta(
                scope=scope,
                sender=sender,
                family=p.family,
                count=p.count,
                delivered=p.delivered,
                muted=p.muted,
                dropped=p.dropped,
                first_seen=p.first_seen,
                last_seen=p.last_seen,
                number_type=p.number_type,
                region=p.region,
            )
            for (scope, sender), p in pending.items()
        ]

    def _restore(self, deltas: list[ContactDelta]) -> None:
        """Put unwritten deltas back, merged with what arrived meanwhile."""
        for d in deltas:
            key = (d.scope, d.sender)
            p = self._pending.get(key)
            if p is None:
                if len(self._pending) >= self._max:
                    self.overflowed += d.count
                    continue
                p = self._pending[key] = _Pending(d.family, d.first_seen, d.number_type, d.region)
            p.first_seen = min(p.first_seen, d.first_seen)
            p.last_seen = max(p.last_seen, d.last_seen)
            p.count += d.count
            p.delivered += d.delivered
            p.muted += d.muted
            p.dropped += d.dropped

    async def flush(self, store: Store) -> int:
        """Write what was counted; returns how many contacts were written. When the store
        is unavailable the counts are kept for the next flush (and 0 is returned)."""
        async with self._lock:
            deltas = self.drain()
            if not deltas:
                return 0
            try:
                await store.add_contacts(deltas)
            except StoreUnavailable as exc:
                self.flush_errors += 1
                log.warning("contact counts deferred, store unavailable: %s", exc)
                self._restore(deltas)
                return 0
            return len(deltas)

    async def run(self, store: Store, interval_s: float = 1.0) -> None:
        """Flush every ``interval_s`` for the life of the task."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.flush(store)
            except Exception:  # a bug must not stop counting for the life of the process
                log.exception("contact flush failed")
