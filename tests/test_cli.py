"""The ``sendergate`` commands that talk to a gateway, run against a real one (uvicorn in a
thread) through click's CliRunner, plus one subprocess smoke test and one on a terminal.

Exit statuses as SPEC §8 says: 0 success, 1 an API error (one readable line on stderr),
2 a usage error."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from gateway.cli import main, table
from gateway.rulefiles import RuleFileError, read_rules, write_rules
from gateway.settings import ReviewPolicy, ReviewSettings, ServerSettings
from tests.apiserver import BLOCKED_PREFIX, HOME_NUMBER, ApiWorld, api_world
from tests.apptools import ADMIN_KEY, MEMBER_KEY, make_settings

pytestmark = pytest.mark.slow

HEADER = "scope,action,match_type,match_target,status,expires_at,note"


@dataclass
class Cli:
    """Runs ``sendergate ARGS`` in process with SENDERGATE_URL / SENDERGATE_API_KEY set."""

    url: str
    key: str | None = ADMIN_KEY

    def __call__(self, *args: str, key: str | None = "", input: str | None = None) -> Result:
        env = {
            "SENDERGATE_URL": self.url,
            "SENDERGATE_API_KEY": self.key if key == "" else key,
        }
        return CliRunner().invoke(main, list(args), env=env, input=input, catch_exceptions=False)

    def ok(self, *args: str) -> Result:
        result = self(*args)
        assert result.exit_code == 0, (result.stdout, result.stderr)
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.ok("--json", *args).stdout)


def failed(result: Result, status: int) -> str:
    """The one-line error of an API failure (exit 1), checked."""
    assert result.exit_code == 1, (result.stdout, result.stderr)
    line = result.stderr.splitlines()[0]
    assert line.startswith(f"error: {status} "), result.stderr
    return line


def row_of(text: str, first: str) -> list[str]:
    """The cells of the table row that starts with ``first``."""
    for line in text.splitlines():
        if line.split()[:1] == [first]:
            return line.split()
    raise AssertionError(f"no row {first!r} in:\n{text}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiWorld]:
    with api_world(tmp_path_factory.mktemp("cli")) as w:
        yield w


@pytest.fixture
def cli(world: ApiWorld) -> Cli:
    return Cli(world.url)


# --- help and usage --------------------------------------------------------------------


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from command_paths(command, (*prefix, name))


def test_every_level_has_help_with_an_example() -> None:
    """`--help` works on the group and every command below it, each with an example."""
    paths = [(), *command_paths(main)]
    assert ("mailbox", "rules", "update") in paths and ("org", "rules", "list") in paths
    assert len(paths) > 35
    for path in paths:
        result = CliRunner().invoke(main, [*path, "--help"])
        assert result.exit_code == 0, path
        assert "Examples:" in result.stdout and "sendergate " in result.stdout, path


def test_usage_errors_exit_2(cli: Cli) -> None:
    """Missing or bad options are click usage errors: exit 2, nothing sent."""
    missing = cli("mailbox", "rules", "list")
    assert missing.exit_code == 2 and "--mailbox" in missing.stderr
    assert cli("mailbox", "rules", "create", "--mailbox", "a@b.example").exit_code == 2
    assert cli("org", "rules", "list", "--channel", "fax").exit_code == 2
    assert cli("number", "rules", "get", "twelve", "--number", HOME_NUMBER).exit_code == 2
    nothing = cli("mailbox", "update", "a@b.example")
    assert nothing.exit_code == 2 and "nothing to change" in nothing.stderr
    assert cli("events", "list", "--limit", "0").exit_code == 2


def test_default_url_is_the_clients() -> None:
    """The CLI spells the client's default URL itself (to keep httpx out of --help)."""
    from gateway import cli, client

    assert cli.DEFAULT_URL == client.DEFAULT_URL


def test_table_pads_columns_and_cuts_long_cells() -> None:
    """The table formatter aligns columns, shows None as - and cuts long cells."""
    text = table(("ID", "NOTE"), [(1, None), (22, "x" * 50)], limit=10)
    assert text.splitlines() == ["ID  NOTE", "1   -", "22  xxxxxxxxx…"]


# --- targets -------------------------------------------------------------------------------


