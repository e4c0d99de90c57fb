"""The admin REST API (SPEC §6): mailboxes, numbers, their contact rules, the org-wide
lists, ``/v1/contact-rules`` (+ batch) and ``/v1/check``.

Handlers are thin: authenticate, validate, call the store, record an audit entry per
rule or target written (actor: the API key's name, ``gateway.audit``), reload the
snapshot after a write (so that the next webhook and ``/v1/check`` see it), answer.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, cast

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway import audit, normalise
from gateway.errors import (
    BadRequest,
    Conflict,
    DuplicateRule,
    GatewayError,
    NotFound,
    StoreUnavailable,
    Unprocessable,
)
from gateway.http.auth import Principal
from gateway.http.context import AppState, get_state
from gateway.http.validate import Field, read_json, validate_body, validate_query
from gateway.models import (
    ACTIONS,
    MAIL_MATCH_TYPES,
    MATCH_TYPES,
    MODES,
    ORG_MAIL,
    ORG_PHONE,
    PHONE_MATCH_TYPES,
    STATUSES,
    Family,
    MatchType,
    NewRule,
    Rule,
    Target,
    TargetKind,
    family_of_match_type,
    family_of_scope,
)
from gateway.rules import decide, redundant_rule_ids, scopes_matching
from gateway.store.base import NewAudit, RuleFilter, SnapshotRule

# --- request shapes (also rendered into /openapi.json) ----------------------------------

PAGE_QUERY = {
    "limit": Field("int", minimum=1, maximum=200, description="page size, 1-200 (default 50)"),
    "offset": Field("int", minimum=0, description="items to skip (default 0)"),
}
MAILBOX_FIELDS = {
    "filter_mode": Field("str", choices=MODES),
    "enforce": Field("bool", description="false = shadow mode: decide and record, deliver all"),
    "forward_url": Field("url", nullable=True),
    "rate_limit": Field("rate", nullable=True, description="N/second|minute|hour|day per sender"),
}
MAILBOX_CREATE = {"address": Field("str", required=True, max_length=320), **MAILBOX_FIELDS}
NUMBER_FIELDS = {
    "filter_mode": Field("str", choices=MODES),
    "enforce": Field("bool", description="false = shadow mode: decide and record, deliver all"),
    "voice_url": Field("url", nullable=True),
    "sms_url": Field("url", nullable=True),
    "rate_limit": Field("rate", nullable=True, description="N/second|minute|hour|day per sender"),
}
NUMBER_CREATE = {"number": Field("str", required=True, max_length=64), **NUMBER_FIELDS}
RULE_CREATE = {
    "action": Field("str", required=True, choices=ACTIONS),
    "match_type": Field("str", required=True, choices=MATCH_TYPES),
    "match_target": Field("str", required=True, max_length=320),
    "include_subdomains": Field("bool", description="domain rules only (default true)"),
    "status": Field("str", choices=("active", "paused")),
    "expires_at": Field("datetime", nullable=True),
    "note": Field("str", nullable=True, max_length=1000),
    "source": Field("str", choices=("api", "cli")),
}
RULE_PATCH = {
    "action": Field("str", choices=ACTIONS),
    "status": Field("str", choices=("active", "paused")),
    "expires_at": Field("datetime", nullable=True),
    "note": Field("str", nullable=True, max_length=1000),
}
BATCH_RULE = {"scope": Field("str", required=True, max_length=320), **RULE_CREATE}
RULE_LIST_QUERY = {
    "action": Field("str", choices=ACTIONS),
    "match_type": Field("str", choices=MATCH_TYPES),
    "status": Field("str", choices=STATUSES),
    **PAGE_QUERY,
}
ALL_RULES_QUERY = {
    "scope": Field("str", max_length=320),
    "channel": Field("str", choices=("mail", "phone", "email", "sms", "voice")),
    "match_target": Field("str", max_length=320),
    **RULE_LIST_QUERY,
}
CHECK_QUERY = {
    "from": Field("str", required=True, max_length=1000),
    "to": Field("str", max_length=320),
    "channel": Field("str", choices=("email", "sms", "voice")),
    "authenticated": Field("bool", description="email only; default true"),
}
IMMUTABLE_RULE_FIELDS = ("match_type", "match_target", "include_subdomains", "scope", "source")
BATCH_LIMIT = 1000


# --- rendering -----------------------------------------------------------------------


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")


def target_json(t: Target) -> dict[str, Any]:
    common = {
        "filter_mode": t.filter_mode,
        "enforce": t.enforce,
        "rate_limit": t.rate_limit,
        "created_at": iso(t.created_at),
        "updated_at": iso(t.updated_at),
    }
    if t.kind == "mailbox":
        return {"address": t.id, **common, "forward_url": t.forward_url}
    return {"number": t.id, **common, "voice_url": t.voice_url, "sms_url": t.sms_url}


def rule_json(r: Rule) -> dict[str, Any]:
    return {
        "id": r.id,
        "scope": r.scope,
        "action": r.action,
        "match_type": r.match_type,
        "match_target": r.match_target,
        "include_subdomains": r.include_subdomains,
        "status": r.status,
        "expires_at": iso(r.expires_at),
        "note": r.note,
        "source": r.source,
        "hits": r.hits,
        "last_matched_at": iso(r.last_matched_at),
        "created_at": iso(r.created_at),
        "updated_at": iso(r.updated_at),
    }


def json_response(data: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode(),
        status_code=status,
        media_type="application/json",
    )


# --- helpers -------------------------------------------------------------------------

Handler = Callable[[Request], Awaitable[Response]]


async def _auth(request: Request) -> tuple[AppState, Principal]:
    state = get_state(request)
    return state, state.keys.authenticate(request)


def _mailbox_id(raw: str) -> str:
    try:
        return normalise.normalise_mailbox_address(raw)
    except ValueError as exc:
        raise NotFound(f"no mailbox {raw!r}: {exc}") from None


def _number_id(raw: str, state: AppState) -> str:
    try:
        return normalise.normalise_number(raw, state.settings.default_region)
    except ValueError as exc:
        raise NotFound(f"no number {raw!r}: {exc}") from None


def _page(q: Mapping[str, Any]) -> tuple[int, int]:
    return int(q.get("limit", 50)), int(q.get("offset", 0))


def _validate_rule(
    body: Mapping[str, Any], scope: str, state: AppState, *, where: str = ""
) -> NewRule:
    """Normalise a rule request for ``scope``; 422 when it does not fit or normalise."""
    match_type = cast(MatchType, body["match_type"])
    family = family_of_scope(scope)
    if family_of_match_type(match_type) != family:
        allowed = MAIL_MATCH_TYPES if family == "mail" else PHONE_MATCH_TYPES
        raise Unprocessable(
            f"{where}match_type: {match_type} does not apply to {family} scope {scope}; "
            f"use one of {', '.join(allowed)}",
            errors=[{"field": f"{where}match_type", "message": "wrong family for scope"}],
        )
    try:
        target = normalise.normalise_rule_target(
            match_type, body["match_target"], state.settings.default_region
        )
    except ValueError as exc:
        raise Unprocessable(
            f"{where}match_target: {exc}",
            errors=[{"field": f"{where}match_target", "message": str(exc)}],
        ) from None
    if "include_subdomains" in body and match_type != "domain":
        raise Unprocessable(
            f"{where}include_subdomains: only applies to domain rules",
            errors=[{"field": f"{where}include_subdomains", "message": "domain rules only"}],
        )
    return NewRule(
        scope=scope,
        action=body["action"],
        match_type=match_type,
        match_target=target,
        include_subdomains=bool(body.get("include_subdomains", True)),
        status=body.get("status", "active"),
        expires_at=body.get("expires_at"),
        note=body.get("note"),
        source=body.get("source", "api"),
    )


def _refuse_immutable(raw: Any) -> None:
    if isinstance(raw, dict):
        for name in IMMUTABLE_RULE_FIELDS:
            if name in raw:
                raise Unprocessable(
                    f"{name}: cannot change after creation; delete the rule and create a new one",
                    errors=[{"field": name, "message": "immutable"}],
                )


async def _written(state: AppState) -> None:
    """After a write: make this process's snapshot current before answering."""
    await state.snapshot.reload()


# --- scopes: which target (or org list) a rule path addresses ---------------------------


async def scope_of(request: Request, state: AppState, who: Principal) -> str:
    """The scope a path addresses (``{address}``, ``{number}`` or ``org/{family}``): 404
    for a target that does not exist, 403 for a key that may not use it (org lists are
    admin-only). Shared by the rule and contact paths."""
    params = request.path_params
    if "address" in params:
        tid = _mailbox_id(params["address"])
        who.require_target(tid)
        if await state.store.get_target("mailbox", tid) is None:
            raise NotFound(f"no mailbox {tid}")
        return tid
    if "number" in params:
        tid = _number_id(params["number"], state)
        who.require_target(tid)
        if await state.store.get_target("number", tid) is None:
            raise NotFound(f"no number {tid}")
        return tid
    family = params["family"]
    if family not in ("mail", "phone"):
        raise NotFound(f"no org-wide list {family!r}: use mail or phone")
    who.require_admin("the org-wide lists")
    return ORG_MAIL if family == "mail" else ORG_PHONE


async def _rule_in_scope(state: AppState, scope: str, raw_id: str) -> Rule:
    rule = await state.store.get_rule(int(raw_id)) if raw_id.isdigit() else None
    if rule is None or rule.scope != scope:
        raise NotFound(f"no rule {raw_id} in {scope}")
    return rule


# --- targets -------------------------------------------------------------------------


def _target_routes(kind: TargetKind) -> list[BaseRoute]:
    create_spec = MAILBOX_CREATE if kind == "mailbox" else NUMBER_CREATE
    patch_spec = MAILBOX_FIELDS if kind == "mailbox" else NUMBER_FIELDS
    id_field = "address" if kind == "mailbox" else "number"
    base = "/v1/mailboxes" if kind == "mailbox" else "/v1/numbers"

    def target_id(state: AppState, raw: str) -> str:
        return _mailbox_id(raw) if kind == "mailbox" else _number_id(raw, state)

    async def list_targets(request: Request) -> Response:
        state, who = await _auth(request)
        q = validate_query(request.query_params, PAGE_QUERY)
        limit, offset = _page(q)
        ids = None if who.is_admin else sorted(who.targets)
        items, total = await state.store.list_targets(kind, ids=ids, limit=limit, offset=offset)
        return json_response(
            {
                "items": [target_json(t) for t in items],
                "limit": limit,
                "offset": offset,
                "total": total,
            }
        )

    async def create_target(request: Request) -> Response:
        state, who = await _auth(request)
        who.require_admin(f"creating a {kind}")
        body = validate_body(
            await read_json(request, state.settings.server.max_admin_body_bytes), create_spec
        )
        try:
            if kind == "mailbox":
                tid = normalise.normalise_mailbox_address(body[id_field])
            else:
                tid = normalise.normalise_number(body[id_field], state.settings.default_region)
        except ValueError as exc:
            raise Unprocessable(
                f"{id_field}: {exc}", errors=[{"field": id_field, "message": str(exc)}]
            ) from None
        now = state.now()
        default_mode = (
            state.settings.mail_filter_mode
            if kind == "mailbox"
            else state.settings.phone_filter_mode
        )
        target = Target(
            kind=kind,
            id=tid,
            filter_mode=body.get("filter_mode", default_mode),
            enforce=body.get("enforce", True),
            created_at=now,
            updated_at=now,
            forward_url=body.get("forward_url"),
            voice_url=body.get("voice_url"),
            sms_url=body.get("sms_url"),
            rate_limit=body.get("rate_limit"),
        )
        created = await state.store.create_target(target)
        await audit.record(state.store, [audit.target_change(who.name, now, None, created)])
        await _written(state)
        return json_response(target_json(created), 201)

    async def get_target(request: Request) -> Response:
        state, who = await _auth(request)
        tid = target_id(state, request.path_params[id_field])
        who.require_target(tid)
        found = await state.store.get_target(kind, tid)
        if found is None:
            raise NotFound(f"no {kind} {tid}")
        return json_response(target_json(found))

    async def patch_target(request: Request) -> Response:
        state, who = await _auth(request)
        tid = target_id(state, request.path_params[id_field])
        who.require_admin(f"changing a {kind}")
        raw = await read_json(request, state.settings.server.max_admin_body_bytes)
        if isinstance(raw, dict) and id_field in raw:
            raise Unprocessable(
                f"{id_field}: cannot change; create a new {kind} instead",
                errors=[{"field": id_field, "message": "immutable"}],
            )
        changes = validate_body(raw, patch_spec)
        before = await state.store.get_target(kind, tid)
        if before is None:
            raise NotFound(f"no {kind} {tid}")
        after = await state.store.update_target(kind, tid, changes)
        if after is None:
            raise NotFound(f"no {kind} {tid}")
        if audit.target_picture(after) != audit.target_picture(before):
            await audit.record(
                state.store, [audit.target_change(who.name, state.now(), before, after)]
            )
        await _written(state)
        out = target_json(after)
        if "filter_mode" in changes and changes["filter_mode"] != before.filter_mode:
            out["filter_mode_change_notice"] = await _mode_notice(state, after)
        return json_response(out)

    async def delete_target(request: Request) -> Response:
        state, who = await _auth(request)
        tid = target_id(state, request.path_params[id_field])
        who.require_admin(f"deleting a {kind}")
        before = await state.store.get_target(kind, tid)
        _, rules_deleted = await state.store.list_rules(
            RuleFilter(scopes=(tid,)), limit=1, offset=0
        )
        if before is None or not await state.store.delete_target(kind, tid):
            raise NotFound(f"no {kind} {tid}")
        entry = audit.target_change(
            who.name, state.now(), before, None, rules_deleted=rules_deleted
        )
        await audit.record(state.store, [entry])
        await _written(state)
        return Response(status_code=204)

    return [
        Route(base, list_targets, methods=["GET"]),
        Route(base, create_target, methods=["POST"]),
        Route(f"{base}/{{{id_field}}}", get_target, methods=["GET"]),
        Route(f"{base}/{{{id_field}}}", patch_target, methods=["PATCH"]),
        Route(f"{base}/{{{id_field}}}", delete_target, methods=["DELETE"]),
    ]


