"""The audit log through HTTP: every rule and target write through the API (actor = key
name), config declarations (actor config, only what they change), and ``GET /v1/audit``;
on both stores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.settings import MailboxDecl, NumberDecl, RuleDecl, StoreSettings
from tests.apptools import ADMIN, MEMBER, make_settings, running

MAILBOX = "sales@acme.example"
RULES = f"/v1/mailboxes/{MAILBOX}/contact-rules"


@pytest.fixture
def client(tmp_path: Path, app_store: StoreSettings) -> Iterator[TestClient]:
    with running(make_settings(tmp_path, store=app_store)) as c:
        yield c


def _ok(r: Any, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json() if status != 204 else None


def _log(c: TestClient, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = _ok(c.get("/v1/audit", params=params, headers=ADMIN))["items"]
    return items


def _summary(entries: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    return [(e["actor"], e["action"], e["scope"]) for e in reversed(entries)]


def test_every_api_write_is_audited(client: TestClient) -> None:
    """Target create, update, mode change and delete, and rule create, update, delete and
    batch creation each leave one entry with the key's name, the scope and the rule."""
    _ok(client.post("/v1/mailboxes", json={"address": MAILBOX}, headers=ADMIN), 201)
    _ok(client.patch(f"/v1/mailboxes/{MAILBOX}", json={"enforce": False}, headers=ADMIN))
    _ok(client.patch(f"/v1/mailboxes/{MAILBOX}", json={"filter_mode": "whitelist"}, headers=ADMIN))
    body = {"action": "block", "match_type": "domain", "match_target": "spam.example"}
    rule = _ok(client.post(RULES, json=body, headers=ADMIN), 201)
    _ok(client.patch(f"{RULES}/{rule['id']}", json={"action": "mute"}, headers=ADMIN))
    _ok(client.delete(f"{RULES}/{rule['id']}", headers=ADMIN), 204)
    batch = {
        "rules": [
            {**body, "scope": "org:mail"},
            {**body, "scope": "org:mail"},  # duplicate: not written, not audited
            {**body, "scope": "nobody@acme.example"},  # refused
        ]
    }
    _ok(client.post("/v1/contact-rules/batch", json=batch, headers=ADMIN))
    _ok(client.delete(f"/v1/mailboxes/{MAILBOX}", headers=ADMIN), 204)

    log = _log(client)
    assert _summary(log) == [
        ("ops", "target.create", MAILBOX),
        ("ops", "target.update", MAILBOX),
        ("ops", "target.mode_change", MAILBOX),
        ("ops", "rule.create", MAILBOX),
        ("ops", "rule.update", MAILBOX),
        ("ops", "rule.delete", MAILBOX),
        ("ops", "rule.create", "org:mail"),
        ("ops", "target.delete", MAILBOX),
    ]
    delete_target, batch_rule, delete_rule, update_rule, create_rule, mode, update, create = log
    assert create["before"] is None and create["after"]["filter_mode"] == "blacklist"
    assert (update["before"]["enforce"], update["after"]["enforce"]) == (True, False)
    assert (mode["before"]["filter_mode"], mode["after"]["filter_mode"]) == (
        "blacklist",
        "whitelist",
    )
    assert create_rule["rule"] == rule["id"] and create_rule["before"] is None
    assert create_rule["after"]["match_target"] == "spam.example"
    assert (update_rule["before"]["action"], update_rule["after"]["action"]) == ("block", "mute")
    assert (delete_rule["before"]["status"], delete_rule["after"]["status"]) == (
        "active",
        "deleted",
    )
    assert batch_rule["rule"] != rule["id"] and batch_rule["after"]["scope"] == "org:mail"
    assert delete_target["after"] is None and delete_target["before"]["rules_deleted"] == 0
    assert all(e["at"].endswith("Z") for e in log)


