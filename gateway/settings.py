"""config.toml + environment → frozen, validated ``Settings``.

Errors name the offending key (``ConfigError.key``, a dotted path such as
``sources.twilio.secret``); ``sendergate serve`` prints them and exits with status 2.

(The loader ``load_settings`` / ``parse_settings`` is below the dataclasses.)
"""

from __future__ import annotations

import base64
import binascii
import difflib
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import phonenumbers

from gateway.errors import ConfigError
from gateway.models import (
    ACTIONS,
    MAIL_MATCH_TYPES,
    MATCH_TYPES,
    MODES,
    PHONE_MATCH_TYPES,
    Action,
    Family,
    MatchType,
    Mode,
)

Role = Literal["admin", "member"]


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = None  # base URL providers call; URL-signed schemes rebuild from it
    max_body_bytes: int = 10 * 1024 * 1024
    max_admin_body_bytes: int = 1024 * 1024
    # A webhook whose body has not fully arrived this long after its headers gets 408:
    # a client trickling a body (slow-loris) cannot hold a connection and a task forever.
    body_timeout_s: float = 30.0
    access_log: bool = False


@dataclass(frozen=True, slots=True)
class StoreSettings:
    url: str = "sqlite:///./data/sendergate.db"
    cold_start: Literal["fail_closed", "fail_open"] = "fail_closed"
    # How often the store's version is compared: for SQLite, how soon other processes'
    # writes show; for Redis a safety net behind pub/sub (the file's default there: 1 s).
    poll_interval_s: float = 0.25
    event_retention_days: int = 14
    key_prefix: str = "sendergate:"  # Redis: the start of every key and channel name
    # Reload only the scopes a change touched (gateway.snapshot); false reloads and
    # compiles every rule on each change (for comparison, or to rule the feature out).
    incremental_reload: bool = True
    # SQLite: a drop is stored by one append to a local journal file and moved into the
    # database in the background (gateway.journal); false makes each drop wait for its
    # commit instead (docs/performance.md, "Latency at half load").
    quarantine_journal: bool = True
    # SQLite, Linux: how much nicer than the process the store's thread runs, so that
    # its background batches fill the event loop's idle time instead of taking turns
    # with requests on a busy core (gateway.store.sqlite._lower_priority); 0 turns it off.
    thread_nice: int = 19


@dataclass(frozen=True, slots=True)
class ForwardSettings:
    signing_secret: str | None = None  # whsec_... (Standard Webhooks)
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    sha256: str  # lowercase hex digest of the key
    role: Role
    targets: tuple[str, ...] = ()  # normalised target ids a member may touch


@dataclass(frozen=True, slots=True)
class SourceSettings:
    name: str
    provider: str  # twilio, vonage, telnyx, plivo, mailgun, sendgrid, postmark, ses, generic
    secret: str | None
    forward_url: str | None
    verify: bool = True
    allow_requires_auth: bool = True
    drop_status: int | None = None  # email providers: answer code on drop (e.g. 406)
    reject_reason: Literal["rejected", "busy"] = "rejected"
    timeout_s: float | None = None  # overrides [forward] timeout_s for this source
    api_key: str | None = None  # outbound credentials (Telnyx Call Control reject)
    api_base_url: str | None = None  # e.g. https://api.telnyx.com/v2 (tests: local server)
    # Provider-specific options (generic field paths, SNS topic allowlist, ...), raw.
    options: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RuleDecl:
    action: Action
    match_type: MatchType
    match_target: str
    include_subdomains: bool = True
    note: str | None = None


@dataclass(frozen=True, slots=True)
class MailboxDecl:
    address: str  # normalised
    filter_mode: Mode = "blacklist"
    enforce: bool = True
    forward_url: str | None = None
    rate_limit: str | None = None
    rules: tuple[RuleDecl, ...] = ()