def _as_row(r: Rule) -> SnapshotRule:
    exp = r.expires_at.timestamp() if r.expires_at else None
    return (r.id, r.scope, r.action, r.match_type, r.match_target, r.include_subdomains, exp)


async def _all_rules(state: AppState, flt: RuleFilter) -> list[Rule]:
    out: list[Rule] = []
    offset = 0
    while True:
        page, total = await state.store.list_rules(flt, limit=1000, offset=offset)
        out.extend(page)
        offset += len(page)
        if not page or offset >= total:
            return out


async def _mode_notice(state: AppState, target: Target) -> dict[str, Any]:
    org = ORG_MAIL if target.kind == "mailbox" else ORG_PHONE
    own = await _all_rules(state, RuleFilter(scopes=(target.id,), status="active"))
    org_rules = await _all_rules(state, RuleFilter(scopes=(org,), status="active"))
    redundant = redundant_rule_ids(
        [_as_row(r) for r in own], [_as_row(r) for r in org_rules], target.filter_mode
    )
    return {
        "new_filter_mode": target.filter_mode,
        "redundant_rule_action": "block" if target.filter_mode == "whitelist" else "allow",
        "redundant_rule_count": len(redundant),
    }


# --- rules in one scope ----------------------------------------------------------------


async def list_scope_rules(request: Request) -> Response:
    state, who = await _auth(request)
    scope = await scope_of(request, state, who)
    q = validate_query(request.query_params, RULE_LIST_QUERY)
    limit, offset = _page(q)
    flt = RuleFilter(
        scopes=(scope,),
        action=q.get("action"),
        match_type=q.get("match_type"),
        status=q.get("status"),
    )
    items, total = await state.store.list_rules(flt, limit=limit, offset=offset)
    return json_response(
        {"items": [rule_json(r) for r in items], "limit": limit, "offset": offset, "total": total}
    )


async def create_scope_rule(request: Request) -> Response:
    state, who = await _auth(request)
    scope = await scope_of(request, state, who)
    body = validate_body(
        await read_json(request, state.settings.server.max_admin_body_bytes), RULE_CREATE
    )
    rule = await state.store.create_rule(_validate_rule(body, scope, state))
    await audit.record(
        state.store, [audit.rule_change(who.name, "rule.create", state.now(), None, rule)]
    )
    await _written(state)
    return json_response(rule_json(rule), 201)


async def get_scope_rule(request: Request) -> Response:
    state, who = await _auth(request)
    scope = await scope_of(request, state, who)
    return json_response(
        rule_json(await _rule_in_scope(state, scope, request.path_params["rule_id"]))
    )