def test_mailbox_commands(cli: Cli) -> None:
    """create, list, get, update (with the mode-change notice) and delete a mailbox."""
    made = cli.ok("mailbox", "create", "Team@ACME.example", "--shadow", "--rate-limit", "5/hour")
    assert "address      team@acme.example" in made.stdout
    assert "enforce      no" in made.stdout and "5/hour" in made.stdout
    listed = cli.ok("mailbox", "list", "--limit", "200").stdout
    assert listed.startswith("ADDRESS ")
    assert row_of(listed, "team@acme.example")[:5] == [
        "team@acme.example", "blacklist", "shadow", "-", "5/hour",
    ]  # fmt: skip
    assert cli.json("mailbox", "get", "team@acme.example")["rate_limit"] == "5/hour"
    cli.ok(
        "mailbox", "rules", "create", "--mailbox", "team@acme.example",
        "--action", "block", "--match-type", "domain", "--match-target", "b.example",
    )  # fmt: skip
    updated = cli.ok(
        "mailbox", "update", "team@acme.example", "--filter-mode", "whitelist", "--enforce",
        "--rate-limit", "", "--forward-url", "http://127.0.0.1:9/team",
    ).stdout  # fmt: skip
    assert "filter_mode  whitelist" in updated and "rate_limit   -" in updated
    assert "note: filter mode is now whitelist; 1 active block rule(s)" in updated
    assert cli.ok("mailbox", "delete", "team@acme.example").stdout == (
        "deleted mailbox team@acme.example\n"
    )
    failed(cli("mailbox", "get", "team@acme.example"), 404)


def test_number_commands(cli: Cli) -> None:
    """Numbers in national form are stored E.164; --sms-url '' clears the override."""
    made = cli.json(
        "number", "create", "(415) 555-0142", "--filter-mode", "whitelist",
        "--voice-url", "http://127.0.0.1:9/voice", "--sms-url", "http://127.0.0.1:9/sms",
    )  # fmt: skip
    assert made["number"] == "+14155550142" and made["voice_url"].endswith("/voice")
    assert cli.json("number", "update", "+14155550142", "--sms-url", "")["sms_url"] is None
    text = cli.ok("number", "list", "--limit", "200").stdout
    assert row_of(text, "+14155550142")[:5] == [
        "+14155550142", "whitelist", "enforce", "http://127.0.0.1:9/voice", "-",
    ]  # fmt: skip
    assert cli.ok("number", "get", "4155550142").stdout.startswith("number       +14155550142")
    cli.ok("number", "delete", "+1 415 555 0142")


# --- rules ---------------------------------------------------------------------------------


def test_mailbox_rules_commands(cli: Cli) -> None:
    """A rule's whole life from the CLI: created with source cli, listed, read, paused,
    its expiry cleared, deleted (and then listed as deleted)."""
    cli.ok("mailbox", "create", "rules@acme.example")
    scope = ("--mailbox", "rules@acme.example")
    rule = cli.json(
        "mailbox", "rules", "create", *scope, "--action", "block", "--match-type", "domain",
        "--match-target", "Spam.Example", "--note", "from the CLI", "--expires-at", "7d",
    )  # fmt: skip
    assert (rule["match_target"], rule["source"], rule["note"]) == (
        "spam.example",
        "cli",
        "from the CLI",
    )
    expires = datetime.fromisoformat(rule["expires_at"])
    assert abs(expires - (datetime.now(UTC) + timedelta(days=7))) < timedelta(minutes=1)
    rid = str(rule["id"])
    listed = cli.ok("mailbox", "rules", "list", *scope, "--action", "block").stdout
    assert listed.splitlines()[0].split() == [
        "ID", "SCOPE", "ACTION", "MATCH_TYPE", "MATCH_TARGET", "STATUS", "EXPIRES_AT", "HITS",
        "SOURCE", "NOTE",
    ]  # fmt: skip
    assert listed.splitlines()[1].split()[:3] == [rid, "rules@acme.example", "block"]
    assert listed.endswith("\n1 rule\n")
    assert (
        "match_target        spam.example" in cli.ok("mailbox", "rules", "get", rid, *scope).stdout
    )
    paused = cli.json("mailbox", "rules", "update", rid, *scope, "--status", "paused",
                      "--expires-at", "")  # fmt: skip
    assert (paused["status"], paused["expires_at"]) == ("paused", None)
    assert cli.ok("mailbox", "rules", "delete", rid, *scope).stdout == f"deleted rule {rid}\n"
    deleted = cli.json("mailbox", "rules", "list", *scope, "--status", "deleted")
    assert [r["id"] for r in deleted["items"]] == [rule["id"]]


