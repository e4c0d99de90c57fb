"""The audit log: who changed which rule, target or mode, when, from what to what.

Actors are API key names, ``config`` (declarations applied at start-up) and
``review:POLICY`` (the review bot). Actions:

========================  ======================================================
``rule.create``           a rule was written (API, batch, contact PUT, review, config)
``rule.update``           its action, status, expiry or note changed
``rule.delete``           it was marked deleted
``target.create``         a mailbox or number was created
``target.update``         its settings changed (other than ``filter_mode``)
``target.mode_change``    its ``filter_mode`` changed (other settings may have too)
``target.delete``         it was deleted, and its rules with it (``rules_deleted``)
``contact.category``      a contact's category label changed
========================  ======================================================

``before`` and ``after`` are pictures of the thing (``None`` for what did not exist),
without counters such as ``hits`` that change on their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from gateway.models import Rule, Target
from gateway.store.base import NewAudit, Store

__all__ = [
    "record",
    "rule_change",
    "rule_picture",
    "target_change",
    "target_picture",
]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def rule_picture(r: Rule) -> dict[str, Any]:
    return {
        "id": r.id,
        "scope": r.scope,
        "action": r.action,
        "match_type": r.match_type,
        "match_target": r.match_target,
        "include_subdomains": r.include_subdomains,
        "status": r.status,
        "expires_at": _iso(r.expires_at),
        "note": r.note,
        "source": r.source,
    }


def target_picture(t: Target) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": t.kind,
        "id": t.id,
        "filter_mode": t.filter_mode,
        "enforce": t.enforce,
        "rate_limit": t.rate_limit,
    }
    if t.kind == "mailbox":
        out["forward_url"] = t.forward_url
    else:
        out["voice_url"] = t.voice_url
        out["sms_url"] = t.sms_url
    return out


def rule_change(
    actor: str, action: str, at: datetime, before: Rule | None, after: Rule | None
) -> NewAudit:
    """An audit entry for a rule write (``rule.create``, ``rule.update``, ``rule.delete``)."""
    rule = after if after is not None else before
    assert rule is not None, "a rule change needs a before or an after"
    return NewAudit(
        at=at,
        actor=actor,
        action=action,
        scope=rule.scope,
        rule_id=rule.id,
        before=None if before is None else rule_picture(before),
        after=None if after is None else rule_picture(after),
    )


def target_change(
    actor: str,
    at: datetime,
    before: Target | None,
    after: Target | None,
    **extra: Any,
) -> NewAudit:
    """An audit entry for a target write; the action follows from what changed.
    ``extra`` is added to the ``before`` picture (e.g. ``rules_deleted`` on delete)."""
    target = after if after is not None else before
    assert target is not None, "a target change needs a before or an after"
    if before is None:
        action = "target.create"
    elif after is None:
        action = "target.delete"
    elif before.filter_mode != after.filter_mode:
        action = "target.mode_change"
    else:
        action = "target.update"
    before_pic = None if before is None else {**target_picture(before), **extra}
    return NewAudit(
        at=at,
        actor=actor,
        action=action,
        scope=target.id,
        before=before_pic,
        after=None if after is None else target_picture(after),
    )


async def record(store: Store, entries: Sequence[NewAudit]) -> None:
    """Write entries (nothing for an empty list)."""
    if entries:
        await store.add_audit(entries)
