"""A typed Python client of the SenderGate admin API (SPEC §6), sync and async.

::

    from gateway.client import SenderGateClient, SenderGateError

    with SenderGateClient("http://127.0.0.1:8080", api_key="sg_...") as gw:
        gw.create_mailbox("sales@acme.example", filter_mode="whitelist")
        try:
            gw.create_rule("sales@acme.example", "block", "domain", "spam.example")
        except SenderGateError as exc:  # e.g. 409, a rule for spam.example exists already
            print(exc.status, exc.title, exc.detail, exc.existing_rule_id)

    async with AsyncSenderGateClient(url, api_key=key) as gw:
        page = await gw.list_all_rules(action="block", limit=200)

Both clients have the same methods with the same arguments; the async ones are
coroutines. Answers are the API's JSON as plain dicts and lists, described by the
``TypedDict`` classes below. Rules are addressed by their *scope*, spelt as in the API and
the CLI's CSV files: a mailbox address, a number, ``org:mail`` or ``org:phone``.

Every failure raises ``SenderGateError``: an HTTP error (any 4xx or 5xx) carries its
``status`` and the ``application/problem+json`` body as ``problem`` (``title``,
``detail`` and extension members such as ``existing_rule_id``); a transport failure
(nothing listening, DNS, timeout) raises its subclass ``SenderGateConnectionError`` with
``status == 0``. ``readyz()`` is the one exception: its 503 answer is a result (the
failing dependency is named in it), not an error.

How it is built: every endpoint is written once, in ``_Endpoints``, as a function that
turns the method's arguments into an ``ApiCall`` (verb, path, query, JSON body). The
``endpoint`` descriptor binds those functions to a client, whose ``_send`` performs the
call: with ``httpx.Client`` in ``SenderGateClient`` and ``httpx.AsyncClient`` in
``AsyncSenderGateClient``. Checking the answer (``_result``) is shared too, so the two
clients differ only in how bytes travel.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import (
    Any,
    Generic,
    Literal,
    NotRequired,
    ParamSpec,
    Required,
    Self,
    TypedDict,
    TypeVar,
    Unpack,
    overload,
)
from urllib.parse import quote

import httpx

from gateway.models import Action, MatchType, Mode, Verdict

__all__ = [
    "BATCH_MAX",
    "DEFAULT_URL",
    "ApiCall",
    "AsyncSenderGateClient",
    "BatchItem",
    "BatchResult",
    "Decision",
    "Event",
    "EventPage",
    "Mailbox",
    "NewRule",
    "Number",
    "Page",
    "Rule",
    "ScopeMatches",
    "SenderGateClient",
    "SenderGateConnectionError",
    "SenderGateError",
]

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT_S = 30.0
BATCH_MAX = 1000  # rules per POST /v1/contact-rules/batch (the server refuses more)

T = TypeVar("T")
P = ParamSpec("P")

# --- answers -----------------------------------------------------------------------------


class ModeChangeNotice(TypedDict):
    new_filter_mode: Mode
    redundant_rule_action: Action
    redundant_rule_count: int


class Mailbox(TypedDict):
    address: str
    filter_mode: Mode
    enforce: bool
    forward_url: str | None
    rate_limit: str | None
    created_at: str
    updated_at: str
    filter_mode_change_notice: NotRequired[ModeChangeNotice]  # PATCH that changed the mode


class Number(TypedDict):
    number: str
    filter_mode: Mode
    enforce: bool
    voice_url: str | None
    sms_url: str | None
    rate_limit: str | None
    created_at: str
    updated_at: str
    filter_mode_change_notice: NotRequired[ModeChangeNotice]


class Rule(TypedDict):
    id: int
    scope: str
    action: Action
    match_type: MatchType
    match_target: str
    include_subdomains: bool
    status: Literal["active", "paused", "deleted"]
    expires_at: str | None
    note: str | None
    source: str
    hits: int
    last_matched_at: str | None
    created_at: str
    updated_at: str


class Page(TypedDict, Generic[T]):
    """One page of mailboxes, numbers or rules (newest first)."""

    items: list[T]
    limit: int
    offset: int
    total: int


class NewRule(TypedDict, total=False):
    """One rule of ``batch_create_rules``: a rule plus the ``scope`` it goes in."""

    scope: Required[str]
    action: Required[Action]
    match_type: Required[MatchType]
    match_target: Required[str]
    include_subdomains: bool
    status: Literal["active", "paused"]
    expires_at: str | None
    note: str | None
    source: Literal["api", "cli"]


class BatchItem(TypedDict):
    index: int  # position in the request's list
    status: Literal["created", "duplicate", "refused"]
    rule: NotRequired[Rule]  # created
    existing_rule_id: NotRequired[int]  # duplicate
    reason: NotRequired[str]  # refused


class BatchResult(TypedDict):
    items: list[BatchItem]
    created: int
    duplicate: int
    refused: int


class Decision(TypedDict):
    verdict: Verdict
    rule: int | None
    reason: str
    mode: Mode
    sender: str
    recipient: str
    channel: str
    action: NotRequired[Action | None]
    would_drop: bool
    unauthenticated_allow: bool
    known_recipient: NotRequired[bool]


class ScopeMatch(TypedDict):
    scope: str
    rule: int
    action: Action


class ScopeMatches(TypedDict):
    """``check_all``: every scope in which a sender is blocked, muted or allowed."""

    sender: str
    channel: str
    scopes: list[ScopeMatch]


class Event(TypedDict):
    id: str
    source: str
    provider: str
    channel: str
    provider_event_id: str | None
    received_at: str
    decision: Decision
    sender: str
    envelope_sender: str | None
    recipient: str
    outcome: str
    forward_url: str | None
    forward_status: int | None
    body_size: int
    extra: dict[str, Any]
    # get_event only: the request as received
    method: NotRequired[str]
    path: NotRequired[str]
    query: NotRequired[str]
    content_type: NotRequired[str | None]
    headers: NotRequired[list[list[str]]]
    body: NotRequired[str]
    body_encoding: NotRequired[Literal["utf-8", "base64"]]
    # release_event only: the application's answer
    response_status: NotRequired[int]


ContactState = Literal["blocked", "whitelisted", "muted", "unset"]


class Contact(TypedDict, total=False):
    sender: str
    scope: str
    state: ContactState
    rule: int | None
    count: int
    delivered: int
    muted: int
    dropped: int
    first_seen: str
    last_seen: str
    category: str | None
    number_type: str | None
    region: str | None


class ContactPage(TypedDict):
    data: list[Contact]
    page: int
    per_page: int
    total: int
    total_pages: int


class EventPage(TypedDict):
    items: list[Event]
    next_cursor: str | None  # pass as cursor= for the next (older) page; None at the end


# --- request options -------------------------------------------------------------------


class MailboxFields(TypedDict, total=False):
    filter_mode: Mode
    enforce: bool  # False = shadow mode: decide and record, deliver everything
    forward_url: str | None
    rate_limit: str | None  # "N/second|minute|hour|day" per sender


class NumberFields(TypedDict, total=False):
    filter_mode: Mode
    enforce: bool
    voice_url: str | None
    sms_url: str | None
    rate_limit: str | None


class RuleOptions(TypedDict, total=False):
    include_subdomains: bool  # domain rules only; the server's default is True
    status: Literal["active", "paused"]
    expires_at: str | datetime | None  # RFC 3339 with an offset, or an aware datetime
    note: str | None
    source: Literal["api", "cli"]


class RuleChanges(TypedDict, total=False):
    action: Action
    status: Literal["active", "paused"]
    expires_at: str | datetime | None
    note: str | None


# --- errors -----------------------------------------------------------------------------


class SenderGateError(Exception):
    """The gateway answered 4xx/5xx, or could not be reached (``status == 0``).

    ``problem`` is the RFC 9457 body as sent (``type``, ``title``, ``status``, ``detail``
    and extension members such as ``existing_rule_id`` or ``errors``); for an answer that
    is not problem+json it holds at least ``title`` and ``detail``. ``message`` (also
    ``str(exc)``) reads ``"<status> <title>: <detail>"``.
    """

    def __init__(
        self, status: int, problem: Mapping[str, Any] | None = None, message: str | None = None
    ) -> None:
        self.status = status
        self.problem: dict[str, Any] = dict(problem or {})
        if message is None:
            message = f"{status} {self.title}"
            if self.detail:
                message += f": {self.detail}"
            if self.existing_rule_id is not None:
                message += f" (existing_rule_id: {self.existing_rule_id})"
        self.message = message
        super().__init__(message)

    @property
    def title(self) -> str:
        return str(self.problem.get("title") or "")

    @property
    def detail(self) -> str:
        return str(self.problem.get("detail") or "")

    @property
    def existing_rule_id(self) -> int | None:
        """The rule a 409 duplicate collides with (``None`` for other errors)."""
        value = self.problem.get("existing_rule_id")
        return value if isinstance(value, int) else None

    @classmethod
    def from_response(cls, response: httpx.Response) -> SenderGateError:
        problem: dict[str, Any] = {}
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            problem = body
        if not problem.get("title"):
            problem["title"] = response.reason_phrase or "Error"
        if "detail" not in problem:
            text = response.text.strip()
            problem["detail"] = text[:300] if text and body is None else ""
        return cls(response.status_code, problem)


class SenderGateConnectionError(SenderGateError):
    """The request did not get an HTTP answer: refused, unresolvable, timed out, ..."""

    def __init__(self, message: str) -> None:
        super().__init__(0, {"title": "Connection error", "detail": message}, message)


def _transport_error(base_url: str, timeout: float, exc: httpx.TransportError) -> SenderGateError:
    if isinstance(exc, httpx.TimeoutException):
        why = f"no answer within {timeout:g} s ({type(exc).__name__})"
    elif isinstance(exc, httpx.ConnectError):
        why = f"cannot connect ({exc or 'connection failed'}); is the gateway running there?"
    else:
        why = f"{type(exc).__name__}: {exc}"
    return SenderGateConnectionError(f"{base_url}: {why}")


# --- one endpoint = one ApiCall ----------------------------------------------------------

Query = Mapping[str, str | int | bool | None]


@dataclass(frozen=True, slots=True)
class ApiCall(Generic[T]):
    """What one client method does over HTTP. ``T`` is the type of the decoded answer."""

    method: str
    path: str
    query: Query = field(default_factory=dict)
    json: Any = None
    accept: tuple[int, ...] = ()  # non-2xx statuses that are answers, not errors

    def params(self) -> dict[str, str | int]:
        """The query without unset values; booleans spelt ``true``/``false``."""
        out: dict[str, str | int] = {}
        for name, value in self.query.items():
            if value is None:
                continue
            out[name] = ("true" if value else "false") if isinstance(value, bool) else value
        return out


def _seg(value: str | int) -> str:
    """One path segment: ``+`` (numbers), ``/``, ``?`` and ``#`` encoded, ``@`` kept."""
    return quote(str(value), safe="@")