@dataclass(frozen=True, slots=True)
class NumberDecl:
    number: str  # E.164
    filter_mode: Mode = "blacklist"
    enforce: bool = True
    voice_url: str | None = None
    sms_url: str | None = None
    rate_limit: str | None = None
    rules: tuple[RuleDecl, ...] = ()


@dataclass(frozen=True, slots=True)
class ReviewPolicy:
    """One ``[[review.policies]]`` entry (SPEC §7). Empty criteria match everything."""

    name: str
    action: Action
    state: Literal["unset", "any"] = "unset"  # "any": also contacts that already have a rule
    channel: Family | None = None  # "mail" or "phone" ("email" is read as "mail")
    min_count: int | None = None
    min_dropped: int | None = None
    tld_in: tuple[str, ...] = ()  # lowercase A-labels, no dot
    domain_in: tuple[str, ...] = ()  # lowercase A-label domains
    category_in: tuple[str, ...] = ()
    number_type_in: tuple[str, ...] = ()  # lowercase phonenumbers types: mobile, voip, ...
    country_in: tuple[str, ...] = ()  # upper-case region codes: US, GB, ...


@dataclass(frozen=True, slots=True)
class ReviewSettings:
    interval_s: float | None = None  # in-server schedule; None = only on demand
    min_age_days: int = 7
    policies: tuple[ReviewPolicy, ...] = ()


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    default_region: str = "US"
    mail_filter_mode: Mode = "blacklist"
    phone_filter_mode: Mode = "blacklist"
    forward: ForwardSettings = field(default_factory=ForwardSettings)
    api_keys: tuple[ApiKey, ...] = ()
    sources: dict[str, SourceSettings] = field(default_factory=dict)
    mailboxes: tuple[MailboxDecl, ...] = ()
    numbers: tuple[NumberDecl, ...] = ()
    org_mail_rules: tuple[RuleDecl, ...] = ()
    org_phone_rules: tuple[RuleDecl, ...] = ()
    review: ReviewSettings = field(default_factory=ReviewSettings)
    config_path: str | None = None  # absolute path of the file the settings came from


# --------------------------------------------------------------------------- loader

PROVIDERS: tuple[str, ...] = (
    "twilio",
    "vonage",
    "telnyx",
    "plivo",
    "mailgun",
    "sendgrid",
    "postmark",
    "ses",
    "generic",
)
EMAIL_PROVIDERS = frozenset({"mailgun", "sendgrid", "postmark", "ses"})
# Providers whose voice drop answer carries a reason (``<Reject reason=...>``, Plivo's
# ``<Hangup reason=...>``).
REJECT_REASON_PROVIDERS = frozenset({"twilio", "telnyx", "plivo"})
# Providers verified without a shared secret: SES/SNS messages carry an RSA signature
# checked against AWS's signing certificate.
SECRETLESS_PROVIDERS = frozenset({"ses"})

_SOURCE_KEYS = (
    "provider",
    "secret",
    "forward_url",
    "verify",
    "allow_requires_auth",
    "drop_status",
    "reject_reason",
    "timeout_s",
    "api_key",
    "api_base_url",
    "options",
)
_SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_RATE_LIMIT = re.compile(r"([1-9][0-9]*)/(second|minute|hour|day)")
_DURATION = re.compile(r"([1-9][0-9]*)([smhdw])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_NUMBER_TYPES = frozenset(
    name.lower() for name in dir(phonenumbers.PhoneNumberType) if name.isupper()
)

_MISSING: Any = object()


