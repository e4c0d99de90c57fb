"""``/openapi.json``: the admin API's OpenAPI 3.1 description, built from the same
``Field`` tables that validate requests (``gateway.http.admin``)."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.http import admin, contacts, events
from gateway.http.validate import Field


def _schema(field: Field) -> dict[str, Any]:
    out: dict[str, Any]
    if field.kind == "bool":
        out = {"type": "boolean"}
    elif field.kind == "int":
        out = {"type": "integer"}
        if field.minimum is not None:
            out["minimum"] = field.minimum
        if field.maximum is not None:
            out["maximum"] = field.maximum
    else:
        out = {"type": "string", "maxLength": field.max_length}
        if field.choices:
            out["enum"] = list(field.choices)
        if field.kind == "datetime":
            out["format"] = "date-time"
        elif field.kind == "url":
            out["format"] = "uri"
        elif field.kind == "rate":
            out["pattern"] = r"^[1-9][0-9]{0,8}/(second|minute|hour|day)$"
    if field.nullable:
        out["type"] = [out["type"], "null"]
    if field.description:
        out["description"] = field.description
    return out


def _object(spec: Mapping[str, Field]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {name: _schema(f) for name, f in spec.items()},
        "required": [name for name, f in spec.items() if f.required],
    }


def _params(spec: Mapping[str, Field]) -> list[dict[str, Any]]:
    return [
        {"name": n, "in": "query", "required": f.required, "schema": _schema(f)}
        for n, f in spec.items()
    ]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    str(code): {
        "description": text,
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }
    for code, text in (
        (400, "malformed request"),
        (401, "missing or invalid API key"),
        (403, "the key may not do this"),
        (404, "not found"),
        (409, "conflict"),
        (413, "body too large"),
        (415, "not JSON"),
        (422, "invalid value"),
    )
}


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {**responses, **_ERRORS}, **extra}


def _body(spec: Mapping[str, Field]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _object(spec)}}}


def _list_of(name: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": _ref(name)},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
            "total": {"type": "integer"},
        },
    }


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def build_openapi() -> dict[str, Any]:
    nullable_str = {"type": ["string", "null"]}
    ts = {"type": "string", "format": "date-time"}
    schemas: dict[str, Any] = {
        "Problem": {
            "type": "object",
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "existing_rule_id": {"type": "integer"},
            },
            "required": ["type", "title", "status", "detail"],
        },
        "Mailbox": {
            "type": "object",
            "properties": {
                "address": {"type": "string"},
                "filter_mode": {"enum": ["blacklist", "whitelist"]},
                "enforce": {"type": "boolean"},
                "forward_url": nullable_str,
                "rate_limit": nullable_str,
                "created_at": ts,
                "updated_at": ts,
            },
        },
        "Number": {
            "type": "object",
            "properties": {
                "number": {"type": "string"},
                "filter_mode": {"enum": ["blacklist", "whitelist"]},
                "enforce": {"type": "boolean"},
                "voice_url": nullable_str,
                "sms_url": nullable_str,
                "rate_limit": nullable_str,
                "created_at": ts,
                "updated_at": ts,
            },
        },
        "Rule": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "scope": {"type": "string"},
                "action": {"enum": ["allow", "block", "mute"]},
                "match_type": {"type": "string"},
                "match_target": {"type": "string"},
                "include_subdomains": {"type": "boolean"},
                "status": {"enum": ["active", "paused", "deleted"]},
                "expires_at": {"type": ["string", "null"], "format": "date-time"},
                "note": nullable_str,
                "source": {"type": "string"},
                "hits": {"type": "integer"},
                "last_matched_at": {"type": ["string", "null"], "format": "date-time"},
                "created_at": ts,
                "updated_at": ts,
            },
        },
        "Decision": {
            "type": "object",
            "properties": {
                "verdict": {"enum": ["deliver", "mute", "drop"]},
                "rule": {"type": ["integer", "null"]},
                "reason": {"type": "string"},
                "mode": {"enum": ["blacklist", "whitelist"]},
                "sender": {"type": "string"},
                "recipient": {"type": "string"},
                "channel": {"type": "string"},
            },
        },
    }
    paths: dict[str, Any] = {}
    for kind, base, id_name, create, fields in (
        ("Mailbox", "/v1/mailboxes", "address", admin.MAILBOX_CREATE, admin.MAILBOX_FIELDS),
        ("Number", "/v1/numbers", "number", admin.NUMBER_CREATE, admin.NUMBER_FIELDS),
    ):
        item = f"{base}/{{{id_name}}}"
        paths[base] = {
            "get": _op(
                f"List {kind.lower()}es" if kind == "Mailbox" else "List numbers",
                {"200": _json(_list_of(kind))},
                parameters=_params(admin.PAGE_QUERY),
            ),
            "post": _op(
                f"Create a {kind.lower()} (admin)",
                {"201": _json(_ref(kind))},
                requestBody=_body(create),
            ),
        }
        paths[item] = {
            "parameters": [_path_param(id_name)],
            "get": _op(f"Get a {kind.lower()}", {"200": _json(_ref(kind))}),
            "patch": _op(
                f"Change a {kind.lower()} (admin); a filter_mode change answers with "
                "filter_mode_change_notice",
                {"200": _json(_ref(kind))},
                requestBody=_body(fields),
            ),
            "delete": _op(
                f"Delete a {kind.lower()} and its rules (admin)",
                {"204": {"description": "deleted"}},
            ),
        }
        rule_paths = [(f"{item}/contact-rules", [_path_param(id_name)])]
        if kind == "Mailbox":
            rule_paths.append(("/v1/org/mail/contact-rules", []))
        else:
            rule_paths.append(("/v1/org/phone/contact-rules", []))
        for rbase, params in rule_paths:
            paths[rbase] = {
                **({"parameters": params} if params else {}),
                "get": _op(
                    "List rules, newest first",
                    {"200": _json(_list_of("Rule"))},
                    parameters=_params(admin.RULE_LIST_QUERY),
                ),
                "post": _op(
                    "Create a rule (409 with existing_rule_id for a duplicate)",
                    {"201": _json(_ref("Rule"))},
                    requestBody=_body(admin.RULE_CREATE),
                ),
            }
            paths[f"{rbase}/{{rule_id}}"] = {
                "parameters": [*params, _path_param("rule_id")],
                "get": _op("Get a rule", {"200": _json(_ref("Rule"))}),
                "patch": _op(
                    "Change action, status, expires_at or note (admin)",
                    {"200": _json(_ref("Rule"))},
                    requestBody=_body(admin.RULE_PATCH),
                ),
                "delete": _op("Delete a rule (admin)", {"204": {"description": "deleted"}}),
            }
    paths["/v1/contact-rules"] = {
        "get": _op(
            "Every rule in every scope (admin)",
            {"200": _json(_list_of("Rule"))},
            parameters=_params(admin.ALL_RULES_QUERY),
        ),
    }
    paths["/v1/contact-rules/batch"] = {
        "post": _op(
            f"Create up to {admin.BATCH_LIMIT} rules, each with its scope (admin)",
            {"200": _json({"type": "object"})},
            requestBody={
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["rules"],
                            "properties": {
                                "rules": {
                                    "type": "array",
                                    "maxItems": admin.BATCH_LIMIT,
                                    "items": _object(admin.BATCH_RULE),
                                }
                            },
                        }
                    }
                },
            },
        ),
    }
    paths["/v1/check"] = {
        "get": _op(
            "The decision for a sender and recipient, with its explanation",
            {"200": _json(_ref("Decision"))},
            parameters=_params(admin.CHECK_QUERY),
        ),
    }
    schemas["Contact"] = {
        "type": "object",
        "properties": {
            "sender": {"type": "string"},
            "scope": {"type": "string"},
            "state": {"enum": ["blocked", "whitelisted", "muted", "unset"]},
            "count": {"type": "integer"},
            "delivered": {"type": "integer"},
            "muted": {"type": "integer"},
            "dropped": {"type": "integer"},
            "first_seen": ts,
            "last_seen": ts,
            "category": nullable_str,
            "number_type": nullable_str,
            "region": nullable_str,
        },
    }
    contact_page = {
        "type": "object",
        "properties": {
            "data": {"type": "array", "items": _ref("Contact")},
            "page": {"type": "integer"},
            "per_page": {"type": "integer"},
            "total": {"type": "integer"},
            "total_pages": {"type": "integer"},
        },
    }
    for base, params in (
        ("/v1/mailboxes/{address}/contacts", [_path_param("address")]),
        ("/v1/numbers/{number}/contacts", [_path_param("number")]),
        ("/v1/org/mail/contacts", []),
        ("/v1/org/phone/contacts", []),
    ):
        paths[base] = {
            **({"parameters": params} if params else {}),
            "get": _op(
                "Contacts seen in this scope",
                {"200": _json(contact_page)},
                parameters=_params(contacts.CONTACTS_QUERY),
            ),
        }
        paths[f"{base}/{{sender}}"] = {
            "parameters": [*params, _path_param("sender")],
            "get": _op("One contact", {"200": _json(_ref("Contact"))}),
            "put": _op(
                "Set the contact's state (writes, changes or removes its exact rule; admin)",
                {"200": _json(_ref("Contact"))},
                requestBody=_body(contacts.CONTACT_PUT),
            ),
        }
    paths["/v1/contacts"] = {
        "get": _op(
            "Contacts across every scope (admin)",
            {"200": _json(contact_page)},
            parameters=_params(contacts.ALL_CONTACTS_QUERY),
        ),
    }
    paths["/v1/review"] = {
        "post": _op(
            "Run the review policies: a dry run, or apply (admin)",
            {"200": _json({"type": "object"})},
            requestBody={
                "required": False,
                "content": {"application/json": {"schema": _object(contacts.REVIEW_BODY)}},
            },
        ),
    }
    paths["/v1/audit"] = {
        "get": _op(
            "Who changed which rule or target, newest first (admin)",
            {"200": _json({"type": "object"})},
            parameters=_params(contacts.AUDIT_QUERY),
        ),
    }
    event_list = {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"type": "object"}},
            "next_cursor": {"type": ["string", "null"]},
        },
    }
    paths["/v1/events"] = {
        "get": _op(
            "Events and quarantine, newest first",
            {"200": _json(event_list)},
            parameters=_params(events.EVENTS_QUERY),
        ),
    }
    paths["/v1/events/{event_id}"] = {
        "parameters": [_path_param("event_id")],
        "get": _op("One event with its body and headers", {"200": _json({"type": "object"})}),
    }
    paths["/v1/events/{event_id}/release"] = {
        "parameters": [_path_param("event_id")],
        "post": _op(
            "Forward a quarantined event to its application now (admin)",
            {
                "200": _json({"type": "object"}),
                "502": {
                    "description": "the application did not accept it",
                    "content": {"application/problem+json": {"schema": _ref("Problem")}},
                },
            },
        ),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "SenderGate admin API",
            "version": "1",
            "description": "Mailboxes, numbers, contact rules and decisions. "
            "Errors are application/problem+json (RFC 9457).",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}],
    }


@functools.cache
def openapi_bytes() -> bytes:
    return json.dumps(build_openapi(), separators=(",", ":")).encode()


async def openapi_json(request: Request) -> Response:
    return Response(openapi_bytes(), media_type="application/json")