def test_number_and_org_rules_commands(cli: Cli) -> None:
    """The same commands on a number (--number, any form) and the org lists (--channel);
    invalid/anonymous rules need no --match-target."""
    num = cli.json(
        "number", "rules", "create", "--number", "415-555-0100", "--action", "allow",
        "--match-type", "exact_number", "--match-target", "(415) 555-0111",
    )  # fmt: skip
    assert (num["scope"], num["match_target"]) == (HOME_NUMBER, "+14155550111")
    anon = cli.json(
        "org", "rules", "create", "--channel", "phone", "--action", "mute",
        "--match-type", "anonymous", "--status", "paused",
    )  # fmt: skip
    assert (anon["scope"], anon["match_target"], anon["status"]) == (
        "org:phone",
        "anonymous",
        "paused",
    )
    mail = cli.json(
        "org", "rules", "create", "--channel", "mail", "--action", "block",
        "--match-type", "domain", "--match-target", "org-only.example", "--exact-domain",
    )  # fmt: skip
    assert mail["include_subdomains"] is False
    org_list = cli.ok("org", "rules", "list", "--channel", "mail").stdout
    assert "org-only.example (exact)" in org_list
    assert (
        cli.json("org", "rules", "get", str(anon["id"]), "--channel", "phone")["id"] == anon["id"]
    )
    cli.ok("org", "rules", "update", str(anon["id"]), "--channel", "phone", "--action", "block")
    cli.ok("org", "rules", "delete", str(anon["id"]), "--channel", "phone")
    cli.ok("number", "rules", "delete", str(num["id"]), "--number", HOME_NUMBER)
    # a rule is only found in its own scope
    failed(cli("org", "rules", "get", str(mail["id"]), "--channel", "phone"), 404)


def test_rules_list_all_filters(cli: Cli) -> None:
    """rules list-all filters across scopes and pages with --limit/--offset."""
    for n in range(3):
        cli.ok(
            "org", "rules", "create", "--channel", "mail", "--action", "mute",
            "--match-type", "exact_email", "--match-target", f"list{n}@all.example",
        )  # fmt: skip
    page = cli.json("rules", "list-all", "--action", "mute", "--channel", "mail", "--limit", "2")
    assert page["total"] >= 3 and len(page["items"]) == 2
    text = cli.ok("rules", "list-all", "--action", "mute", "--channel", "mail", "--limit", "2")
    assert f"rules 1-2 of {page['total']}; next page: --offset 2" in text.stdout
    one = cli.json(
        "rules", "list-all", "--match-type", "exact_email", "--match-target", "LIST1@all.example"
    )
    assert [r["match_target"] for r in one["items"]] == ["list1@all.example"]
    assert cli.json("rules", "list-all", "--scope", "org:mail", "--status", "paused")["total"] == 0


# --- API errors: one readable line, exit 1 -----------------------------------------------


def test_duplicate_rule_is_exit_1_with_the_existing_id(cli: Cli) -> None:
    """409: the message names the existing rule."""
    args = ("org", "rules", "create", "--channel", "mail", "--action", "block",
            "--match-type", "domain", "--match-target", "dup-cli.example")  # fmt: skip
    first = json.loads(cli.ok(*args, "--json").stdout)
    line = failed(cli(*args), 409)
    assert line == (
        "error: 409 Duplicate rule: a rule with this match_type and match_target already "
        f"exists in this scope (existing_rule_id: {first['id']})"
    )


def test_member_key_is_exit_1_forbidden(cli: Cli) -> None:
    """403 for a member key on an admin-only command; its own target still works."""
    line = failed(cli("org", "rules", "list", "--channel", "mail", key=MEMBER_KEY), 403)
    assert line.startswith("error: 403 Forbidden: the org-wide lists needs an admin key")
    assert cli("number", "rules", "list", "--number", HOME_NUMBER, key=MEMBER_KEY).exit_code == 0
    failed(cli("mailbox", "rules", "list", "--mailbox", "x@acme.example", key=MEMBER_KEY), 403)