def config_path_from(path: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The config file to read: ``path``, else ``$SENDERGATE_CONFIG``, else ./config.toml."""
    env = os.environ if env is None else env
    return path or env.get("SENDERGATE_CONFIG") or "config.toml"


def load_settings(path: str | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate a config file (see ``config_path_from`` for which one).

    ``env`` (default ``os.environ``) resolves ``env:NAME`` secrets. Raises ``ConfigError``
    naming the offending key; an unreadable file or bad TOML names the file.
    """
    env = os.environ if env is None else env
    file = config_path_from(path, env)
    try:
        with open(file, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(file, "config file not found") from None
    except OSError as exc:
        raise ConfigError(file, f"cannot read config file: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, f"invalid TOML: {exc}") from None
    return parse_settings(data, env, config_path=os.path.abspath(file))


def parse_settings(
    data: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    *,
    config_path: str | None = None,
) -> Settings:
    """Validate parsed TOML (a dict) into ``Settings``; raises ``ConfigError``."""
    root = _Table(data, "", os.environ if env is None else env)
    root.allow(
        "server",
        "store",
        "phone",
        "defaults",
        "forward",
        "api_keys",
        "sources",
        "mailboxes",
        "numbers",
        "org",
        "review",
    )
    phone = root.table("phone")
    phone.allow("default_region")
    region = phone.text("default_region", "US").upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigError(
            phone.key("default_region"), f"unknown region {region!r} (use e.g. US, GB, DE)"
        )
    defaults = root.table("defaults")
    defaults.allow("mail_filter_mode", "phone_filter_mode")
    org = root.table("org")
    org.allow("mail_rules", "phone_rules")
    return Settings(
        server=_server(root.table("server")),
        store=_store(root.table("store")),
        default_region=region,
        mail_filter_mode=cast(Mode, defaults.choice("mail_filter_mode", MODES, "blacklist")),
        phone_filter_mode=cast(Mode, defaults.choice("phone_filter_mode", MODES, "blacklist")),
        forward=_forward(root.table("forward")),
        api_keys=_api_keys(root.tables("api_keys"), region),
        sources=_sources(root.table("sources")),
        mailboxes=_mailboxes(root.tables("mailboxes"), region),
        numbers=_numbers(root.tables("numbers"), region),
        org_mail_rules=_rules(org.tables("mail_rules"), "mail", region),
        org_phone_rules=_rules(org.tables("phone_rules"), "phone", region),
        review=_review(root.table("review")),
        config_path=config_path,
    )


class _Table:
    """One TOML table being read: typed getters whose errors name the dotted key."""

    def __init__(self, data: Mapping[str, Any], path: str, env: Mapping[str, str]) -> None:
        self.data = data
        self.path = path
        self.env = env

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def allow(self, *names: str) -> None:
        """Refuse keys not in ``names``: a typo must not silently fall back to a default."""
        for name in self.data:
            if name not in names:
                hint = difflib.get_close_matches(name, names, n=1)
                detail = f"unknown key (did you mean {hint[0]!r}?)" if hint else "unknown key"
                raise ConfigError(self.key(name), detail)

    def _get(self, name: str, types: tuple[type, ...], label: str) -> Any:
        value = self.data.get(name, _MISSING)
        if value is _MISSING:
            return value
        # bool is an int in Python, never in config.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ConfigError(self.key(name), f"must be {label}, not {_toml_type(value)}")
        return value

    def has(self, name: str) -> bool:
        return name in self.data

    def text(self, name: str, default: str) -> str:
        value = self.opt_text(name)
        return default if value is None else value

    def opt_text(self, name: str) -> str | None:
        value = self._get(name, (str,), "a string")
        if value is _MISSING:
            return None
        if not value.strip():
            raise ConfigError(self.key(name), "must not be empty")
        return cast(str, value)

    def req_text(self, name: str) -> str:
        value = self.opt_text(name)
        if value is None:
            raise ConfigError(self.key(name), "is required")
        return value

    def secret(self, name: str) -> str | None:
        """A string that may be written ``env:NAME`` to read it from the environment."""
        value = self.opt_text(name)
        if value is None or not value.startswith("env:"):
            return value
        var = value.removeprefix("env:")
        if not _ENV_NAME.fullmatch(var):
            raise ConfigError(self.key(name), f"{value!r} is not a valid env:NAME reference")
        resolved = self.env.get(var)
        if resolved is None:
            raise ConfigError(self.key(name), f"environment variable {var} is not set")
        if not resolved.strip():
            raise ConfigError(self.key(name), f"environment variable {var} is empty")
        return resolved

    def flag(self, name: str, default: bool) -> bool:
        value = self._get(name, (bool,), "true or false")
        return default if value is _MISSING else cast(bool, value)

    def integer(self, name: str, default: int, *, lo: int = 1, hi: int | None = None) -> int:
        value = self.opt_integer(name, lo=lo, hi=hi)
        return default if value is None else value

    def opt_integer(self, name: str, *, lo: int = 1, hi: int | None = None) -> int | None:
        value = self._get(name, (int,), "an integer")
        if value is _MISSING:
            return None
        if value < lo or (hi is not None and value > hi):
            bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise ConfigError(self.key(name), f"must be {bounds}, not {value}")
        return cast(int, value)

    def positive(self, name: str, default: float) -> float:
        value = self.opt_positive(name)
        return default if value is None else value

    def opt_positive(self, name: str) -> float | None:
        value = self._get(name, (int, float), "a number")
        if value is _MISSING:
            return None
        if not value > 0 or value == float("inf"):
            raise ConfigError(self.key(name), f"must be a positive number, not {value}")
        return float(value)

    def choice(self, name: str, choices: Sequence[str], default: str | None) -> str:
        """One of ``choices``; required when ``default`` is None."""
        value = self.opt_text(name)
        if value is None:
            if default is None:
                raise ConfigError(self.key(name), f"is required (one of {_list(choices)})")
            return default
        if value not in choices:
            raise ConfigError(self.key(name), f"must be one of {_list(choices)}, not {value!r}")
        return value

    def str_list(self, name: str) -> tuple[str, ...]:
        value = self._get(name, (list,), "an array of strings")
        if value is _MISSING:
            return ()
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise ConfigError(f"{self.key(name)}[{i}]", "must be a non-empty string")
        return tuple(value)

    def url(self, name: str, *, required: bool = False, base: bool = False) -> str | None:
        """An absolute http(s) URL; a ``base`` URL (others are joined to it) loses a
        trailing slash and may not have a query or fragment."""
        value = self.req_text(name) if required else self.opt_text(name)
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or " " in value:
            raise ConfigError(self.key(name), f"must be an http:// or https:// URL, not {value!r}")
        try:
            _ = parts.port  # raises ValueError for a port that is not a number
        except ValueError:
            raise ConfigError(self.key(name), f"has an invalid port: {value!r}") from None
        if base:
            if parts.query or parts.fragment:
                raise ConfigError(self.key(name), "must not have a query string or fragment")
            return value.rstrip("/")
        return value

    def table(self, name: str) -> _Table:
        """A sub-table; an absent one reads as empty, so every default applies."""
        value = self._get(name, (dict,), "a table")
        return _Table({} if value is _MISSING else value, self.key(name), self.env)

    def tables(self, name: str) -> list[_Table]:
        """An array of tables (``[[name]]``)."""
        value = self._get(name, (list,), f"an array of tables ([[{self.key(name)}]])")
        if value is _MISSING:
            return []
        out = []
        for i, item in enumerate(value):
            path = f"{self.key(name)}[{i}]"
            if not isinstance(item, dict):
                raise ConfigError(path, f"must be a table, not {_toml_type(item)}")
            out.append(_Table(item, path, self.env))
        return out


def _toml_type(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    names |= {list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _list(choices: Sequence[str]) -> str:
    return ", ".join(choices)


def _server(t: _Table) -> ServerSettings:
    t.allow(
        "host",
        "port",
        "public_url",
        "max_body_bytes",
        "max_admin_body_bytes",
        "body_timeout_s",
        "access_log",
    )
    d = ServerSettings()
    public_url = t.url("public_url", base=True)
    return ServerSettings(
        host=t.text("host", d.host),
        port=t.integer("port", d.port, lo=0, hi=65535),
        public_url=public_url,
        max_body_bytes=t.integer("max_body_bytes", d.max_body_bytes),
        max_admin_body_bytes=t.integer("max_admin_body_bytes", d.max_admin_body_bytes),
        body_timeout_s=t.positive("body_timeout_s", d.body_timeout_s),
        access_log=t.flag("access_log", d.access_log),
    )


# Printable ASCII without spaces: a prefix is part of every key name that operators type
# into redis-cli. Braces are allowed for a hash tag.
_KEY_PREFIX = re.compile(r"[!-~]{1,64}")
REDIS_POLL_INTERVAL_S = 1.0  # pub/sub is the fast path; polling only backs it up


def _store(t: _Table) -> StoreSettings:
    t.allow(
        "url",
        "cold_start",
        "poll_interval_s",
        "event_retention_days",
        "key_prefix",
        "incremental_reload",
        "quarantine_journal",
        "thread_nice",
    )
    d = StoreSettings()
    url = t.secret("url") or d.url  # a Redis password may come from the environment
    redis = url.startswith(("redis://", "rediss://"))
    if url.startswith("sqlite:///"):
        if not url.removeprefix("sqlite:///").strip():
            raise ConfigError(t.key("url"), "sqlite:/// needs a file path")
    elif redis:
        try:
            parts = urlsplit(url)
            host, db = parts.hostname, parts.path.strip("/")
            _ = parts.port  # raises ValueError for a port that is not a number
        except ValueError as exc:
            raise ConfigError(t.key("url"), f"not a valid redis:// URL ({exc})") from None
        if not host:
            raise ConfigError(t.key("url"), "a redis:// URL needs a host")
        if db and not db.isdigit():
            raise ConfigError(t.key("url"), f"the database must be a number, not {db!r}")
    else:
        raise ConfigError(
            t.key("url"), "must be sqlite:///PATH or redis://HOST[:PORT][/DB] (or rediss://)"
        )
    prefix = t.opt_text("key_prefix")
    if prefix is not None:
        if not redis:
            raise ConfigError(t.key("key_prefix"), "applies to redis:// stores, not sqlite")
        if not _KEY_PREFIX.fullmatch(prefix):
            raise ConfigError(
                t.key("key_prefix"),
                f"must be 1-64 printable ASCII characters without spaces, not {prefix!r}",
            )
    return StoreSettings(
        url=url,
        cold_start=cast(
            Literal["fail_closed", "fail_open"],
            t.choice("cold_start", ("fail_closed", "fail_open"), d.cold_start),
        ),
        poll_interval_s=t.positive(
            "poll_interval_s", REDIS_POLL_INTERVAL_S if redis else d.poll_interval_s
        ),
        event_retention_days=t.integer("event_retention_days", d.event_retention_days),
        key_prefix=d.key_prefix if prefix is None else prefix,
        incremental_reload=t.flag("incremental_reload", d.incremental_reload),
        quarantine_journal=t.flag("quarantine_journal", d.quarantine_journal),
        thread_nice=t.integer("thread_nice", d.thread_nice, lo=0, hi=19),
    )


def _forward(t: _Table) -> ForwardSettings:
    t.allow("signing_secret", "timeout_s")
    secret = t.secret("signing_secret")
    if secret is not None:
        # Standard Webhooks secrets are base64, conventionally prefixed "whsec_".
        try:
            raw = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except binascii.Error:
            raw = b""
        if len(raw) < 16:
            raise ConfigError(
                t.key("signing_secret"),
                "must be a Standard Webhooks secret: whsec_ + base64 of at least 16 bytes",
            )
    return ForwardSettings(
        signing_secret=secret, timeout_s=t.positive("timeout_s", ForwardSettings().timeout_s)
    )


def _target_id(raw: str, region: str, key: str) -> str:
    """Normalise a mailbox address (has an "@") or one of our E.164 numbers."""
    from gateway.normalise import normalise_mailbox_address, normalise_number

    try:
        value = normalise_mailbox_address(raw) if "@" in raw else normalise_number(raw, region)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None
    if "@" in raw:
        if value == "invalid":
            raise ConfigError(key, f"{raw!r} is not a valid email address")
    elif not value.startswith("+"):
        raise ConfigError(key, f"{raw!r} is not a phone number (E.164, e.g. +14155550100)")
    return value


def _api_keys(tables: list[_Table], region: str) -> tuple[ApiKey, ...]:
    keys: list[ApiKey] = []
    for t in tables:
        t.allow("name", "sha256", "role", "targets")
        name = t.req_text("name")
        digest = t.req_text("sha256")
        if not _SHA256.fullmatch(digest):
            raise ConfigError(t.key("sha256"), "must be the 64-character hex SHA-256 of the key")
        role = cast(Role, t.choice("role", ("admin", "member"), None))
        targets = tuple(
            _target_id(raw, region, f"{t.key('targets')}[{i}]")
            for i, raw in enumerate(t.str_list("targets"))
        )
        if role == "member" and not targets:
            raise ConfigError(t.key("targets"), "a member key needs at least one target")
        if role == "admin" and targets:
            raise ConfigError(t.key("targets"), "only member keys have targets")
        for other in keys:
            if other.name == name:
                raise ConfigError(t.key("name"), f"duplicate api key name {name!r}")
            if other.sha256 == digest.lower():
                raise ConfigError(t.key("sha256"), f"same key as api key {other.name!r}")
        keys.append(ApiKey(name=name, sha256=digest.lower(), role=role, targets=targets))
    return tuple(keys)


def _sources(t: _Table) -> dict[str, SourceSettings]:
    sources: dict[str, SourceSettings] = {}
    for name in t.data:
        if not _SOURCE_NAME.fullmatch(name):
            raise ConfigError(
                t.key(name), "a source name is a URL path segment: letters, digits, - and _"
            )
        sources[name] = _source(t.table(name), name)
    return sources


def _source(t: _Table, name: str) -> SourceSettings:
    provider = t.choice("provider", PROVIDERS, None)
    t.allow(*_SOURCE_KEYS)
    verify = t.flag("verify", True)
    secret = t.secret("secret")
    if verify and secret is None and provider not in SECRETLESS_PROVIDERS:
        raise ConfigError(
            t.key("secret"),
            f"is required for a {provider} source (or set verify = false to accept "
            "unsigned requests, which is unsafe outside tests)",
        )
    if secret is not None:
        _check_secret(provider, secret, t.key("secret"))
    if t.has("drop_status") and provider not in EMAIL_PROVIDERS | {"generic"}:
        raise ConfigError(
            t.key("drop_status"), f"applies to email and generic sources, not {provider}"
        )
    if t.has("reject_reason") and provider not in REJECT_REASON_PROVIDERS:
        raise ConfigError(
            t.key("reject_reason"),
            f"applies to {_list(sorted(REJECT_REASON_PROVIDERS))} sources, not {provider}",
        )
    for key in ("api_key", "api_base_url"):
        if t.has(key) and provider != "telnyx":
            raise ConfigError(t.key(key), f"applies to telnyx sources, not {provider}")
    # Provider-specific keys live in [sources.NAME.options]; each provider module checks
    # its own (unknown keys and bad values name sources.NAME.options.KEY) when it is built.
    options = dict(t.table("options").data)
    return SourceSettings(
        name=name,
        provider=provider,
        secret=secret,
        forward_url=t.url("forward_url", required=True),
        verify=verify,
        allow_requires_auth=t.flag("allow_requires_auth", True),
        drop_status=t.opt_integer("drop_status", lo=200, hi=599),
        reject_reason=cast(
            Literal["rejected", "busy"],
            t.choice("reject_reason", ("rejected", "busy"), "rejected"),
        ),
        timeout_s=t.opt_positive("timeout_s"),
        api_key=t.secret("api_key"),
        api_base_url=t.url("api_base_url", base=True),
        options=options,
    )


def _check_secret(provider: str, secret: str, key: str) -> None:
    """Catch the secrets whose shape is known, so a paste error fails at start-up."""
    if provider in ("postmark", "sendgrid") and ":" not in secret:
        raise ConfigError(key, f"a {provider} secret is the Basic auth pair user:password")
    if provider == "telnyx":
        try:
            raw = base64.b64decode(secret, validate=True)
        except binascii.Error:
            raw = b""
        if len(raw) != 32:
            raise ConfigError(
                key, "a telnyx secret is the account's base64 Ed25519 public key (32 bytes)"
            )


def _mailboxes(tables: list[_Table], region: str) -> tuple[MailboxDecl, ...]:
    out: list[MailboxDecl] = []
    seen: dict[str, str] = {}
    for t in tables:
        t.allow("address", "filter_mode", "enforce", "forward_url", "rate_limit", "rules")
        address = _target_id(_mailbox_raw(t), region, t.key("address"))
        if address in seen:
            raise ConfigError(t.key("address"), f"{address} is already declared in {seen[address]}")
        seen[address] = t.path
        out.append(
            MailboxDecl(
                address=address,
                filter_mode=cast(Mode, t.choice("filter_mode", MODES, "blacklist")),
                enforce=t.flag("enforce", True),
                forward_url=t.url("forward_url"),
                rate_limit=_rate_limit(t),
                rules=_rules(t.tables("rules"), "mail", region),
            )
        )
    return tuple(out)


def _mailbox_raw(t: _Table) -> str:
    raw = t.req_text("address")
    if "@" not in raw:
        raise ConfigError(t.key("address"), f"{raw!r} is not an email address")
    return raw


def _numbers(tables: list[_Table], region: str) -> tuple[NumberDecl, ...]:
    out: list[NumberDecl] = []
    seen: dict[str, str] = {}
    for t in tables:
        t.allow("number", "filter_mode", "enforce", "voice_url", "sms_url", "rate_limit", "rules")
        raw = t.req_text("number")
        if "@" in raw:
            raise ConfigError(t.key("number"), f"{raw!r} is not a phone number")
        number = _target_id(raw, region, t.key("number"))
        if number in seen:
            raise ConfigError(t.key("number"), f"{number} is already declared in {seen[number]}")
        seen[number] = t.path
        out.append(
            NumberDecl(
                number=number,
                filter_mode=cast(Mode, t.choice("filter_mode", MODES, "blacklist")),
                enforce=t.flag("enforce", True),
                voice_url=t.url("voice_url"),
                sms_url=t.url("sms_url"),
                rate_limit=_rate_limit(t),
                rules=_rules(t.tables("rules"), "phone", region),
            )
        )
    return tuple(out)


def _rate_limit(t: _Table) -> str | None:
    value = t.opt_text("rate_limit")
    if value is not None and not _RATE_LIMIT.fullmatch(value.replace(" ", "")):
        raise ConfigError(
            t.key("rate_limit"), f"must look like 20/hour (N/second|minute|hour|day), not {value!r}"
        )
    return None if value is None else value.replace(" ", "")


def _rules(tables: list[_Table], family: Family, region: str) -> tuple[RuleDecl, ...]:
    from gateway.normalise import normalise_rule_target

    allowed = MAIL_MATCH_TYPES if family == "mail" else PHONE_MATCH_TYPES
    out: list[RuleDecl] = []
    seen: dict[tuple[str, str], str] = {}
    for t in tables:
        t.allow("action", "match_type", "match_target", "include_subdomains", "note")
        action = cast(Action, t.choice("action", ACTIONS, None))
        match_type = t.choice("match_type", MATCH_TYPES, None)
        if match_type not in allowed:
            where = (
                "mailbox and org.mail_rules" if family == "mail" else "number and org.phone_rules"
            )
            raise ConfigError(
                t.key("match_type"),
                f"{match_type} is not a {family} match type; {where} rules take {_list(allowed)}",
            )
        raw = t.opt_text("match_target")
        if raw is None:
            if match_type not in ("anonymous", "invalid"):
                raise ConfigError(t.key("match_target"), "is required")
            raw = match_type  # the target of these rules is that same word
        try:
            target = normalise_rule_target(match_type, raw, region)
        except ValueError as exc:
            raise ConfigError(t.key("match_target"), str(exc)) from None
        if t.has("include_subdomains") and match_type != "domain":
            raise ConfigError(t.key("include_subdomains"), "applies only to domain rules")
        slot = (match_type, target)
        if slot in seen:
            raise ConfigError(
                t.key("match_target"),
                f"duplicate of {seen[slot]} (same match_type and match_target in one scope)",
            )
        seen[slot] = t.path
        out.append(
            RuleDecl(
                action=action,
                match_type=match_type,
                match_target=target,
                include_subdomains=t.flag("include_subdomains", True),
                note=t.opt_text("note"),
            )
        )
    return tuple(out)


def _review(t: _Table) -> ReviewSettings:
    t.allow("interval", "min_age_days", "policies")
    interval = t.opt_text("interval")
    interval_s: float | None = None
    if interval is not None:
        m = _DURATION.fullmatch(interval.strip())
        if m is None:
            raise ConfigError(t.key("interval"), f"must look like 7d, 12h, 30m, not {interval!r}")
        interval_s = float(int(m[1]) * _DURATION_UNITS[m[2]])
    policies: list[ReviewPolicy] = []
    for p in t.tables("policies"):
        p.allow(
            "name",
            "action",
            "state",
            "channel",
            "min_count",
            "min_dropped",
            "tld_in",
            "domain_in",
            "category_in",
            "number_type_in",
            "country_in",
        )
        name = p.req_text("name")
        if any(other.name == name for other in policies):
            raise ConfigError(p.key("name"), f"duplicate policy name {name!r}")
        channel: Family | None = None
        if p.has("channel"):
            # Contacts are kept per scope, so a policy chooses a family, not sms/voice.
            picked = p.choice("channel", ("mail", "email", "phone"), None)
            channel = "phone" if picked == "phone" else "mail"
        number_types = tuple(v.lower() for v in p.str_list("number_type_in"))
        for i, value in enumerate(number_types):
            if value not in _NUMBER_TYPES:
                raise ConfigError(
                    f"{p.key('number_type_in')}[{i}]",
                    f"unknown number type {value!r} (one of {_list(sorted(_NUMBER_TYPES))})",
                )
        countries = tuple(v.upper() for v in p.str_list("country_in"))
        for i, value in enumerate(countries):
            if value not in phonenumbers.SUPPORTED_REGIONS:
                raise ConfigError(f"{p.key('country_in')}[{i}]", f"unknown region {value!r}")
        policies.append(
            ReviewPolicy(
                name=name,
                action=cast(Action, p.choice("action", ACTIONS, None)),
                state=cast(Literal["unset", "any"], p.choice("state", ("unset", "any"), "unset")),
                channel=channel,
                min_count=p.opt_integer("min_count"),
                min_dropped=p.opt_integer("min_dropped"),
                tld_in=tuple(_idna(v.lower().strip(".")) for v in p.str_list("tld_in")),
                domain_in=tuple(_idna(v.lower().strip(".")) for v in p.str_list("domain_in")),
                category_in=p.str_list("category_in"),
                number_type_in=number_types,
                country_in=countries,
            )
        )
    return ReviewSettings(
        interval_s=interval_s,
        min_age_days=t.integer("min_age_days", ReviewSettings().min_age_days, lo=0),
        policies=tuple(policies),
    )


def _idna(domain: str) -> str:
    """Review lists compare with normalised senders, whose domains are A-labels."""
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain
