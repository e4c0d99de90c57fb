"""The admin API as a client sees it through HTTP (SPEC §6), run through the app's lifespan
with the real SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.settings import MailboxDecl, NumberDecl, RuleDecl
from tests.apptools import ADMIN, MEMBER, make_settings, running

PROBLEM = "application/problem+json"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with running(make_settings(tmp_path)) as c:
        yield c


def mailbox(c: TestClient, address: str = "sales@acme.example", **fields: Any) -> Any:
    r = c.post("/v1/mailboxes", json={"address": address, **fields}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return r.json()


def number(c: TestClient, num: str = "+14155550100", **fields: Any) -> Any:
    r = c.post("/v1/numbers", json={"number": num, **fields}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return r.json()


def rule(c: TestClient, path: str, headers: dict[str, str] = ADMIN, **body: Any) -> Any:
    r = c.post(path, json=body, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


def check(c: TestClient, **params: Any) -> Any:
    r = c.get("/v1/check", params=params, headers=ADMIN)
    assert r.status_code == 200, r.text
    return r.json()


MB_RULES = "/v1/mailboxes/sales@acme.example/contact-rules"
NB_RULES = "/v1/numbers/+14155550100/contact-rules"


# --- auth and roles --------------------------------------------------------------------


def test_missing_key_is_401_problem(client: TestClient) -> None:
    """No API key: 401 with a problem+json body saying how to send one."""
    r = client.get("/v1/mailboxes")
    assert r.status_code == 401
    assert r.headers["content-type"] == PROBLEM
    assert "Authorization" in r.json()["detail"]


def test_wrong_key_is_401(client: TestClient) -> None:
    """A key that matches no configured digest is refused."""
    r = client.get("/v1/mailboxes", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    assert r.json()["detail"] == "invalid API key"


def test_x_api_key_header_works(client: TestClient) -> None:
    """The key may come in X-API-Key instead of Authorization."""
    assert client.get("/v1/mailboxes", headers={"X-API-Key": "test-admin-key"}).status_code == 200


def test_member_is_limited_to_its_targets(client: TestClient) -> None:
    """A member key lists, reads and creates rules only on the targets listed on it."""
    mailbox(client)
    mailbox(client, "other@acme.example")
    listed = client.get("/v1/mailboxes", headers=MEMBER).json()
    assert [m["address"] for m in listed["items"]] == ["sales@acme.example"]
    assert client.get("/v1/mailboxes/other@acme.example", headers=MEMBER).status_code == 403
    made = rule(
        client, MB_RULES, MEMBER, action="block", match_type="domain", match_target="spam.example"
    )
    assert client.get(f"{MB_RULES}/{made['id']}", headers=MEMBER).status_code == 200
    r = client.post(
        "/v1/mailboxes/other@acme.example/contact-rules",
        headers=MEMBER,
        json={"action": "block", "match_type": "domain", "match_target": "x.example"},
    )
    assert r.status_code == 403


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PATCH", f"{MB_RULES}/1", {"status": "paused"}),
        ("DELETE", f"{MB_RULES}/1", None),
        ("GET", "/v1/org/mail/contact-rules", None),
        (
            "POST",
            "/v1/org/phone/contact-rules",
            {"action": "block", "match_type": "anonymous", "match_target": "anonymous"},
        ),
        ("GET", "/v1/contact-rules", None),
        ("POST", "/v1/contact-rules/batch", {"rules": []}),
        ("PATCH", "/v1/mailboxes/sales@acme.example", {"filter_mode": "whitelist"}),
        ("POST", "/v1/mailboxes", {"address": "new@acme.example"}),
        ("DELETE", "/v1/numbers/+14155550100", None),
    ],
    ids=[
        "patch-rule",
        "delete-rule",
        "org-list",
        "org-create",
        "list-all",
        "batch",
        "mode-change",
        "create-target",
        "delete-target",
    ],
)
def test_member_forbidden_on_admin_only_paths(
    client: TestClient, method: str, path: str, body: Any
) -> None:
    """Admin-only operations answer 403 to a member key, even on its own targets."""
    mailbox(client)
    number(client)
    rule(client, MB_RULES, action="block", match_type="domain", match_target="spam.example")
    r = client.request(method, path, json=body, headers=MEMBER)
    assert r.status_code == 403, r.text
    assert r.headers["content-type"] == PROBLEM


# --- targets ---------------------------------------------------------------------------


def test_mailbox_is_normalised_and_found_in_any_case(client: TestClient) -> None:
    """Addresses are stored lowercase with an A-label domain and found by any spelling."""
    made = mailbox(client, "Sales.Team@BÜCHER.example")
    assert made["address"] == "sales.team@xn--bcher-kva.example"
    assert made["filter_mode"] == "blacklist" and made["enforce"] is True
    r = client.get("/v1/mailboxes/SALES.TEAM@bücher.example", headers=ADMIN)
    assert r.status_code == 200 and r.json()["address"] == made["address"]


def test_duplicate_mailbox_is_409(client: TestClient) -> None:
    """Creating the same mailbox twice is a conflict."""
    mailbox(client)
    r = client.post("/v1/mailboxes", json={"address": "SALES@acme.example"}, headers=ADMIN)
    assert r.status_code == 409 and r.headers["content-type"] == PROBLEM


def test_number_in_any_form_normalises(client: TestClient) -> None:
    """Numbers are stored E.164 and addressed with +, without +, or URL-encoded."""
    made = number(client, "+1 (415) 555-0100")
    assert made["number"] == "+14155550100"
    for path in (
        "/v1/numbers/14155550100",
        "/v1/numbers/%2B14155550100",
        "/v1/numbers/+14155550100",
    ):
        assert client.get(path, headers=ADMIN).json()["number"] == "+14155550100"


def test_target_that_does_not_normalise_is_422(client: TestClient) -> None:
    """A mailbox or number that cannot be normalised is refused with the field named."""
    r = client.post("/v1/mailboxes", json={"address": "not an address"}, headers=ADMIN)
    assert r.status_code == 422 and r.json()["detail"].startswith("address:")
    r = client.post("/v1/numbers", json={"number": "hello"}, headers=ADMIN)
    assert r.status_code == 422 and r.json()["detail"].startswith("number:")


def test_list_targets_newest_first_with_paging(client: TestClient) -> None:
    """Lists are newest first, with limit/offset and the total."""
    for i in range(5):
        mailbox(client, f"m{i}@acme.example")
    page = client.get("/v1/mailboxes?limit=2&offset=1", headers=ADMIN).json()
    assert [m["address"] for m in page["items"]] == ["m3@acme.example", "m2@acme.example"]
    assert (page["limit"], page["offset"], page["total"]) == (2, 1, 5)


@pytest.mark.parametrize("query", ["limit=0", "limit=201", "limit=x", "offset=-1"])
def test_paging_bounds_are_422(client: TestClient, query: str) -> None:
    """limit must be 1–200 and offset non-negative."""
    r = client.get(f"/v1/mailboxes?{query}", headers=ADMIN)
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM


def test_mode_change_answers_with_notice(client: TestClient) -> None:
    """Switching to whitelist reports how many block rules became redundant."""
    mailbox(client)
    rule(client, MB_RULES, action="block", match_type="exact_email", match_target="a@spam.example")
    rule(client, MB_RULES, action="block", match_type="domain", match_target="junk.example")
    rule(client, MB_RULES, action="allow", match_type="domain", match_target="spam.example")
    r = client.patch(
        "/v1/mailboxes/sales@acme.example", json={"filter_mode": "whitelist"}, headers=ADMIN
    )
    assert r.status_code == 200
    notice = r.json()["filter_mode_change_notice"]
    assert notice == {
        "new_filter_mode": "whitelist",
        "redundant_rule_action": "block",
        "redundant_rule_count": 1,
    }
    r = client.patch("/v1/mailboxes/sales@acme.example", json={"enforce": False}, headers=ADMIN)
    assert "filter_mode_change_notice" not in r.json() and r.json()["enforce"] is False


def test_delete_target_removes_it_and_its_rules(client: TestClient) -> None:
    """Deleting a mailbox answers 204; it and its rules are gone from decisions."""
    mailbox(client)
    rule(client, MB_RULES, action="block", match_type="domain", match_target="spam.example")
    assert client.delete("/v1/mailboxes/sales@acme.example", headers=ADMIN).status_code == 204
    assert client.get("/v1/mailboxes/sales@acme.example", headers=ADMIN).status_code == 404
    d = check(client, **{"from": "x@spam.example", "to": "sales@acme.example"})
    assert d["verdict"] == "deliver" and d["known_recipient"] is False


# --- rules -----------------------------------------------------------------------------


def test_rule_create_get_and_fields(client: TestClient) -> None:
    """A created rule shows every field of the resource, normalised."""
    mailbox(client)
    made = rule(
        client,
        MB_RULES,
        action="block",
        match_type="domain",
        match_target="Spam.Example.",
        note="from a complaint",
    )
    assert made["match_target"] == "spam.example"
    assert made["scope"] == "sales@acme.example"
    assert made["source"] == "api" and made["status"] == "active" and made["hits"] == 0
    assert made["include_subdomains"] is True and made["expires_at"] is None
    got = client.get(f"{MB_RULES}/{made['id']}", headers=ADMIN).json()
    assert got == made


def test_duplicate_rule_is_409_with_existing_id(client: TestClient) -> None:
    """A second rule with the same match in one scope answers 409 naming the first."""
    mailbox(client)
    first = rule(client, MB_RULES, action="block", match_type="domain", match_target="spam.example")
    r = client.post(
        MB_RULES,
        headers=ADMIN,
        json={"action": "allow", "match_type": "domain", "match_target": "SPAM.example"},
    )
    assert r.status_code == 409
    assert r.json()["existing_rule_id"] == first["id"]


def test_paused_keeps_slot_deleted_frees_it(client: TestClient) -> None:
    """A paused rule still holds its slot; a deleted one frees it."""
    mailbox(client)
    first = rule(client, MB_RULES, action="block", match_type="domain", match_target="spam.example")
    client.patch(f"{MB_RULES}/{first['id']}", json={"status": "paused"}, headers=ADMIN)
    body = {"action": "block", "match_type": "domain", "match_target": "spam.example"}
    assert client.post(MB_RULES, json=body, headers=ADMIN).status_code == 409
    assert client.delete(f"{MB_RULES}/{first['id']}", headers=ADMIN).status_code == 204
    assert client.post(MB_RULES, json=body, headers=ADMIN).status_code == 201
    deleted = client.get(f"{MB_RULES}/{first['id']}", headers=ADMIN).json()
    assert deleted["status"] == "deleted"


@pytest.mark.parametrize("field", ["match_type", "match_target", "include_subdomains", "scope"])
def test_match_fields_are_immutable(client: TestClient, field: str) -> None:
    """PATCH may not change what a rule matches."""
    mailbox(client)
    made = rule(client, MB_RULES, action="block", match_type="domain", match_target="spam.example")
    r = client.patch(f"{MB_RULES}/{made['id']}", json={field: "x"}, headers=ADMIN)
    assert r.status_code == 422 and field in r.json()["detail"]


def test_patch_changes_action_and_decision_follows(client: TestClient) -> None:
    """PATCH of the action takes effect for the very next decision."""
    mailbox(client)
    made = rule(client, MB_RULES, action="block", match_type="domain", match_target="spam.example")
    params = {"from": "x@spam.example", "to": "sales@acme.example"}
    assert check(client, **params)["verdict"] == "drop"
    r = client.patch(
        f"{MB_RULES}/{made['id']}", json={"action": "mute", "note": "n"}, headers=ADMIN
    )
    assert r.json()["action"] == "mute" and r.json()["note"] == "n"
    assert check(client, **params)["verdict"] == "mute"


def test_rule_of_other_scope_is_404(client: TestClient) -> None:
    """A rule id is only found under the scope it belongs to."""
    mailbox(client)
    mailbox(client, "other@acme.example")
    made = rule(client, MB_RULES, action="block", match_type="domain", match_target="spam.example")
    r = client.get(f"/v1/mailboxes/other@acme.example/contact-rules/{made['id']}", headers=ADMIN)
    assert r.status_code == 404
    assert client.get(f"{MB_RULES}/abc", headers=ADMIN).status_code == 404


def test_rules_on_unknown_target_are_404(client: TestClient) -> None:
    """Rules need their mailbox to exist first."""
    r = client.post(
        MB_RULES,
        headers=ADMIN,
        json={"action": "block", "match_type": "domain", "match_target": "x.example"},
    )
    assert r.status_code == 404


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (
            MB_RULES,
            {"action": "block", "match_type": "exact_number", "match_target": "+14155550123"},
            "match_type",
        ),
        (
            NB_RULES,
            {"action": "block", "match_type": "domain", "match_target": "x.example"},
            "match_type",
        ),
        (
            MB_RULES,
            {"action": "block", "match_type": "exact_email", "match_target": "nope"},
            "match_target",
        ),
        (
            NB_RULES,
            {"action": "block", "match_type": "number_prefix", "match_target": "+1a"},
            "match_target",
        ),
        (
            MB_RULES,
            {"action": "block", "match_type": "invalid", "match_target": "x"},
            "match_target",
        ),
        (
            NB_RULES,
            {
                "action": "block",
                "match_type": "exact_number",
                "match_target": "+14155550123",
                "include_subdomains": False,
            },
            "include_subdomains",
        ),
    ],
    ids=[
        "phone-type-on-mailbox",
        "mail-type-on-number",
        "bad-email",
        "bad-prefix",
        "invalid-word",
        "subdomains-on-number",
    ],
)
def test_rule_that_does_not_fit_is_422(
    client: TestClient, path: str, body: dict[str, Any], field: str
) -> None:
    """Targets that do not normalise, and match types of the wrong family, are 422."""
    mailbox(client)
    number(client)
    r = client.post(path, json=body, headers=ADMIN)
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(field)


def test_rule_list_filters_paging_newest_first(client: TestClient) -> None:
    """Scope rule lists filter by action, match_type and status, newest first."""
    mailbox(client)
    ids = [
        rule(client, MB_RULES, action=a, match_type="domain", match_target=f"d{i}.example")["id"]
        for i, a in enumerate(["block", "allow", "block", "mute"])
    ]
    client.patch(f"{MB_RULES}/{ids[0]}", json={"status": "paused"}, headers=ADMIN)
    everything = client.get(MB_RULES, headers=ADMIN).json()
    assert [r["id"] for r in everything["items"]] == ids[::-1]
    blocks = client.get(f"{MB_RULES}?action=block", headers=ADMIN).json()
    assert [r["id"] for r in blocks["items"]] == [ids[2], ids[0]]
    paused = client.get(f"{MB_RULES}?status=paused", headers=ADMIN).json()
    assert [r["id"] for r in paused["items"]] == [ids[0]]
    page = client.get(f"{MB_RULES}?limit=1&offset=1", headers=ADMIN).json()
    assert [r["id"] for r in page["items"]] == [ids[2]] and page["total"] == 4


def test_org_lists_and_list_all(client: TestClient) -> None:
    """Org-wide rules apply to every recipient and /v1/contact-rules lists all scopes."""
    mailbox(client)
    number(client)
    org = rule(
        client,
        "/v1/org/mail/contact-rules",
        action="block",
        match_type="domain",
        match_target="xyz",
    )
    rule(
        client,
        "/v1/org/phone/contact-rules",
        action="block",
        match_type="anonymous",
        match_target="anonymous",
    )
    rule(client, MB_RULES, action="allow", match_type="exact_email", match_target="boss@corp.xyz")
    assert check(client, **{"from": "a@b.xyz", "to": "nobody@else.example"})["rule"] == org["id"]
    assert check(client, **{"from": "boss@corp.xyz", "to": "sales@acme.example"})["verdict"] == (
        "deliver"
    )
    all_rules = client.get("/v1/contact-rules", headers=ADMIN).json()
    assert all_rules["total"] == 3
    phone = client.get("/v1/contact-rules?channel=voice", headers=ADMIN).json()
    assert [r["scope"] for r in phone["items"]] == ["org:phone"]
    scoped = client.get("/v1/contact-rules?scope=SALES@acme.example", headers=ADMIN).json()
    assert [r["match_target"] for r in scoped["items"]] == ["boss@corp.xyz"]
    by_target = client.get("/v1/contact-rules?match_target=xyz", headers=ADMIN).json()
    assert [r["id"] for r in by_target["items"]] == [org["id"]]
    assert client.get("/v1/org/fax/contact-rules", headers=ADMIN).status_code == 404


def test_batch_reports_created_duplicate_refused(client: TestClient) -> None:
    """The batch endpoint answers per item: created, duplicate with its id, or refused."""
    mailbox(client)
    existing = rule(
        client, MB_RULES, action="block", match_type="domain", match_target="spam.example"
    )
    r = client.post(
        "/v1/contact-rules/batch",
        headers=ADMIN,
        json={
            "rules": [
                {
                    "scope": "sales@acme.example",
                    "action": "block",
                    "match_type": "domain",
                    "match_target": "junk.example",
                },
                {
                    "scope": "sales@acme.example",
                    "action": "block",
                    "match_type": "domain",
                    "match_target": "spam.example",
                },
                {
                    "scope": "org:phone",
                    "action": "block",
                    "match_type": "number_prefix",
                    "match_target": "+1900",
                },
                {
                    "scope": "nobody@acme.example",
                    "action": "block",
                    "match_type": "domain",
                    "match_target": "x.example",
                },
                {
                    "scope": "org:mail",
                    "action": "explode",
                    "match_type": "domain",
                    "match_target": "y",
                },
                {
                    "scope": "org:phone",
                    "action": "block",
                    "match_type": "number_prefix",
                    "match_target": "+1900",
                },
            ]
        },
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert [i["status"] for i in out["items"]] == [
        "created",
        "duplicate",
        "created",
        "refused",
        "refused",
        "duplicate",
    ]
    assert out["items"][1]["existing_rule_id"] == existing["id"]
    assert "create it first" in out["items"][3]["reason"]
    assert "action" in out["items"][4]["reason"]
    assert (out["created"], out["duplicate"], out["refused"]) == (2, 2, 2)
    assert check(client, **{"from": "+19005550000", "to": "+14155550199"})["verdict"] == "drop"


# --- check -----------------------------------------------------------------------------


def test_check_explains_the_decision(client: TestClient) -> None:
    """/v1/check answers the verdict, rule, reason, mode, sender and recipient."""
    mailbox(client, filter_mode="whitelist")
    d = check(client, **{"from": "Bob <BOB@Example.COM>", "to": "sales@acme.example"})
    assert d["verdict"] == "drop" and d["reason"] == "mode_default" and d["rule"] is None
    assert d["mode"] == "whitelist" and d["sender"] == "bob@example.com"
    made = rule(client, MB_RULES, action="allow", match_type="domain", match_target="example.com")
    d = check(client, **{"from": "bob@example.com", "to": "sales@acme.example"})
    assert (d["verdict"], d["rule"], d["reason"]) == ("deliver", made["id"], "rule")
    d = check(
        client, **{"from": "bob@example.com", "to": "sales@acme.example", "authenticated": "false"}
    )
    assert d["verdict"] == "drop" and d["unauthenticated_allow"] is True


def test_check_without_recipient_lists_scopes(client: TestClient) -> None:
    """Without `to`, check lists every scope in which the sender is blocked or allowed."""
    number(client)
    a = rule(
        client, NB_RULES, action="allow", match_type="exact_number", match_target="+14155550123"
    )
    b = rule(
        client,
        "/v1/org/phone/contact-rules",
        action="block",
        match_type="number_prefix",
        match_target="+1415",
    )
    d = check(client, **{"from": "(415) 555-0123"})
    assert d["sender"] == "+14155550123"
    assert sorted((s["scope"], s["rule"], s["action"]) for s in d["scopes"]) == sorted(
        [("+14155550100", a["id"], "allow"), ("org:phone", b["id"], "block")]
    )


def test_shadow_target_delivers_and_says_would_drop(client: TestClient) -> None:
    """enforce=false records the drop decision but delivers."""
    number(client, enforce=False)
    rule(client, NB_RULES, action="block", match_type="anonymous", match_target="anonymous")
    d = check(client, **{"from": "anonymous", "to": "+14155550100", "channel": "voice"})
    assert d["verdict"] == "deliver" and d["would_drop"] is True


def test_expired_rule_no_longer_applies(client: TestClient) -> None:
    """A rule whose expires_at has passed is not a candidate."""
    number(client)
    rule(
        client,
        NB_RULES,
        action="block",
        match_type="exact_number",
        match_target="+14155550123",
        expires_at="2020-01-01T00:00:00Z",
    )
    assert check(client, **{"from": "+14155550123", "to": "+14155550100"})["verdict"] == ("deliver")


# --- config declarations, health, openapi ---------------------------------------------


def test_config_targets_and_rules_applied_idempotently(tmp_path: Path) -> None:
    """Targets and rules in config.toml appear with source config, once, across restarts."""
    settings = make_settings(
        tmp_path,
        mailboxes=(
            MailboxDecl(
                "sales@acme.example",
                "whitelist",
                rules=(RuleDecl("allow", "domain", "partner.example"),),
            ),
        ),
        numbers=(NumberDecl("+14155550100", voice_url="http://127.0.0.1:9/voice"),),
        org_mail_rules=(RuleDecl("block", "domain", "xyz"),),
    )
    for _ in range(2):
        with running(settings) as c:
            rules = c.get("/v1/contact-rules", headers=ADMIN).json()
            assert rules["total"] == 2
            assert {r["source"] for r in rules["items"]} == {"config"}
            mb = c.get("/v1/mailboxes/sales@acme.example", headers=ADMIN).json()
            assert mb["filter_mode"] == "whitelist"
            nb = c.get("/v1/numbers/+14155550100", headers=ADMIN).json()
            assert nb["voice_url"] == "http://127.0.0.1:9/voice"


def test_health_and_readiness(client: TestClient) -> None:
    """/healthz is plain liveness; /readyz names the store and the snapshot."""
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["sqlite"]["status"] == "ok"
    assert ready.json()["checks"]["snapshot"]["status"] == "ok"


def test_openapi_describes_the_admin_api(client: TestClient) -> None:
    """/openapi.json is OpenAPI 3.1 and lists every admin path."""
    spec = client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    for path in (
        "/v1/mailboxes",
        "/v1/numbers/{number}",
        "/v1/org/mail/contact-rules",
        "/v1/mailboxes/{address}/contact-rules/{rule_id}",
        "/v1/contact-rules",
        "/v1/contact-rules/batch",
        "/v1/check",
        "/v1/events",
        "/v1/events/{event_id}/release",
        "/v1/contacts",
        "/v1/numbers/{number}/contacts/{sender}",
        "/v1/review",
        "/v1/audit",
    ):
        assert path in spec["paths"], path


# --- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "ctype", "status", "words"),
    [
        (b"{not json", "application/json", 400, "malformed JSON"),
        (b"", "application/json", 400, "empty"),
        (b"[1, 2]", "application/json", 400, "JSON object"),
        (b'{"address": 5}', "application/json", 422, "address: must be a string"),
        (b'{"address": "a@b.example", "colour": "red"}', "application/json", 422, "unknown field"),
        (
            b'{"address": "a@b.example", "filter_mode": "greylist"}',
            "application/json",
            422,
            "must be one of",
        ),
        (b'{"address": "a@b.example", "enforce": "yes"}', "application/json", 422, "true or false"),
        (b'{"address": "a@b.example", "rate_limit": "lots"}', "application/json", 422, "N/second"),
        (b'{"address": "a@b.example", "forward_url": "ftp://x"}', "application/json", 422, "http"),
        (b'{"address": NaN}', "application/json", 400, "NaN"),
        (b"address=a@b.example", "application/x-www-form-urlencoded", 415, "application/json"),
        (b'{"address": "' + b"a" * 2_000_000 + b'"}', "application/json", 413, "limit"),
    ],
    ids=[
        "malformed",
        "empty",
        "array",
        "wrong-type",
        "unknown-field",
        "unknown-enum",
        "bool-type",
        "rate",
        "url-scheme",
        "nan",
        "form",
        "oversized",
    ],
)
def test_bad_bodies_get_clear_4xx(
    client: TestClient, content: bytes, ctype: str, status: int, words: str
) -> None:
    """Malformed, mistyped, unknown, oversized and non-JSON bodies get a 4xx that says why."""
    r = client.post("/v1/mailboxes", content=content, headers={**ADMIN, "content-type": ctype})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    assert words in r.json()["detail"]


def test_unknown_route_and_method_are_problems(client: TestClient) -> None:
    """Unknown paths are 404 and wrong verbs 405, both as problem+json."""
    r = client.get("/v1/nothing", headers=ADMIN)
    assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
    r = client.put("/v1/mailboxes", headers=ADMIN)
    assert r.status_code == 405 and r.headers["content-type"] == PROBLEM