def test_bad_target_is_exit_1_unprocessable(cli: Cli) -> None:
    """422 for a target that does not normalise, naming the field."""
    result = cli(
        "org", "rules", "create", "--channel", "mail", "--action", "block",
        "--match-type", "domain", "--match-target", "not a domain",
    )  # fmt: skip
    assert failed(result, 422).startswith("error: 422 Unprocessable content: match_target: ")
    wrong_family = cli(
        "org", "rules", "create", "--channel", "phone", "--action", "block",
        "--match-type", "domain", "--match-target", "x.example",
    )  # fmt: skip
    assert "does not apply to phone scope org:phone" in failed(wrong_family, 422)


def test_missing_key_and_unreachable_gateway(cli: Cli) -> None:
    """401 without a key, with a hint; nothing listening is exit 1 with the URL."""
    result = cli("mailbox", "list", key=None)
    assert failed(result, 401).startswith("error: 401 Unauthorized: missing API key")
    assert "hint: pass --api-key KEY or set SENDERGATE_API_KEY" in result.stderr
    down = Cli("http://127.0.0.1:9")("--url", "http://127.0.0.1:1", "mailbox", "list")
    assert down.exit_code == 1
    assert down.stderr.startswith("error: http://127.0.0.1:1: cannot connect (")
    assert "hint: pass --url URL or set SENDERGATE_URL" in down.stderr


def test_json_on_the_group_or_the_command(cli: Cli) -> None:
    """--json works before the command and on the command itself, and parses."""
    before = json.loads(cli.ok("--json", "number", "list").stdout)
    after = json.loads(cli.ok("number", "list", "--json").stdout)
    assert before == after and set(before) == {"items", "limit", "offset", "total"}


# --- check, events, quarantine -----------------------------------------------------------


def test_check_commands(cli: Cli) -> None:
    """check explains one decision, or lists every scope that matches a sender."""
    blocked = BLOCKED_PREFIX + "5550100"
    text = cli.ok("check", "--from", blocked, "--to", HOME_NUMBER, "--channel", "voice").stdout
    assert "verdict                drop" in text and "reason                 rule" in text
    decision = cli.json("check", "--from", "a@b.example", "--to", "sales@acme.example",
                        "--unauthenticated")  # fmt: skip
    assert decision["verdict"] == "deliver" and decision["reason"] == "mode_default"
    everywhere = cli.ok("check", "--from", blocked).stdout
    assert everywhere.splitlines()[:2] == [f"{blocked} (sms):", "SCOPE      ACTION  RULE"]
    assert "no rule matches in any scope" in cli.ok("check", "--from", "x@nowhere.example").stdout


def test_events_and_quarantine_commands(world: ApiWorld, cli: Cli) -> None:
    """events list/get and quarantine list/release on a real dropped SMS."""
    sender = BLOCKED_PREFIX + "5550042"
    assert world.send_sms(sender).status_code == 200
    listed = cli.ok("events", "list", "--sender", sender, "--verdict", "drop").stdout
    assert listed.splitlines()[0].split()[:3] == ["ID", "RECEIVED_AT", "CHANNEL"]
    page = cli.json("quarantine", "list", "--sender", sender)
    event_id = page["items"][0]["id"]
    assert event_id in listed and "quarantined" in listed
    shown = cli.ok("events", "get", event_id).stdout
    assert "decision.verdict" in shown and "body (utf-8):" in shown and sender in shown
    released = cli.ok("quarantine", "release", event_id).stdout
    assert released == f"released {event_id}: outcome released, the application answered 200\n"
    assert world.app.last.path == "/generic"
    again = failed(cli("quarantine", "release", event_id), 409)
    assert "only quarantined or forward_failed events can be released" in again
    failed(cli("events", "get", "evt_nope"), 404)
    assert cli.ok("events", "list", "--sender", "+15555550000").stdout == "no events\n"


# --- rule files ----------------------------------------------------------------------------


