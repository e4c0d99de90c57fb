"""config.toml → Settings: the sample loads, every bad value names its key, env: secrets,
file selection, and the CLI's exit status 2 on a bad config."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.errors import ConfigError
from gateway.settings import (
    ReviewPolicy,
    RuleDecl,
    Settings,
    load_settings,
    parse_settings,
)

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "config.toml"

# A base every error case below builds on: one valid source.
BASE = """
[sources.tw]
provider = "twilio"
secret = "token"
forward_url = "http://127.0.0.1:9000/tw"
"""

TELNYX_KEY = base64.b64encode(bytes(range(32))).decode()  # an Ed25519 public key is 32 bytes


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(text))
    return load_settings(str(path), env or {})


def config_error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env)
    return info.value


# --------------------------------------------------------------------------- the sample


def test_sample_config_loads_without_any_environment() -> None:
    """The shipped config.toml works on a fresh machine: demo secrets are literal."""
    settings = load_settings(str(SAMPLE), {})
    assert settings.config_path == str(SAMPLE)
    assert settings.server.host == "127.0.0.1" and settings.server.port == 8080
    assert settings.store.url == "sqlite:///./data/sendergate.db"
    assert set(settings.sources) >= {"twilio", "mailgun"}
    assert settings.sources["mailgun"].drop_status == 406
    assert [m.address for m in settings.mailboxes] == ["sales.team@acme.example"]
    assert [n.number for n in settings.numbers] == ["+14155550100"]
    assert settings.org_mail_rules == (RuleDecl("block", "domain", "xyz"),)
    assert settings.forward.signing_secret is not None


def test_sample_config_documents_the_demo_admin_key() -> None:
    """The README quick start curls the API with sg_demo_admin_key: its hash is the admin's."""
    settings = load_settings(str(SAMPLE), {})
    digest = hashlib.sha256(b"sg_demo_admin_key").hexdigest()
    admins = [k for k in settings.api_keys if k.role == "admin"]
    assert [k.sha256 for k in admins] == [digest]
    assert "sg_demo_admin_key" in SAMPLE.read_text()


def test_every_commented_example_in_the_sample_is_valid(tmp_path: Path) -> None:
    """The commented-out keys and provider tables are the reference: uncommented in place
    they must load, and every provider must accept its options."""
    example_line = re.compile(r"^# (?=\[|[a-z_]+ = )", re.MULTILINE)
    path = tmp_path / "config.toml"
    path.write_text(example_line.sub("", SAMPLE.read_text()))
    env = {
        "VONAGE_SIGNATURE_SECRET": "s",
        "TELNYX_PUBLIC_KEY": TELNYX_KEY,
        "TELNYX_API_KEY": "KEY0123",
        "PLIVO_AUTH_TOKEN": "s",
        "SENDGRID_BASIC_AUTH": "user:pass",
        "POSTMARK_BASIC_AUTH": "user:pass",
        "GENERIC_WEBHOOK_SECRET": "s",
    }
    settings = load_settings(str(path), env)
    assert set(settings.sources) == {
        "twilio",
        "mailgun",
        "vonage",
        "telnyx",
        "plivo",
        "sendgrid",
        "postmark",
        "ses",
        "generic",
    }
    assert settings.sources["ses"].options["topic_arns"] == [
        "arn:aws:sns:us-east-1:123456789012:inbound-mail"
    ]
    assert settings.mailboxes[0].rate_limit == "20/hour"
    assert settings.review.interval_s == 7 * 86400
    assert [p.name for p in settings.review.policies] == ["junk-tlds", "repeat-offenders"]
    result = CliRunner().invoke(main, ["config", "check", str(path)], env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("config OK: 9 sources, 1 mailboxes, 1 numbers")


# --------------------------------------------------------------------------- values


def test_an_empty_config_gives_the_documented_defaults() -> None:
    settings = parse_settings({}, {})
    assert settings == Settings()


def test_redis_store_settings_and_their_defaults() -> None:
    """A Redis store gets the default key prefix and polls once a second (pub/sub is the
    fast path); both can be set. SQLite keeps its quicker poll."""
    redis = parse_settings({"store": {"url": "rediss://:pw@redis.example:6380/1"}}, {})
    assert redis.store.url == "rediss://:pw@redis.example:6380/1"
    assert (redis.store.key_prefix, redis.store.poll_interval_s) == ("sendergate:", 1.0)
    custom = parse_settings(
        {
            "store": {
                "url": "redis://127.0.0.1",
                "key_prefix": "{acme-prod}:",
                "poll_interval_s": 0.5,
                "cold_start": "fail_open",
            }
        },
        {},
    )
    assert custom.store.key_prefix == "{acme-prod}:"
    assert (custom.store.poll_interval_s, custom.store.cold_start) == (0.5, "fail_open")
    assert parse_settings({}, {}).store.poll_interval_s == 0.25


def test_the_store_thread_is_nicer_by_default_and_can_be_left_alone() -> None:
    assert parse_settings({}, {}).store.thread_nice == 19
    assert parse_settings({"store": {"thread_nice": 0}}, {}).store.thread_nice == 0


def test_incremental_reload_is_on_unless_turned_off() -> None:
    """``[store] incremental_reload``: on by default, for either store."""
    assert parse_settings({}, {}).store.incremental_reload is True
    off = parse_settings({"store": {"incremental_reload": False}}, {})
    assert off.store.incremental_reload is False


def test_targets_and_rule_targets_are_normalised(tmp_path: Path) -> None:
    """Addresses, numbers (national form via default_region) and rule targets are stored
    in the canonical form the API and the rules use."""
    settings = load(
        tmp_path,
        """
        [phone]
        default_region = "gb"

        [[api_keys]]
        name = "m"
        sha256 = "ABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABAB"
        role = "member"
        targets = ["Sales@Bücher.Example", "020 7946 0958"]

        [[mailboxes]]
        address = "Sales <SALES@Bücher.example.>"

        [[mailboxes.rules]]
        action = "block"
        match_type = "domain"
        match_target = "Spam.Example."

        [[mailboxes.rules]]
        action = "mute"
        match_type = "invalid"

        [[numbers]]
        number = "020 7946 0958"

        [[numbers.rules]]
        action = "allow"
        match_type = "exact_number"
        match_target = "+1 (415) 555-0100"
        """,
    )
    assert settings.default_region == "GB"
    assert settings.api_keys[0].sha256 == "ab" * 32
    assert settings.api_keys[0].targets == ("sales@xn--bcher-kva.example", "+442079460958")
    mailbox = settings.mailboxes[0]
    assert mailbox.address == "sales@xn--bcher-kva.example"
    assert [r.match_target for r in mailbox.rules] == ["spam.example", "invalid"]
    assert settings.numbers[0].number == "+442079460958"
    assert settings.numbers[0].rules[0].match_target == "+14155550100"


def test_urls_and_source_options(tmp_path: Path) -> None:
    """public_url loses its trailing slash (URLs are joined to it); a forward_url is kept
    byte for byte; [sources.NAME.options] lands in ``options``."""
    settings = load(
        tmp_path,
        BASE
        + """
        [server]
        public_url = "https://hooks.acme.example/gw/"

        [sources.tw2]
        provider = "twilio"
        verify = false
        forward_url = "http://127.0.0.1:9000/x/"

        [sources.ses]
        provider = "ses"
        forward_url = "https://app.example/ses"

        [sources.ses.options]
        topic_arns = ["arn:aws:sns:us-east-1:123456789012:in"]

        [sources.gen]
        provider = "generic"
        secret = "s"
        forward_url = "http://127.0.0.1:9000/gen"
        options = { channel = "voice", sender_field = "from", recipient_field = "to" }

        [sources.tx]
        provider = "telnyx"
        secret = "env:TX_KEY"
        forward_url = "http://127.0.0.1:9000/tx"
        api_key = "env:TX_API"
        api_base_url = "http://127.0.0.1:9999/v2/"
        """,
        {"TX_KEY": TELNYX_KEY, "TX_API": "KEY42"},
    )
    assert settings.server.public_url == "https://hooks.acme.example/gw"
    unverified = settings.sources["tw2"]
    assert unverified.verify is False and unverified.secret is None
    assert unverified.forward_url == "http://127.0.0.1:9000/x/"
    assert settings.sources["ses"].secret is None
    # Options are passed on raw: each provider module checks its own when it is built.
    assert settings.sources["ses"].options == {
        "topic_arns": ["arn:aws:sns:us-east-1:123456789012:in"]
    }
    assert settings.sources["gen"].options == {
        "channel": "voice",
        "sender_field": "from",
        "recipient_field": "to",
    }
    assert settings.sources["tw"].options == {}
    telnyx = settings.sources["tx"]
    assert (telnyx.secret, telnyx.api_key) == (TELNYX_KEY, "KEY42")
    assert telnyx.api_base_url == "http://127.0.0.1:9999/v2"


def test_review_section(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        """
        [review]
        interval = "12h"
        min_age_days = 0

        [[review.policies]]
        name = "voip"
        action = "mute"
        channel = "phone"
        number_type_in = ["VOIP"]
        country_in = ["gb"]
        state = "any"
        """,
    )
    assert settings.review.interval_s == 12 * 3600
    assert settings.review.min_age_days == 0
    assert settings.review.policies == (
        ReviewPolicy(
            name="voip",
            action="mute",
            state="any",
            channel="phone",
            number_type_in=("voip",),
            country_in=("GB",),
        ),
    )


# --------------------------------------------------------------------------- errors

MB = '[[mailboxes]]\naddress = "a@b.example"\n'
NUM = '[[numbers]]\nnumber = "+14155550100"\n'
ADMIN = '[[api_keys]]\nname = "ops"\nrole = "admin"\nsha256 = "' + "a" * 64 + '"\n'

# (what is wrong, TOML put before BASE, the key the error must name, a fragment of it)
ERRORS: list[tuple[str, str, str, str]] = [
    ("unknown top-level table", "[srever]\nport = 1", "srever", "did you mean 'server'"),
    ("typo in a server key", "[server]\nprot = 1", "server.prot", "did you mean 'port'"),
    ("port of the wrong type", '[server]\nport = "80"', "server.port", "an integer"),
    ("port out of range", "[server]\nport = 70000", "server.port", "between 0 and 65535"),
    ("bool is not an int", "[server]\nmax_body_bytes = true", "server.max_body_bytes", ""),
    ("zero body limit", "[server]\nmax_body_bytes = 0", "server.max_body_bytes", "at least 1"),
    ("public_url scheme", '[server]\npublic_url = "ftp://x"', "server.public_url", "http"),
    ("public_url query", '[server]\npublic_url = "https://x/?a=1"', "server.public_url", "query"),
    ("access_log not a bool", '[server]\naccess_log = "yes"', "server.access_log", "true or"),
    ("store scheme", '[store]\nurl = "postgres://x"', "store.url", "sqlite:///PATH"),
    ("sqlite without a path", '[store]\nurl = "sqlite:///"', "store.url", "file path"),
    ("redis without a host", '[store]\nurl = "redis://"', "store.url", "host"),
    ("cold_start value", '[store]\ncold_start = "open"', "store.cold_start", "fail_open"),
    ("poll interval", "[store]\npoll_interval_s = 0", "store.poll_interval_s", "positive"),
    ("retention", "[store]\nevent_retention_days = 0", "store.event_retention_days", ""),
    ("thread_nice", "[store]\nthread_nice = 20", "store.thread_nice", "between 0 and 19"),
    (
        "incremental_reload type",
        '[store]\nincremental_reload = "no"',
        "store.incremental_reload",
        "true or false",
    ),
    ("redis port", '[store]\nurl = "redis://h:port/0"', "store.url", "not a valid"),
    ("redis database", '[store]\nurl = "redis://h:6379/zero"', "store.url", "number"),
    (
        "key_prefix with sqlite",
        '[store]\nkey_prefix = "gw:"',
        "store.key_prefix",
        "applies to redis:// stores",
    ),
    (
        "key_prefix with a space",
        '[store]\nurl = "redis://h"\nkey_prefix = "my gw:"',
        "store.key_prefix",
        "printable ASCII",
    ),
    ("key_prefix empty", '[store]\nurl = "redis://h"\nkey_prefix = ""', "store.key_prefix", ""),
    ("key_prefix type", '[store]\nurl = "redis://h"\nkey_prefix = 1', "store.key_prefix", ""),
    ("region", '[phone]\ndefault_region = "XX"', "phone.default_region", "unknown region"),
    ("mode", '[defaults]\nmail_filter_mode = "allow"', "defaults.mail_filter_mode", "one of"),
    ("forward timeout", "[forward]\ntimeout_s = -1", "forward.timeout_s", "positive"),
    ("signing secret", '[forward]\nsigning_secret = "whsec_x"', "forward.signing_secret", ""),
    ("api key hash", ADMIN.replace("a" * 64, "abc"), "api_keys[0].sha256", "64-character"),
    ("api key role", ADMIN.replace('"admin"', '"root"'), "api_keys[0].role", "admin, member"),
    ("api key no name", ADMIN.replace('name = "ops"\n', ""), "api_keys[0].name", "required"),
    (
        "second key hash",
        ADMIN + ADMIN.replace("ops", "ops2").replace("a" * 64, "b" * 63 + "g"),
        "api_keys[1].sha256",
        "hex",
    ),
    ("duplicate key", ADMIN + ADMIN.replace("ops", "x"), "api_keys[1].sha256", "same key"),
    (
        "member without targets",
        ADMIN.replace('"admin"', '"member"'),
        "api_keys[0].targets",
        "at least one",
    ),
    (
        "member target that does not normalise",
        ADMIN.replace('"admin"', '"member"') + 'targets = ["a@b.example", "12"]',
        "api_keys[0].targets[1]",
        "",
    ),
    ("api_keys not an array", "api_keys = 1", "api_keys", "array of tables"),
    ("source table not a table", "[sources]\nx = 1", "sources.x", "a table"),
    ("source name", '[sources."a b"]\nprovider = "twilio"', "sources.a b", "URL path segment"),
    ("provider", '[sources.x]\nprovider = "twillio"', "sources.x.provider", "twilio, vonage"),
    ("provider missing", "[sources.x]\nsecret = 's'", "sources.x.provider", "required"),
    (
        "source key typo",
        '[sources.x]\nprovider = "mailgun"\nsecret = "s"\nforwrd_url = "http://a"',
        "sources.x.forwrd_url",
        "did you mean 'forward_url'",
    ),
    (
        "secret missing",
        '[sources.x]\nprovider = "mailgun"\nforward_url = "http://a"',
        "sources.x.secret",
        "verify = false",
    ),
    (
        "forward_url missing",
        '[sources.x]\nprovider = "mailgun"\nsecret = "s"',
        "sources.x.forward_url",
        "required",
    ),
    (
        "forward_url scheme",
        '[sources.x]\nprovider = "mailgun"\nsecret = "s"\nforward_url = "127.0.0.1:9000"',
        "sources.x.forward_url",
        "http:// or https://",
    ),
    (
        "verify must be a bool",
        '[sources.x]\nprovider = "mailgun"\nverify = "no"\nforward_url = "http://a"',
        "sources.x.verify",
        "true or false",
    ),
    (
        "provider option written at the source level",
        '[sources.x]\nprovider = "ses"\nforward_url = "http://a"\ntopic_arns = ["arn:aws:sns:x"]',
        "sources.x.topic_arns",
        "unknown key",
    ),
    (
        "options not a table",
        BASE.replace("[sources.tw]", "[sources.x]") + "options = 1",
        "sources.x.options",
        "a table",
    ),
    (
        "reject_reason value",
        BASE.replace("[sources.tw]", "[sources.x]") + 'reject_reason = "declined"',
        "sources.x.reject_reason",
        "rejected, busy",
    ),
    (
        "reject_reason on email",
        '[sources.x]\nprovider = "mailgun"\nsecret = "s"\nforward_url = "http://a"\n'
        'reject_reason = "busy"',
        "sources.x.reject_reason",
        "not mailgun",
    ),
    (
        "drop_status on telephony",
        BASE.replace("[sources.tw]", "[sources.x]") + "drop_status = 406",
        "sources.x.drop_status",
        "not twilio",
    ),
    (
        "drop_status range",
        '[sources.x]\nprovider = "mailgun"\nsecret = "s"\nforward_url = "http://a"\n'
        "drop_status = 99",
        "sources.x.drop_status",
        "between 200 and 599",
    ),
    (
        "source timeout",
        BASE.replace("[sources.tw]", "[sources.x]") + "timeout_s = 0",
        "sources.x.timeout_s",
        "positive",
    ),
    (
        "postmark secret",
        '[sources.x]\nprovider = "postmark"\nsecret = "s"\nforward_url = "http://a"',
        "sources.x.secret",
        "user:password",
    ),
    (
        "sendgrid secret",
        '[sources.x]\nprovider = "sendgrid"\nsecret = "s"\nforward_url = "http://a"',
        "sources.x.secret",
        "user:password",
    ),
    (
        "telnyx secret",
        '[sources.x]\nprovider = "telnyx"\nsecret = "abc"\nforward_url = "http://a"',
        "sources.x.secret",
        "Ed25519",
    ),
    (
        "api_key outside telnyx",
        BASE.replace("[sources.tw]", "[sources.x]") + 'api_key = "k"',
        "sources.x.api_key",
        "telnyx",
    ),
    ("mailbox address", '[[mailboxes]]\naddress = "not an address"', "mailboxes[0].address", ""),
    ("mailbox bad domain", '[[mailboxes]]\naddress = "a@-x-.example"', "mailboxes[0].address", ""),
    ("mailbox key typo", MB + 'filtermode = "whitelist"', "mailboxes[0].filtermode", "did you"),
    ("mailbox mode", MB + 'filter_mode = "deny"', "mailboxes[0].filter_mode", "whitelist"),
    ("mailbox url", MB + 'forward_url = "x"', "mailboxes[0].forward_url", "http"),
    ("rate limit", MB + 'rate_limit = "20 per hour"', "mailboxes[0].rate_limit", "20/hour"),
    (
        "duplicate mailbox after normalisation",
        MB + MB.replace("a@b.example", "A@B.EXAMPLE."),
        "mailboxes[1].address",
        "already declared in mailboxes[0]",
    ),
    ("number", '[[numbers]]\nnumber = "12"', "numbers[0].number", ""),
    ("number is an address", '[[numbers]]\nnumber = "a@b.example"', "numbers[0].number", ""),
    (
        "duplicate number",
        NUM + NUM.replace("+14155550100", "(415) 555-0100"),
        "numbers[1].number",
        "already declared",
    ),
    (
        "rule action",
        MB + '[[mailboxes.rules]]\naction = "deny"\nmatch_type = "domain"\nmatch_target = "x.y"',
        "mailboxes[0].rules[0].action",
        "allow, block, mute",
    ),
    (
        "rule target that does not normalise",
        MB
        + '[[mailboxes.rules]]\naction = "block"\nmatch_type = "domain"\nmatch_target = "x.y"\n'
        + '[[mailboxes.rules]]\naction = "block"\nmatch_type = "exact_email"\n'
        + 'match_target = "nobody"',
        "mailboxes[0].rules[1].match_target",
        "",
    ),
    (
        "phone match type on a mailbox",
        MB + '[[mailboxes.rules]]\naction = "block"\nmatch_type = "anonymous"',
        "mailboxes[0].rules[0].match_type",
        "not a mail match type",
    ),
    (
        "mail match type on a number",
        NUM + '[[numbers.rules]]\naction = "block"\nmatch_type = "domain"\nmatch_target = "x"',
        "numbers[0].rules[0].match_type",
        "not a phone match type",
    ),
    (
        "mail match type on the org phone list",
        '[[org.phone_rules]]\naction = "block"\nmatch_type = "invalid"',
        "org.phone_rules[0].match_type",
        "exact_number, number_prefix, anonymous",
    ),
    (
        "org list typo",
        '[[org.mail_rule]]\naction = "block"',
        "org.mail_rule",
        "did you mean 'mail_rules'",
    ),
    (
        "bad number prefix",
        '[[org.phone_rules]]\naction = "block"\nmatch_type = "number_prefix"\n'
        'match_target = "1900x"',
        "org.phone_rules[0].match_target",
        "",
    ),
    (
        "rule without target",
        '[[org.mail_rules]]\naction = "block"\nmatch_type = "domain"',
        "org.mail_rules[0].match_target",
        "required",
    ),
    (
        "include_subdomains outside domain rules",
        '[[org.mail_rules]]\naction = "block"\nmatch_type = "invalid"\ninclude_subdomains = false',
        "org.mail_rules[0].include_subdomains",
        "domain rules",
    ),
    (
        "duplicate rule in one scope",
        '[[org.mail_rules]]\naction = "block"\nmatch_type = "domain"\nmatch_target = "x.y"\n'
        '[[org.mail_rules]]\naction = "allow"\nmatch_type = "domain"\nmatch_target = "X.Y."',
        "org.mail_rules[1].match_target",
        "duplicate of org.mail_rules[0]",
    ),
    ("review interval", '[review]\ninterval = "weekly"', "review.interval", "7d"),
    (
        "review policy action",
        '[[review.policies]]\nname = "p"\naction = "delete"',
        "review.policies[0].action",
        "block",
    ),
    (
        "review number type",
        '[[review.policies]]\nname = "p"\naction = "block"\nnumber_type_in = ["cell"]',
        "review.policies[0].number_type_in[0]",
        "mobile",
    ),
    (
        "review channel",
        '[[review.policies]]\nname = "p"\naction = "block"\nchannel = "sms"',
        "review.policies[0].channel",
        "mail, email, phone",
    ),
]


@pytest.mark.parametrize(
    ("toml", "key", "fragment"),
    [pytest.param(toml, key, fragment, id=what) for what, toml, key, fragment in ERRORS],
)
def test_a_bad_value_names_its_key(tmp_path: Path, toml: str, key: str, fragment: str) -> None:
    """Each mistake is refused with a ConfigError whose key is the dotted path to it."""
    error = config_error(tmp_path, toml + "\n" + BASE)
    assert error.key == key, error.detail
    assert fragment in error.detail
    assert error.detail.startswith(f"{key}: ")


# --------------------------------------------------------------------------- env: secrets


SECRETS = """
[store]
url = "env:REDIS_URL"

[forward]
signing_secret = "env:SIGNING"

[sources.mg]
provider = "mailgun"
secret = "env:MAILGUN_KEY"
forward_url = "http://127.0.0.1:9000/mg"
"""


def test_env_secrets_are_read_from_the_environment(tmp_path: Path) -> None:
    env = {
        "REDIS_URL": "redis://:pw@redis.internal:6379/2",
        "SIGNING": "whsec_c2VuZGVyZ2F0ZS1kZW1vLXNpZ25pbmctc2VjcmV0ISE=",
        "MAILGUN_KEY": "key-123",
    }
    settings = load(tmp_path, SECRETS, env)
    assert settings.store.url == "redis://:pw@redis.internal:6379/2"
    assert settings.forward.signing_secret == env["SIGNING"]
    assert settings.sources["mg"].secret == "key-123"


@pytest.mark.parametrize(
    ("missing", "key"),
    [
        ("REDIS_URL", "store.url"),
        ("SIGNING", "forward.signing_secret"),
        ("MAILGUN_KEY", "sources.mg.secret"),
    ],
)
def test_a_missing_env_variable_names_the_key_and_the_variable(
    tmp_path: Path, missing: str, key: str
) -> None:
    env = {
        "REDIS_URL": "redis://localhost",
        "SIGNING": "whsec_c2VuZGVyZ2F0ZS1kZW1vLXNpZ25pbmctc2VjcmV0ISE=",
        "MAILGUN_KEY": "key-123",
    }
    del env[missing]
    error = config_error(tmp_path, SECRETS, env)
    assert error.key == key
    assert f"environment variable {missing} is not set" in error.detail


def test_an_empty_env_variable_is_refused(tmp_path: Path) -> None:
    error = config_error(tmp_path, BASE.replace('"token"', '"env:TOKEN"'), {"TOKEN": " "})
    assert (error.key, error.detail) == (
        "sources.tw.secret",
        "sources.tw.secret: environment variable TOKEN is empty",
    )


def test_secrets_are_not_read_from_the_process_environment_when_env_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKEN", "from-os")
    error = config_error(tmp_path, BASE.replace('"token"', '"env:TOKEN"'), {})
    assert error.key == "sources.tw.secret"
    assert load_settings(str(tmp_path / "config.toml")).sources["tw"].secret == "from-os"


# --------------------------------------------------------------------------- which file


def test_sendergate_config_picks_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = tmp_path / "chosen.toml"
    chosen.write_text("[server]\nport = 9999\n")
    monkeypatch.chdir(tmp_path)  # ./config.toml does not exist here
    settings = load_settings(env={"SENDERGATE_CONFIG": str(chosen)})
    assert settings.server.port == 9999
    assert settings.config_path == str(chosen)


def test_an_explicit_path_beats_sendergate_config(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("[server]\nport = 1111\n")
    (tmp_path / "b.toml").write_text("[server]\nport = 2222\n")
    env = {"SENDERGATE_CONFIG": str(tmp_path / "b.toml")}
    assert load_settings(str(tmp_path / "a.toml"), env).server.port == 1111


def test_without_path_or_variable_the_working_directory_config_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config.toml").write_text("[server]\nport = 3333\n")
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env={})
    assert settings.server.port == 3333
    assert settings.config_path == str(tmp_path / "config.toml")


def test_a_missing_file_and_bad_toml_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(str(tmp_path / "nope.toml"), {})
    assert info.value.key == str(tmp_path / "nope.toml")
    assert "not found" in info.value.detail
    error = config_error(tmp_path, "[server\nport = 1\n")
    assert error.key == str(tmp_path / "config.toml")
    assert "invalid TOML" in error.detail and "line 1" in error.detail


# --------------------------------------------------------------------------- the CLI


def test_config_check_summarises_a_good_file() -> None:
    result = CliRunner().invoke(main, ["config", "check", str(SAMPLE)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "config OK: 2 sources, 1 mailboxes, 1 numbers, 5 rules"


def test_config_check_warns_about_unverified_sources(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[sources.t]\nprovider = "twilio"\nverify = false\nforward_url = "http://a"\n')
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 0
    assert "warning: sources.t: verify = false" in result.stderr
    assert result.stdout.startswith("config OK: 1 sources")


def test_config_check_names_the_bad_key_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[server]\nport = -1\n")
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert result.stderr == "config error: server.port: must be between 0 and 65535, not -1\n"


def test_config_check_lets_each_provider_check_its_options(tmp_path: Path) -> None:
    """Provider options are validated by the provider modules, offline, naming the key."""
    path = tmp_path / "c.toml"
    path.write_text(BASE + "[sources.tw.options]\ntolerance = 5\n")
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert result.stderr.startswith("config error: sources.tw.options.tolerance: ")


def test_serve_with_a_bad_config_exits_2_without_a_traceback(tmp_path: Path) -> None:
    """The real entry point: the error names the key, and nothing else is printed."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[sources.twilio]\nprovider = "twillio"\n')
    env = {k: v for k, v in os.environ.items() if k != "SENDERGATE_CONFIG"}
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "sources.twilio.provider" in proc.stderr
    assert proc.stderr.startswith("config error: ")
    assert "Traceback" not in proc.stderr + proc.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_serve_starts_the_gateway_and_stops_cleanly(tmp_path: Path, workers: int) -> None:
    """`sendergate serve` on a real port, in-process app (1 worker) and factory mode (2),
    with --port overriding [server] port; SIGTERM shuts it down gracefully."""
    config = tmp_path / "config.toml"
    config.write_text(
        f'[server]\nport = 1\n[store]\nurl = "sqlite:///{tmp_path}/sg.db"\n'
        + ADMIN
        + BASE.replace('"token"', '"env:TOKEN"')
    )
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "SENDERGATE_CONFIG"} | {"TOKEN": "t"}
    command = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
    proc = subprocess.Popen(
        [*command, "--port", str(port), "--workers", str(workers)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert response.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    # uvicorn re-raises the signal it shut down on, so a single process ends by SIGTERM.
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    assert "Traceback" not in output
