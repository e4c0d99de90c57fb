"""config.toml + environment → frozen, validated ``Settings``.

Errors name the offending key (``ConfigError.key``, a dotted path such as
``sources.twilio.secret``); ``sendergate serve`` prints them and exits with status 2.

(The loader ``load_settings`` / ``parse_settings`` is below the dataclasses.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gateway.models import Action, MatchType, Mode

Role = Literal["admin", "member"]


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = None  # base URL providers call; URL-signed schemes rebuild from it
    max_body_bytes: int = 10 * 1024 * 1024
    max_admin_body_bytes: int = 1024 * 1024
    access_log: bool = False


@dataclass(frozen=True, slots=True)
class StoreSettings:
    url: str = "sqlite:///./data/sendergate.db"
    cold_start: Literal["fail_closed", "fail_open"] = "fail_closed"
    poll_interval_s: float = 0.25  # how often a SQLite process checks for others' writes
    event_retention_days: int = 14


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
    config_path: str | None = None