def test_rule_files_read_csv_line_numbers_and_json_items() -> None:
    """CSV rows keep the line they start on (a quoted note may span lines); bad rows are
    refused with a reason, not raised; JSON items are numbered from 1."""
    text = (
        "\ufeff" + HEADER + "\n"
        'org:mail,block,domain,a.example,,,"two\nlines"\n'
        "\n"
        "org:mail,block,domain,,,,\n"
        "org:phone,allow,anonymous,,paused,,\n"
        "org:mail,block,domain,b.example,,,,extra\n"
    )
    rows = read_rules(text, "csv")
    assert [r.line for r in rows] == [2, 5, 6, 7]
    assert rows[0].rule is not None and rows[0].rule["note"] == "two\nlines"
    assert rows[1].error == "match_target: is required"
    assert rows[2].rule == {
        "scope": "org:phone", "action": "allow", "match_type": "anonymous",
        "match_target": "anonymous", "status": "paused", "source": "cli",
    }  # fmt: skip
    assert rows[3].error == "8 cells but 7 columns"
    items = read_rules('[{"scope": "org:mail", "action": "block"}, 3, {"color": 1}]', "json")
    assert [(r.line, r.error) for r in items] == [
        (1, "match_type: is required"),
        (2, "not an object"),
        (3, "unknown key 'color'"),
    ]
    for bad, fmt in (("scope,action\n", "csv"), ("a,b,c,d\n", "csv"), ("{}", "json"), ("", "csv")):
        with pytest.raises(RuleFileError):
            read_rules(bad, fmt)  # type: ignore[arg-type]


def test_import_reports_created_skipped_refused_with_lines(cli: Cli, tmp_path: Path) -> None:
    """Each refused row is reported with its CSV line and the reason; paused rows are
    created paused; exit 1 because something was refused."""
    path = tmp_path / "rules.csv"
    path.write_text(
        HEADER + "\n"
        "org:mail,block,domain,imp-ok.example,,,\n"  # 2 created
        "org:mail,mute,domain,IMP-OK.example,,,\n"  # 3 duplicate of line 2
        "ghost@acme.example,block,domain,g.example,,,\n"  # 4 no such mailbox
        'org:mail,block,exact_email,note@imp.example,,,"a, ""quoted""\nnote"\n'  # 5-6 created
        "org:mail,explode,domain,x.example,,,\n"  # 7 bad action
        f"{HOME_NUMBER},block,anonymous,,paused,2030-01-01T00:00:00Z,\n"  # 8 created paused
        "org:mail,block,domain,not a domain,,,\n"  # 9 bad target
    )
    result = cli("rules", "import", str(path))
    assert result.exit_code == 1
    summary, *refused = result.stdout.splitlines()
    assert summary == f"{path}: 7 rules: 3 created, 1 skipped (duplicates), 3 refused"
    assert refused[:2] == [
        "  refused line 4: no target ghost@acme.example: create it first",
        "  refused line 7: action: must be one of allow, block, mute (got 'explode')",
    ]
    assert refused[2].startswith("  refused line 9: match_target: 'not a domain' is not a")
    paused = cli.json("rules", "list-all", "--scope", HOME_NUMBER, "--match-type", "anonymous")
    assert [(r["status"], r["expires_at"]) for r in paused["items"]] == [
        ("paused", "2030-01-01T00:00:00Z")
    ]
    note = cli.json("rules", "list-all", "--match-target", "note@imp.example")["items"][0]
    assert (note["note"], note["source"]) == ('a, "quoted"\nnote', "cli")


def test_import_json_with_machine_report(cli: Cli, tmp_path: Path) -> None:
    """A JSON file (by its extension) with a --json report: item numbers, no progress."""
    path = tmp_path / "rules.json"
    path.write_text(
        json.dumps(
            [
                {
                    "scope": "org:mail",
                    "action": "block",
                    "match_type": "domain",
                    "match_target": "json-imp.example",
                    "status": None,
                    "note": None,
                },
                {"scope": "org:mail", "action": "block", "match_type": "domain"},
            ]
        )
    )
    result = cli("rules", "import", str(path), "--json")
    assert result.exit_code == 1 and result.stderr == ""
    assert json.loads(result.stdout) == {
        "file": str(path),
        "rows": 2,
        "created": 1,
        "skipped": 0,
        "refused": [{"line": 2, "reason": "match_target: is required"}],
        "complete": True,
    }
    again = cli("--json", "rules", "import", "--format", "json", "-", input=path.read_text())
    assert json.loads(again.stdout)["skipped"] == 1