def test_writes_that_change_nothing_are_not_audited(client: TestClient) -> None:
    """A PATCH that leaves everything as it was, a DELETE of a deleted rule and a refused
    write add no entry."""
    _ok(client.post("/v1/mailboxes", json={"address": MAILBOX}, headers=ADMIN), 201)
    body = {"action": "block", "match_type": "domain", "match_target": "spam.example"}
    rule = _ok(client.post(RULES, json=body, headers=ADMIN), 201)
    before = len(_log(client))
    _ok(client.patch(f"/v1/mailboxes/{MAILBOX}", json={"enforce": True}, headers=ADMIN))
    _ok(client.patch(f"{RULES}/{rule['id']}", json={"action": "block"}, headers=ADMIN))
    assert client.post(RULES, json=body, headers=ADMIN).status_code == 409
    _ok(client.delete(f"{RULES}/{rule['id']}", headers=ADMIN), 204)
    _ok(client.delete(f"{RULES}/{rule['id']}", headers=ADMIN), 204)
    assert len(_log(client)) == before + 1


def test_member_writes_carry_the_member_key_name(client: TestClient) -> None:
    """A rule a member creates is audited under the member key's name."""
    _ok(client.post("/v1/mailboxes", json={"address": MAILBOX}, headers=ADMIN), 201)
    body = {"action": "block", "match_type": "domain", "match_target": "spam.example"}
    _ok(client.post(RULES, json=body, headers=MEMBER), 201)
    (entry,) = _log(client, actor="sales-agent")
    assert (entry["action"], entry["scope"]) == ("rule.create", MAILBOX)


def test_config_changes_are_audited_once(tmp_path: Path, app_store: StoreSettings) -> None:
    """Declarations in config.toml are audited with actor config when they change
    something: the first start, not a restart; a changed mode on the next start."""
    declared = (
        MailboxDecl(MAILBOX, rules=(RuleDecl("allow", "domain", "partner.example"),)),
        MailboxDecl("other@acme.example"),
    )
    settings = make_settings(
        tmp_path,
        store=app_store,
        mailboxes=declared,
        numbers=(NumberDecl("+14155550100"),),
        org_mail_rules=(RuleDecl("block", "domain", "xyz"),),
    )
    with running(settings) as c:
        first = _log(c, actor="config")
    assert sorted((e["action"], e["scope"]) for e in first) == [
        ("rule.create", "org:mail"),
        ("rule.create", MAILBOX),
        ("target.create", "+14155550100"),
        ("target.create", "other@acme.example"),
        ("target.create", MAILBOX),
    ]
    with running(settings) as c:
        assert len(_log(c, actor="config")) == len(first)
    changed = make_settings(
        tmp_path,
        store=app_store,
        mailboxes=(MailboxDecl(MAILBOX, filter_mode="whitelist"), declared[1]),
        numbers=(NumberDecl("+14155550100"),),
    )
    with running(changed) as c:
        log = _log(c, actor="config")
    assert len(log) == len(first) + 1
    assert (log[0]["action"], log[0]["scope"], log[0]["after"]["filter_mode"]) == (
        "target.mode_change",
        MAILBOX,
        "whitelist",
    )


def test_audit_filters_and_pages(client: TestClient) -> None:
    """GET /v1/audit pages newest first and filters by scope (any spelling) and actor."""
    for i in range(3):
        address = f"m{i}@acme.example"
        _ok(client.post("/v1/mailboxes", json={"address": address}, headers=ADMIN), 201)
    page = _ok(client.get("/v1/audit?limit=2&offset=1", headers=ADMIN))
    assert (page["limit"], page["offset"], page["total"]) == (2, 1, 3)
    assert [e["scope"] for e in page["items"]] == ["m1@acme.example", "m0@acme.example"]
    assert [e["scope"] for e in _log(client, scope="M2@ACME.example")] == ["m2@acme.example"]
    assert _log(client, actor="nobody") == []


@pytest.mark.parametrize("query", ["limit=0", "limit=201", "offset=-1", "who=ops", "scope=x y"])
def test_audit_query_is_validated(client: TestClient, query: str) -> None:
    """Bad paging, unknown parameters and scopes that do not normalise are 422."""
    assert client.get(f"/v1/audit?{query}", headers=ADMIN).status_code == 422


def test_audit_is_admin_only(client: TestClient) -> None:
    """Members may not read the audit log; no key is 401."""
    assert client.get("/v1/audit", headers=MEMBER).status_code == 403
    assert client.get("/v1/audit").status_code == 401