def _rules_path(scope: str) -> str:
    """The contact-rules collection of a scope (mailbox, number, org:mail, org:phone)."""
    lowered = scope.strip().lower()
    if lowered in ("org:mail", "org:phone"):
        return f"/v1/org/{lowered[4:]}/contact-rules"
    if "@" in scope:
        return f"/v1/mailboxes/{_seg(scope)}/contact-rules"
    return f"/v1/numbers/{_seg(scope)}/contact-rules"


def _contacts_path(scope: str) -> str:
    """The contacts collection of a scope (mailbox, number, org:mail, org:phone)."""
    return _rules_path(scope).removesuffix("/contact-rules") + "/contacts"


def _body(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON body: datetimes as RFC 3339 (they must be timezone-aware)."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise ValueError(f"{name}: give a timezone-aware datetime")
            value = value.isoformat()
        out[name] = value
    return out


def _result(call: ApiCall[Any], response: httpx.Response) -> Any:
    """The decoded answer of a call, or ``SenderGateError``."""
    if not (response.is_success or response.status_code in call.accept):
        raise SenderGateError.from_response(response)
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        raise SenderGateError(
            response.status_code,
            {"title": "Invalid answer", "detail": "the answer is not JSON"},
            f"{call.method} {call.path}: the gateway's answer is not JSON",
        ) from None


class endpoint(Generic[P, T]):
    """Binds a request-building function to a client: on ``SenderGateClient`` the method
    returns ``T``, on ``AsyncSenderGateClient`` an awaitable of ``T``."""

    def __init__(self, build: Callable[P, ApiCall[T]]) -> None:
        self.build = build
        functools.update_wrapper(self, build)  # type: ignore[arg-type]
        # help(client.method) shows what the method returns, not the ApiCall it builds
        built = inspect.signature(build)
        answer = str(built.return_annotation).removeprefix("ApiCall[").removesuffix("]")
        self.signature = built.replace(return_annotation=answer)

    @overload
    def __get__(self, client: None, owner: type[Any]) -> Self: ...
    @overload
    def __get__(self, client: SenderGateClient, owner: type[Any]) -> Callable[P, T]: ...
    @overload
    def __get__(
        self, client: AsyncSenderGateClient, owner: type[Any]
    ) -> Callable[P, Awaitable[T]]: ...
    def __get__(self, client: Any, owner: type[Any]) -> Any:
        if client is None:
            return self
        build = self.build

        @functools.wraps(build)
        def method(*args: P.args, **kwargs: P.kwargs) -> Any:
            return client._send(build(*args, **kwargs))

        method.__signature__ = self.signature  # type: ignore[attr-defined]
        return method


class _Endpoints:
    """Every admin API endpoint, once. Each function builds the ``ApiCall`` for its
    arguments (they have no ``self``: ``endpoint`` binds them to the client)."""

    # health

    @endpoint
    def healthz() -> ApiCall[dict[str, Any]]:
        """Liveness: ``{"status": "ok"}`` when the process answers."""
        return ApiCall("GET", "/healthz")

    @endpoint
    def readyz() -> ApiCall[dict[str, Any]]:
        """Readiness: ``{"status": "ok"|"failing", "checks": {name: {...}}}``. A 503 is
        returned, not raised: the answer names the failing dependency."""
        return ApiCall("GET", "/readyz", accept=(503,))

    # mailboxes

    @endpoint
    def list_mailboxes(
        *, limit: int | None = None, offset: int | None = None
    ) -> ApiCall[Page[Mailbox]]:
        """Mailboxes, newest first (a member key sees its own)."""
        return ApiCall("GET", "/v1/mailboxes", {"limit": limit, "offset": offset})

    @endpoint
    def create_mailbox(address: str, **fields: Unpack[MailboxFields]) -> ApiCall[Mailbox]:
        """Create a mailbox; ``address`` is stored normalised (409 if it exists)."""
        return ApiCall("POST", "/v1/mailboxes", json={"address": address, **fields})

    @endpoint
    def get_mailbox(address: str) -> ApiCall[Mailbox]:
        return ApiCall("GET", f"/v1/mailboxes/{_seg(address)}")

    @endpoint
    def update_mailbox(address: str, **changes: Unpack[MailboxFields]) -> ApiCall[Mailbox]:
        """Change fields (``None`` clears a URL or rate limit). A mode change answers with
        ``filter_mode_change_notice``."""
        return ApiCall("PATCH", f"/v1/mailboxes/{_seg(address)}", json=dict(changes))

    @endpoint
    def delete_mailbox(address: str) -> ApiCall[None]:
        """Delete a mailbox and its rules."""
        return ApiCall("DELETE", f"/v1/mailboxes/{_seg(address)}")

    # numbers

    @endpoint
    def list_numbers(
        *, limit: int | None = None, offset: int | None = None
    ) -> ApiCall[Page[Number]]:
        """Numbers, newest first (a member key sees its own)."""
        return ApiCall("GET", "/v1/numbers", {"limit": limit, "offset": offset})

    @endpoint
    def create_number(number: str, **fields: Unpack[NumberFields]) -> ApiCall[Number]:
        """Create a number; any form that normalises to E.164 is accepted."""
        return ApiCall("POST", "/v1/numbers", json={"number": number, **fields})

    @endpoint
    def get_number(number: str) -> ApiCall[Number]:
        return ApiCall("GET", f"/v1/numbers/{_seg(number)}")

    @endpoint
    def update_number(number: str, **changes: Unpack[NumberFields]) -> ApiCall[Number]:
        return ApiCall("PATCH", f"/v1/numbers/{_seg(number)}", json=dict(changes))

    @endpoint
    def delete_number(number: str) -> ApiCall[None]:
        """Delete a number and its rules."""
        return ApiCall("DELETE", f"/v1/numbers/{_seg(number)}")

    # rules of one scope: a mailbox, a number, org:mail or org:phone

    @endpoint
    def list_rules(
        scope: str,
        *,
        action: Action | None = None,
        match_type: MatchType | None = None,
        status: Literal["active", "paused", "deleted"] | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> ApiCall[Page[Rule]]:
        """Rules of one scope, newest first; deleted ones only with ``status="deleted"``."""
        query = {
            "action": action,
            "match_type": match_type,
            "status": status,
            "limit": limit,
            "offset": offset,
        }
        return ApiCall("GET", _rules_path(scope), query)

    @endpoint
    def create_rule(
        scope: str,
        action: Action,
        match_type: MatchType,
        match_target: str | None = None,
        **options: Unpack[RuleOptions],
    ) -> ApiCall[Rule]:
        """Create a rule in ``scope``. ``match_target`` defaults to the match type for
        ``invalid`` and ``anonymous``. 409 (``existing_rule_id``) for a duplicate."""
        if match_target is None and match_type in ("invalid", "anonymous"):
            match_target = match_type
        body = {"action": action, "match_type": match_type, "match_target": match_target}
        return ApiCall("POST", _rules_path(scope), json=_body({**body, **options}))

    @endpoint
    def get_rule(scope: str, rule_id: int) -> ApiCall[Rule]:
        return ApiCall("GET", f"{_rules_path(scope)}/{_seg(rule_id)}")

    @endpoint
    def update_rule(scope: str, rule_id: int, **changes: Unpack[RuleChanges]) -> ApiCall[Rule]:
        """Change action, status, expires_at or note (the match never changes)."""
        return ApiCall("PATCH", f"{_rules_path(scope)}/{_seg(rule_id)}", json=_body(changes))

    @endpoint
    def delete_rule(scope: str, rule_id: int) -> ApiCall[None]:
        """Mark a rule deleted (its slot is freed)."""
        return ApiCall("DELETE", f"{_rules_path(scope)}/{_seg(rule_id)}")

    # every scope

    @endpoint
    def list_all_rules(
        *,
        scope: str | None = None,
        channel: Literal["mail", "phone", "email", "sms", "voice"] | None = None,
        action: Action | None = None,
        match_type: MatchType | None = None,
        match_target: str | None = None,
        status: Literal["active", "paused", "deleted"] | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> ApiCall[Page[Rule]]:
        """Rules of every scope, newest first (admin key)."""
        query = {
            "scope": scope,
            "channel": channel,
            "action": action,
            "match_type": match_type,
            "match_target": match_target,
            "status": status,
            "limit": limit,
            "offset": offset,
        }
        return ApiCall("GET", "/v1/contact-rules", query)

    @endpoint
    def batch_create_rules(rules: Sequence[NewRule]) -> ApiCall[BatchResult]:
        """Create up to ``BATCH_MAX`` rules in one call (admin key). Each item of the
        answer says created, duplicate (``existing_rule_id``) or refused (``reason``)."""
        return ApiCall("POST", "/v1/contact-rules/batch", json={"rules": list(rules)})

    # decisions

    @endpoint
    def check(
        sender: str,
        to: str,
        *,
        channel: Literal["email", "sms", "voice"] | None = None,
        authenticated: bool | None = None,
    ) -> ApiCall[Decision]:
        """The decision for ``sender`` → ``to`` with its explanation. Email senders are
        assumed authenticated unless ``authenticated=False``."""
        query = {"from": sender, "to": to, "channel": channel, "authenticated": authenticated}
        return ApiCall("GET", "/v1/check", query)

    @endpoint
    def check_all(
        sender: str, *, channel: Literal["email", "sms", "voice"] | None = None
    ) -> ApiCall[ScopeMatches]:
        """Every scope in which ``sender`` is blocked, muted or allowed (admin key)."""
        return ApiCall("GET", "/v1/check", {"from": sender, "channel": channel})

    # events and quarantine

    @endpoint
    def list_events(
        *,
        verdict: Verdict | None = None,
        outcome: Literal["forwarded", "quarantined", "forward_failed", "released"] | None = None,
        target: str | None = None,
        sender: str | None = None,
        since: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> ApiCall[EventPage]:
        """Events, newest first; follow ``next_cursor`` for older ones."""
        query = {
            "verdict": verdict,
            "outcome": outcome,
            "target": target,
            "sender": sender,
            "since": since,
            "cursor": cursor,
            "limit": limit,
        }
        return ApiCall("GET", "/v1/events", query)

    @endpoint
    def get_event(event_id: str) -> ApiCall[Event]:
        """One event with the request as received (headers, body)."""
        return ApiCall("GET", f"/v1/events/{_seg(event_id)}")

    @endpoint
    def release_event(event_id: str) -> ApiCall[Event]:
        """Forward a quarantined (or forward_failed) event to its application now (admin
        key); 409 when it is not in quarantine, 502 when the application refuses it."""
        return ApiCall("POST", f"/v1/events/{_seg(event_id)}/release")

    # contacts, review and audit

    @endpoint
    def list_contacts(
        scope: str | None = None,
        *,
        state: ContactState | None = None,
        sort: Literal["count", "last_seen", "first_seen"] | None = None,
        descending: bool | None = None,
        page: int | None = None,
        per_page: int | None = None,
        channel: Literal["mail", "phone"] | None = None,
    ) -> ApiCall[ContactPage]:
        """Contacts seen in ``scope`` (a mailbox, a number, ``org:mail``, ``org:phone``), or
        across every scope when ``scope`` is None (admin key; ``channel`` filters)."""
        query: dict[str, str | int | bool | None] = {
            "state": state,
            "sort": sort,
            "dir": None if descending is None else ("desc" if descending else "asc"),
            "page": page,
            "per_page": per_page,
        }
        if scope is None:
            query["channel"] = channel
            return ApiCall("GET", "/v1/contacts", query)
        return ApiCall("GET", _contacts_path(scope), query)

    @endpoint
    def get_contact(scope: str, sender: str) -> ApiCall[Contact]:
        """One contact of a scope (any spelling of the sender)."""
        return ApiCall("GET", f"{_contacts_path(scope)}/{_seg(sender)}")

    @endpoint
    def set_contact(
        scope: str,
        sender: str,
        *,
        state: ContactState | None = None,
        category: str | Literal[False] | None = False,
    ) -> ApiCall[Contact]:
        """Set a contact's state — writes, changes or removes its exact rule (admin key) —
        and/or its category (``None`` clears it; leave it out to keep it)."""
        body: dict[str, Any] = {}
        if state is not None:
            body["state"] = state
        if category is not False:
            body["category"] = category
        return ApiCall("PUT", f"{_contacts_path(scope)}/{_seg(sender)}", json=body)

    @endpoint
    def review(*, apply: bool = False) -> ApiCall[dict[str, Any]]:
        """Run the review policies over the contacts: a dry run, or ``apply=True`` to write
        the proposed rules (admin key)."""
        return ApiCall("POST", "/v1/review", json={"apply": apply})

    @endpoint
    def list_audit(
        *,
        scope: str | None = None,
        actor: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> ApiCall[Page[dict[str, Any]]]:
        """Who changed which rule or target, newest first (admin key)."""
        query = {"scope": scope, "actor": actor, "limit": limit, "offset": offset}
        return ApiCall("GET", "/v1/audit", query)


# --- the two clients ---------------------------------------------------------------------


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"Accept": "application/json", "User-Agent": "sendergate-client"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


class SenderGateClient(_Endpoints):
    """Blocking client. Use as a context manager, or call ``close()``.

    ``transport`` is passed to ``httpx.Client`` (tests, proxies, retries).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    def _send(self, call: ApiCall[T]) -> T:
        try:
            response = self._http.request(
                call.method, call.path, params=call.params(), json=call.json
            )
        except httpx.TransportError as exc:
            raise _transport_error(self.base_url, self.timeout, exc) from exc
        result: T = _result(call, response)
        return result

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncSenderGateClient(_Endpoints):
    """The same methods as ``SenderGateClient``, as coroutines. ``async with`` it, or
    ``await aclose()``."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    async def _send(self, call: ApiCall[T]) -> T:
        try:
            response = await self._http.request(
                call.method, call.path, params=call.params(), json=call.json
            )
        except httpx.TransportError as exc:
            raise _transport_error(self.base_url, self.timeout, exc) from exc
        result: T = _result(call, response)
        return result

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