def test_import_of_a_bad_file_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    """A file that cannot be read as rules is exit 2 and nothing is sent."""
    path = tmp_path / "bad.csv"
    path.write_text("scope,action,match_type,match_target,colour\n")
    result = cli("rules", "import", str(path))
    assert result.exit_code == 2 and "unknown column 'colour'" in result.stderr
    assert cli("rules", "import", str(tmp_path / "missing.csv")).exit_code == 2


def big_file(n: int) -> str:
    """``n`` distinct rules over five scopes, some paused, some expiring, with notes that
    need CSV quoting."""
    scopes = ("one@acme.example", "two@acme.example", HOME_NUMBER, "org:mail", "org:phone")
    lines = [HEADER]
    for i in range(n):
        scope = scopes[i % 5]
        status = "paused" if i % 7 == 0 else ""
        expires = "2031-06-01T12:00:00Z" if i % 11 == 0 else ""
        note = f'"rule {i}, ""bulk"""' if i % 3 == 0 else ""
        if "@" in scope or scope == "org:mail":
            lines.append(f"{scope},block,domain,d{i}.bulk.example,{status},{expires},{note}")
        else:
            lines.append(f"{scope},block,exact_number,+1628555{i:04d},{status},{expires},{note}")
    return "\n".join(lines) + "\n"


def test_import_10000_rules_is_idempotent_and_export_round_trips(tmp_path: Path) -> None:
    """10,000 rules import in batches; importing them again creates none; export →
    import into a fresh gateway with the same targets → export gives the same file."""
    source = tmp_path / "big.csv"
    source.write_text(big_file(10_000))
    exported: dict[str, Path] = {}
    for name in ("first", "second"):
        with api_world(tmp_path / name) as w:
            cli = Cli(w.url)
            for box in ("one@acme.example", "two@acme.example"):
                cli.ok("mailbox", "create", box)
            if name == "first":
                report = cli.json("rules", "import", str(source))
                assert (report["created"], report["skipped"], report["refused"]) == (10_000, 0, [])
                report = cli.json("rules", "import", str(source))
                assert (report["created"], report["skipped"]) == (0, 10_000)
                paused = cli.json("rules", "list-all", "--status", "paused", "--limit", "1")
                assert paused["total"] == len(range(0, 10_000, 7))
            else:
                again = cli.json("rules", "import", str(exported["first"]))
                # the config's org:phone rule exists in both gateways: skipped here
                assert (again["created"], again["skipped"]) == (10_000, 1)
            out = tmp_path / f"{name}.csv"
            done = cli.ok("rules", "export", "-o", str(out)).stdout
            assert done == f"exported 10001 rules to {out}\n"
            exported[name] = out
    first = exported["first"].read_text()
    assert first == exported["second"].read_text()
    rows = first.splitlines()
    assert rows[0] == HEADER and len(rows) == 10_002
    expected = 'one@acme.example,block,domain,d0.bulk.example,paused,2031-06-01T12:00:00Z,"rule 0'
    assert rows[2] == expected + ', ""bulk"""'


def test_export_json_and_exact_domains(cli: Cli, tmp_path: Path) -> None:
    """JSON export has the CSV's keys; a domain rule without subdomains keeps that through
    an include_subdomains column, and the file reads back."""
    cli.ok("mailbox", "create", "export@acme.example")
    for target, flag in (
        ("exp-a.example", "--include-subdomains"),
        ("exp-b.example", "--exact-domain"),
    ):
        cli.ok(
            "mailbox", "rules", "create", "--mailbox", "export@acme.example",
            "--action", "block", "--match-type", "domain", "--match-target", target, flag,
        )  # fmt: skip
    data = json.loads(
        cli.ok("rules", "export", "--format", "json", "--scope", "export@acme.example").stdout
    )
    assert data == [
        {"scope": "export@acme.example", "action": "block", "match_type": "domain",
         "match_target": "exp-a.example", "status": "active", "expires_at": None, "note": None},
        {"scope": "export@acme.example", "action": "block", "match_type": "domain",
         "match_target": "exp-b.example", "status": "active", "expires_at": None, "note": None,
         "include_subdomains": False},
    ]  # fmt: skip
    text = cli.ok("rules", "export", "--scope", "export@acme.example").stdout
    assert text.splitlines() == [
        HEADER + ",include_subdomains",
        "export@acme.example,block,domain,exp-a.example,active,,,",
        "export@acme.example,block,domain,exp-b.example,active,,,false",
    ]
    rules = [r.rule for r in read_rules(text, "csv")]
    assert [r and r.get("include_subdomains") for r in rules] == [None, False]
    json_out = tmp_path / "x.json"
    report = cli.json("rules", "export", "--scope", "export@acme.example", "-o", str(json_out))
    assert report == {"exported": 2, "file": str(json_out), "format": "json"}
    assert json.loads(json_out.read_text()) == data