async def patch_scope_rule(request: Request) -> Response:
    state, who = await _auth(request)
    scope = await scope_of(request, state, who)
    who.require_admin("changing a rule")
    rule = await _rule_in_scope(state, scope, request.path_params["rule_id"])
    raw = await read_json(request, state.settings.server.max_admin_body_bytes)
    _refuse_immutable(raw)
    changes = validate_body(raw, RULE_PATCH)
    if rule.status == "deleted":
        raise Conflict(f"rule {rule.id} is deleted; create a new one")
    updated = await state.store.update_rule(rule.id, changes)
    if updated is None:
        raise NotFound(f"no rule {rule.id} in {scope}")
    if audit.rule_picture(updated) != audit.rule_picture(rule):
        await audit.record(
            state.store,
            [audit.rule_change(who.name, "rule.update", state.now(), rule, updated)],
        )
    await _written(state)
    return json_response(rule_json(updated))


async def delete_scope_rule(request: Request) -> Response:
    state, who = await _auth(request)
    scope = await scope_of(request, state, who)
    who.require_admin("deleting a rule")
    rule = await _rule_in_scope(state, scope, request.path_params["rule_id"])
    if rule.status != "deleted":
        deleted = await state.store.delete_rule(rule.id)
        if deleted is not None:
            await audit.record(
                state.store,
                [audit.rule_change(who.name, "rule.delete", state.now(), rule, deleted)],
            )
        await _written(state)
    return Response(status_code=204)


# --- across scopes -----------------------------------------------------------------------


async def list_all_rules(request: Request) -> Response:
    state, who = await _auth(request)
    who.require_admin("listing rules across targets")
    q = validate_query(request.query_params, ALL_RULES_QUERY)
    limit, offset = _page(q)
    family: str | None = None
    if "channel" in q:
        family = "mail" if q["channel"] in ("mail", "email") else "phone"
    scopes: tuple[str, ...] | None = None
    if "scope" in q:
        scopes = (normalise_scope(q["scope"], state),)
    match_target = q.get("match_target")
    if match_target is not None and "match_type" in q:
        # A target that does not normalise is filtered as given: it simply matches nothing.
        with contextlib.suppress(ValueError):
            match_target = normalise.normalise_rule_target(
                q["match_type"], match_target, state.settings.default_region
            )
    flt = RuleFilter(
        scopes=scopes,
        family=family,
        action=q.get("action"),
        match_type=q.get("match_type"),
        match_target=match_target,
        status=q.get("status"),
    )
    items, total = await state.store.list_rules(flt, limit=limit, offset=offset)
    return json_response(
        {"items": [rule_json(r) for r in items], "limit": limit, "offset": offset, "total": total}
    )


def normalise_scope(raw: str, state: AppState) -> str:
    text = raw.strip()
    if text.lower() in (ORG_MAIL, ORG_PHONE):
        return text.lower()
    try:
        if "@" in text:
            return normalise.normalise_mailbox_address(text)
        return normalise.normalise_number(text, state.settings.default_region)
    except ValueError as exc:
        raise Unprocessable(
            f"scope: {exc}", errors=[{"field": "scope", "message": str(exc)}]
        ) from None


async def batch_rules(request: Request) -> Response:
    state, who = await _auth(request)
    who.require_admin("batch rule creation")
    raw = await read_json(request, state.settings.server.max_admin_body_bytes)
    body = validate_body(raw, {"rules": Field("str")}) if not isinstance(raw, dict) else raw
    if set(body) != {"rules"} or not isinstance(body.get("rules"), list):
        raise Unprocessable(
            'body must be {"rules": [...]}', errors=[{"field": "rules", "message": "a list"}]
        )
    items: list[Any] = body["rules"]
    if len(items) > BATCH_LIMIT:
        raise Unprocessable(
            f"rules: at most {BATCH_LIMIT} per batch (got {len(items)})",
            errors=[{"field": "rules", "message": "too many"}],
        )
    results: list[dict[str, Any] | None] = [None] * len(items)
    pending: list[tuple[int, NewRule]] = []
    known: dict[str, bool] = {}
    for index, item in enumerate(items):
        try:
            fields = validate_body(item, BATCH_RULE, where=f"rules[{index}].")
            scope = normalise_scope(fields["scope"], state)
            if scope not in (ORG_MAIL, ORG_PHONE):
                if scope not in known:
                    kind: TargetKind = "mailbox" if "@" in scope else "number"
                    known[scope] = await state.store.get_target(kind, scope) is not None
                if not known[scope]:
                    raise NotFound(f"no target {scope}: create it first")
            pending.append((index, _validate_rule(fields, scope, state)))
        except StoreUnavailable:
            raise  # the whole batch answers 503, not "refused" item by item
        except GatewayError as exc:
            results[index] = {"index": index, "status": "refused", "reason": exc.detail}
    outcomes = await state.store.create_rules([r for _, r in pending])
    now = state.now()
    entries: list[NewAudit] = [
        audit.rule_change(who.name, "rule.create", now, None, o)
        for o in outcomes
        if isinstance(o, Rule)
    ]
    await audit.record(state.store, entries)
    for (index, _), outcome in zip(pending, outcomes, strict=True):
        if isinstance(outcome, DuplicateRule):
            results[index] = {
                "index": index,
                "status": "duplicate",
                "existing_rule_id": outcome.existing_rule_id,
            }
        else:
            results[index] = {"index": index, "status": "created", "rule": rule_json(outcome)}
    if any(isinstance(o, Rule) for o in outcomes):
        await _written(state)
    counts = {"created": 0, "duplicate": 0, "refused": 0}
    for res in results:
        assert res is not None
        counts[res["status"]] += 1
    return json_response({"items": results, **counts})


# --- check -----------------------------------------------------------------------------


async def check(request: Request) -> Response:
    state, who = await _auth(request)
    q = validate_query(request.query_params, CHECK_QUERY)
    region = state.settings.default_region
    raw_from: str = q["from"]
    channel = q.get("channel")
    raw_to = q.get("to")
    if channel is None:
        mailish = "@" in raw_from or (raw_to is not None and "@" in raw_to)
        channel = "email" if mailish else "sms"
    family: Family = "mail" if channel == "email" else "phone"
    sender = (
        normalise.normalise_email(raw_from)
        if family == "mail"
        else normalise.normalise_phone(raw_from, region)
    )
    ruleset = state.snapshot.current
    if ruleset is None:
        raise BadRequest("no rules loaded yet")
    now = state.clock()
    if raw_to is None:
        who.require_admin("checking a sender across every target")
        matches = scopes_matching(ruleset, sender, family, now=now)
        return json_response(
            {
                "sender": sender.value,
                "channel": channel,
                "scopes": [{"scope": s, "rule": rid, "action": a} for s, rid, a in matches],
            }
        )
    try:
        recipient = (
            normalise.normalise_mailbox_address(raw_to)
            if family == "mail"
            else normalise.normalise_number(raw_to, region)
        )
    except ValueError as exc:
        raise Unprocessable(f"to: {exc}", errors=[{"field": "to", "message": str(exc)}]) from None
    who.require_target(recipient)
    decision = decide(
        ruleset,
        sender,
        recipient,
        family,
        now=now,
        authenticated=bool(q.get("authenticated", True)),
    )
    return json_response(
        {
            "verdict": decision.verdict,
            "rule": decision.rule,
            "reason": decision.reason,
            "mode": decision.mode,
            "sender": decision.sender,
            "recipient": decision.recipient,
            "channel": channel,
            "action": decision.action,
            "would_drop": decision.would_drop,
            "unauthenticated_allow": decision.unauthenticated_allow,
            "known_recipient": ruleset.target(recipient) is not None,
        }
    )


def routes() -> list[BaseRoute]:
    out: list[BaseRoute] = []
    out += _target_routes("mailbox")
    out += _target_routes("number")
    for prefix in (
        "/v1/mailboxes/{address}/contact-rules",
        "/v1/numbers/{number}/contact-rules",
        "/v1/org/{family:str}/contact-rules",
    ):
        out += [
            Route(prefix, list_scope_rules, methods=["GET"]),
            Route(prefix, create_scope_rule, methods=["POST"]),
            Route(prefix + "/{rule_id}", get_scope_rule, methods=["GET"]),
            Route(prefix + "/{rule_id}", patch_scope_rule, methods=["PATCH"]),
            Route(prefix + "/{rule_id}", delete_scope_rule, methods=["DELETE"]),
        ]
    out += [
        Route("/v1/contact-rules", list_all_rules, methods=["GET"]),
        Route("/v1/contact-rules/batch", batch_rules, methods=["POST"]),
        Route("/v1/check", check, methods=["GET"]),
    ]
    return out
