"""Contacts, review and audit endpoints (SPEC §6, §7).

* ``GET /v1/mailboxes/{address}/contacts``, ``/v1/numbers/{number}/contacts``,
  ``/v1/org/{mail|phone}/contacts`` (admin) and ``/v1/contacts`` (admin, every scope):
  ``state``, ``sort``, ``dir``, ``page``, ``per_page`` → ``{data, page, per_page, total,
  total_pages}``.
* ``GET .../contacts/{sender}``; ``PUT .../contacts/{sender}`` ``{state, category}``
  (admin) writes, changes or removes the sender's exact rule in that scope (source
  ``contact``) and sets the category label.
* ``POST /v1/review`` ``{"apply": bool}`` (admin): the review's proposals, written when
  ``apply`` is true.
* ``GET /v1/audit`` (admin): the audit log, newest first.

Members may read the contacts of their own targets; everything else here is admin-only.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, cast

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway import audit, normalise, review
from gateway.contacts import exact_rule_for
from gateway.errors import DuplicateRule, NotFound, Unprocessable
from gateway.http.admin import (
    PAGE_QUERY,
    iso,
    json_response,
    normalise_scope,
    scope_of,
)
from gateway.http.auth import Principal
from gateway.http.context import AppState, get_state
from gateway.http.validate import Field, read_json, validate_body, validate_query
from gateway.models import Family, NewRule, Rule, family_of_scope
from gateway.store.base import (
    ACTION_OF_STATE,
    CONTACT_SORTS,
    CONTACT_STATES,
    AuditEntry,
    Contact,
    ContactFilter,
    ContactSort,
    ContactState,
    NewAudit,
)

# --- request shapes -------------------------------------------------------------------

CONTACTS_QUERY = {
    "state": Field("str", choices=CONTACT_STATES),
    "sort": Field("str", choices=CONTACT_SORTS, description="default count"),
    "dir": Field("str", choices=("asc", "desc"), description="default desc"),
    "page": Field("int", minimum=1, maximum=1_000_000, description="1-based (default 1)"),
    "per_page": Field("int", minimum=1, maximum=200, description="1-200 (default 50)"),
}
ALL_CONTACTS_QUERY = {
    "scope": Field("str", max_length=320, description="a mailbox, number, org:mail, org:phone"),
    "channel": Field("str", choices=("mail", "phone", "email", "sms", "voice")),
    **CONTACTS_QUERY,
}
CONTACT_PUT = {
    "state": Field("str", choices=CONTACT_STATES, description="the sender's exact rule"),
    "category": Field("str", nullable=True, max_length=100, description="a free label"),
}
REVIEW_BODY = {"apply": Field("bool", description="write the proposals (default false)")}
AUDIT_QUERY = {
    "scope": Field("str", max_length=320),
    "actor": Field("str", max_length=200, description="an API key name, config, review:NAME"),
    **PAGE_QUERY,
}


# --- rendering -----------------------------------------------------------------------


def contact_json(c: Contact) -> dict[str, Any]:
    out: dict[str, Any] = {
        "sender": c.sender,
        "scope": c.scope,
        "state": c.state,
        "rule": c.rule_id,
        "count": c.count,
        "delivered": c.delivered,
        "muted": c.muted,
        "dropped": c.dropped,
        "first_seen": iso(c.first_seen),
        "last_seen": iso(c.last_seen),
        "category": c.category,
    }
    if c.family == "phone":
        out["number_type"] = c.number_type
        out["region"] = c.region
    return out


def audit_json(e: AuditEntry) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": iso(e.at),
        "actor": e.actor,
        "action": e.action,
        "scope": e.scope,
        "rule": e.rule_id,
        "before": e.before,
        "after": e.after,
    }


def _page_json(items: list[Contact], page: int, per_page: int, total: int) -> dict[str, Any]:
    return {
        "data": [contact_json(c) for c in items],
        "page": page,
        "per_page": per_page,
        "total": total,
        "total_pages": math.ceil(total / per_page),
    }


# --- helpers -------------------------------------------------------------------------


async def _auth(request: Request) -> tuple[AppState, Principal]:
    state = get_state(request)
    return state, state.keys.authenticate(request)


def _sender_of(raw: str, family: Family, region: str) -> str:
    """The sender in a path, normalised as the hot path normalises senders of ``family``."""
    if family == "mail":
        if raw.strip().lower() == "invalid":
            return "invalid"
        sender = normalise.normalise_email(raw)
        if sender.kind == "invalid":
            raise NotFound(f"no contact {raw[:80]!r}: not an email address")
        return sender.value
    return normalise.normalise_phone(raw, region).value


async def _list(state: AppState, q: dict[str, Any], flt: ContactFilter) -> dict[str, Any]:
    page = int(q.get("page", 1))
    per_page = int(q.get("per_page", 50))
    items, total = await state.store.list_contacts(
        flt,
        sort=cast(ContactSort, q.get("sort", "count")),
        descending=q.get("dir", "desc") == "desc",
        limit=per_page,
        offset=(page - 1) * per_page,
    )
    return _page_json(items, page, per_page, total)


def _in_force(rule: Rule, now: datetime) -> bool:
    return rule.status == "active" and (rule.expires_at is None or rule.expires_at > now)


# --- contacts ----------------------------------------------------------------------------


async def list_scope_contacts(request: Request) -> Response:
    state, who = await _auth(request)
    scope = await scope_of(request, state, who)
    q = validate_query(request.query_params, CONTACTS_QUERY)
    flt = ContactFilter(scopes=(scope,), state=q.get("state"))
    return json_response(await _list(state, q, flt))


async def list_all_contacts(request: Request) -> Response:
    state, who = await _auth(request)
    who.require_admin("listing contacts across targets")
    q = validate_query(request.query_params, ALL_CONTACTS_QUERY)
    family: Family | None = None
    if "channel" in q:
        family = "mail" if q["channel"] in ("mail", "email") else "phone"
    scopes = (normalise_scope(q["scope"], state),) if "scope" in q else None
    flt = ContactFilter(scopes=scopes, family=family, state=q.get("state"))
    return json_response(await _list(state, q, flt))


async def _contact_in_scope(request: Request, state: AppState, scope: str) -> Contact:
    sender = _sender_of(
        request.path_params["sender"], family_of_scope(scope), state.settings.default_region
    )
    contact = await state.store.get_contact(scope, sender)
    if contact is None:
        raise NotFound(f"no contact {sender} in {scope}: it has not been seen there")
    return contact


async def get_contact(request: Request) -> Response:
    state, who = await _auth(request)
    scope = await scope_of(request, state, who)
    return json_response(contact_json(await _contact_in_scope(request, state, scope)))


async def put_contact(request: Request) -> Response:
    state, who = await _auth(request)
    scope = await scope_of(request, state, who)
    who.require_admin("changing a contact")
    body = validate_body(
        await read_json(request, state.settings.server.max_admin_body_bytes), CONTACT_PUT
    )
    if not body:
        raise Unprocessable(
            "body needs state, category or both",
            errors=[{"field": "state", "message": "is required without category"}],
        )
    contact = await _contact_in_scope(request, state, scope)
    now = state.now()
    entries: list[NewAudit] = []
    if "state" in body:
        entries.extend(await _set_state(state, who, contact, body["state"], now))
    if "category" in body:
        category = (body["category"] or "").strip() or None
        if category != contact.category:
            await state.store.set_contact_category(contact.scope, contact.sender, category)
            entries.append(
                NewAudit(
                    at=now,
                    actor=who.name,
                    action="contact.category",
                    scope=contact.scope,
                    before={"sender": contact.sender, "category": contact.category},
                    after={"sender": contact.sender, "category": category},
                )
            )
    await audit.record(state.store, entries)
    if any(e.rule_id is not None for e in entries):
        await state.snapshot.reload()
    updated = await state.store.get_contact(contact.scope, contact.sender)
    if updated is None:  # deleted meanwhile: answer what we know
        updated = contact
    return json_response(contact_json(updated))


async def _set_state(
    state: AppState, who: Principal, contact: Contact, wanted: ContactState, now: datetime
) -> list[NewAudit]:
    """Make the contact's exact rule say ``wanted``: create it (source ``contact``),
    change the rule that holds the slot (back to active, without a past expiry), or
    delete it for ``unset``. Returns the audit entries of what was written."""
    try:
        match_type, target = exact_rule_for(
            contact.sender, contact.family, state.settings.default_region
        )
    except ValueError as exc:
        raise Unprocessable(
            f"state: {exc}", errors=[{"field": "state", "message": str(exc)}]
        ) from None
    store = state.store
    existing = None if contact.rule_id is None else await store.get_rule(contact.rule_id)
    if existing is not None and existing.status == "deleted":
        existing = None
    if wanted == "unset":
        if existing is None:
            return []
        deleted = await store.delete_rule(existing.id)
        if deleted is None:
            return []
        return [audit.rule_change(who.name, "rule.delete", now, existing, deleted)]
    action = ACTION_OF_STATE[wanted]
    if existing is None:
        new = NewRule(
            scope=contact.scope,
            action=action,
            match_type=match_type,
            match_target=target,
            source="contact",
        )
        try:
            created = await store.create_rule(new)
        except DuplicateRule as dup:  # written meanwhile (another process, the review)
            existing = await store.get_rule(dup.existing_rule_id)
            if existing is None:
                raise
        else:
            return [audit.rule_change(who.name, "rule.create", now, None, created)]
    if existing.action == action and _in_force(existing, now):
        return []
    changes: dict[str, Any] = {"action": action, "status": "active"}
    if existing.expires_at is not None and existing.expires_at <= now:
        changes["expires_at"] = None
    updated = await store.update_rule(existing.id, changes)
    if updated is None:
        raise NotFound(f"rule {existing.id} disappeared; try again")
    return [audit.rule_change(who.name, "rule.update", now, existing, updated)]


# --- review and audit ---------------------------------------------------------------------


async def post_review(request: Request) -> Response:
    state, who = await _auth(request)
    who.require_admin("the review")
    body: dict[str, Any] = {}
    if request.headers.get("content-length", "0") != "0":
        raw = await read_json(request, state.settings.server.max_admin_body_bytes)
        body = validate_body(raw, REVIEW_BODY)
    apply = bool(body.get("apply", False))
    now = state.now()
    result = await review.run_review(
        state.store,
        state.settings.review,
        apply=apply,
        now=now,
        region=state.settings.default_region,
    )
    if apply:
        summary = NewAudit(
            at=now,
            actor=who.name,
            action="review.apply",
            after={"proposals": len(result["proposals"]), "written": result["written"]},
        )
        await audit.record(state.store, [summary])
    if result["written"]:
        await state.snapshot.reload()
    return json_response(result)


async def list_audit(request: Request) -> Response:
    state, who = await _auth(request)
    who.require_admin("reading the audit log")
    q = validate_query(request.query_params, AUDIT_QUERY)
    limit, offset = int(q.get("limit", 50)), int(q.get("offset", 0))
    scope = normalise_scope(q["scope"], state) if "scope" in q else None
    items, total = await state.store.list_audit(
        scope=scope, actor=q.get("actor"), limit=limit, offset=offset
    )
    return json_response(
        {"items": [audit_json(e) for e in items], "limit": limit, "offset": offset, "total": total}
    )


def routes() -> list[BaseRoute]:
    out: list[BaseRoute] = []
    for prefix in (
        "/v1/mailboxes/{address}/contacts",
        "/v1/numbers/{number}/contacts",
        "/v1/org/{family:str}/contacts",
    ):
        out += [
            Route(prefix, list_scope_contacts, methods=["GET"]),
            Route(prefix + "/{sender}", get_contact, methods=["GET"]),
            Route(prefix + "/{sender}", put_contact, methods=["PUT"]),
        ]
    out += [
        Route("/v1/contacts", list_all_contacts, methods=["GET"]),
        Route("/v1/review", post_review, methods=["POST"]),
        Route("/v1/audit", list_audit, methods=["GET"]),
    ]
    return out