def test_write_rules_round_trips_through_read_rules(tmp_path: Path) -> None:
    """What write_rules writes, read_rules reads back to the same rules (both formats)."""
    rule: Any = {
        "id": 1, "scope": "org:mail", "action": "mute", "match_type": "domain",
        "match_target": "x.example", "include_subdomains": False, "status": "paused",
        "expires_at": "2030-01-01T00:00:00Z", "note": "a,b\n\"c\"", "source": "api",
        "hits": 0, "last_matched_at": None, "created_at": "", "updated_at": "",
    }  # fmt: skip
    for fmt in ("csv", "json"):
        with (tmp_path / f"r.{fmt}").open("w+", newline="") as handle:
            write_rules([rule], fmt, handle)
            handle.seek(0)
            (row,) = read_rules(handle.read(), fmt)
        assert row.rule == {
            "scope": "org:mail", "action": "mute", "match_type": "domain",
            "match_target": "x.example", "include_subdomains": False, "status": "paused",
            "expires_at": "2030-01-01T00:00:00Z", "note": "a,b\n\"c\"", "source": "cli",
        }  # fmt: skip


def test_import_that_fails_half_way_says_where(tmp_path: Path) -> None:
    """A batch call that fails stops the import with how much was done and the first line
    not imported (here the gateway's admin body limit refuses the second batch)."""
    settings_server = replace(ServerSettings(), max_admin_body_bytes=200_000)
    lines = [HEADER]
    lines += [f"org:mail,block,domain,short{i}.example,,," for i in range(1000)]
    lines += [f"org:mail,block,domain,long{i}.example,,,{'n' * 900}" for i in range(600)]
    path = tmp_path / "half.csv"
    path.write_text("\n".join(lines) + "\n")
    with api_world(tmp_path / "gw", server=settings_server) as w:
        result = Cli(w.url)("rules", "import", str(path))
    assert result.exit_code == 1
    assert result.stdout == (
        f"{path}: 1600 rules: 1000 created, 0 skipped (duplicates), 0 refused, "
        "600 not imported (from line 1002)\n"
    )
    first, second = result.stderr.splitlines()
    assert first.startswith("error: 413 Payload too large: ")
    assert second.startswith(
        "import stopped at line 1002: 1000 of 1600 rules were handled before it "
        "(1000 created, 0 skipped, 0 refused); line 1002 and the ones after it were not "
        "imported. Run the same import again to finish"
    )
    assert make_settings(tmp_path).server.max_admin_body_bytes > 200_000  # the default is not hit


# --- the real thing: a subprocess, a terminal, completion ---------------------------------


def run_sendergate(
    url: str, *args: str, stderr: int = subprocess.PIPE
) -> subprocess.CompletedProcess[str]:
    """``python -m gateway ARGS`` in a child process (stderr may be a terminal's fd)."""
    env = {**os.environ, "SENDERGATE_URL": url, "SENDERGATE_API_KEY": ADMIN_KEY}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        timeout=60,
        check=False,
    )


def test_subprocess_smoke(world: ApiWorld) -> None:
    """`python -m gateway` as a separate process: JSON on stdout, errors on stderr, exit 1."""
    ok = run_sendergate(world.url, "--json", "number", "get", HOME_NUMBER)
    assert ok.returncode == 0 and json.loads(ok.stdout)["number"] == HOME_NUMBER
    bad = run_sendergate(world.url, "mailbox", "get", "nobody@acme.example")
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr == "error: 404 Not found: no mailbox nobody@acme.example\n"


def read_all(fd: int) -> bytes:
    chunks = []
    while select.select([fd], [], [], 5)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side of the terminal is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_progress_bar_on_a_terminal_only(cli: Cli, world: ApiWorld, tmp_path: Path) -> None:
    """The import draws a progress bar when stderr is a terminal, and none when piped."""
    path = tmp_path / "tty.csv"
    path.write_text(HEADER + "\norg:mail,block,domain,tty.example,,,\n")
    primary, secondary = pty.openpty()
    try:
        done = run_sendergate(world.url, "rules", "import", str(path), stderr=secondary)
        os.close(secondary)
        secondary = -1
        drawn = read_all(primary).decode()
    finally:
        os.close(primary)
        if secondary != -1:
            os.close(secondary)
    assert done.returncode == 0 and "1 created" in done.stdout
    assert "importing" in drawn and "100%" in drawn
    piped = cli("rules", "import", str(path))
    assert "importing" not in piped.output and "1 skipped" in piped.stdout


def test_shell_completion(cli: Cli) -> None:
    """click's completion: the bash script, and command names completed."""
    runner = CliRunner()
    script = runner.invoke(
        main, [], prog_name="sendergate", env={"_SENDERGATE_COMPLETE": "bash_source"}
    )
    assert script.exit_code == 0 and "_sendergate_completion" in script.stdout
    words: Sequence[tuple[str, str, str]] = (
        ("sendergate mailbox rules cr", "3", "plain,create"),
        ("sendergate org rules list --channel ", "5", "plain,mail\nplain,phone"),
    )
    for line, cword, expected in words:
        env = {"_SENDERGATE_COMPLETE": "bash_complete", "COMP_WORDS": line, "COMP_CWORD": cword}
        done = runner.invoke(main, [], prog_name="sendergate", env=env)
        assert done.stdout.strip() == expected, line


def test_contacts_review_and_audit_commands(tmp_path: Path) -> None:
    """contacts list/get/set, review (dry run and --apply) and audit list against a gateway
    whose contacts come from real signed webhooks."""
    policy = ReviewPolicy("premium", "block", number_type_in=("premium_rate",))
    with api_world(tmp_path, review=ReviewSettings(min_age_days=0, policies=(policy,))) as w:
        run = Cli(w.url)
        w.send_sms("+14155550177")
        w.send_sms("+19005550077")
        w.send_sms("+19005550077")

        def listed() -> Any:
            page = run.json("contacts", "list", "--number", HOME_NUMBER)
            return page if page["total"] == 2 else None

        page = None
        for _ in range(100):
            page = listed()
            if page:
                break
            time.sleep(0.05)
        assert page is not None
        assert [c["sender"] for c in page["data"]] == ["+19005550077", "+14155550177"]
        text = run.ok("contacts", "list", "--number", HOME_NUMBER, "--sort", "count").stdout
        assert row_of(text, "+19005550077")[3] == "2"
        got = run.json("contacts", "get", "+14155550177", "--number", HOME_NUMBER)
        assert got["state"] == "unset" and got["count"] == 1

        dry = run.ok("review").stdout
        assert "premium" in dry and "dry run" in dry
        assert (
            run.json("contacts", "get", "+19005550077", "--number", HOME_NUMBER)["state"] == "unset"
        )
        applied = run.json("review", "--apply")
        assert applied["written"] == 1
        assert run.json("review", "--apply")["written"] == 0
        assert (
            run.json("contacts", "get", "+19005550077", "--number", HOME_NUMBER)["state"]
            == "blocked"
        )

        out = run.json(
            "contacts",
            "set",
            "+14155550177",
            "--number",
            HOME_NUMBER,
            "--state",
            "whitelisted",
            "--category",
            "vendor",
        )
        assert out["state"] == "whitelisted" and out["category"] == "vendor"
        audit = run.json("audit", "list", "--scope", HOME_NUMBER)
        actors = {e["actor"] for e in audit["items"]}
        assert {"review:premium", "ops"} <= actors
        assert "review:premium" in run.ok("audit", "list").stdout
        bad = run("contacts", "set", "x", "--number", HOME_NUMBER)
        assert bad.exit_code == 2
