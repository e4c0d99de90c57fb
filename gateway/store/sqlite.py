"""The embedded store: one SQLite file in WAL mode (``[store] url = "sqlite:///PATH"``).

Every query runs on one worker thread owned by the store, on a connection created on
that thread; coroutines hand work to it with ``run_in_executor`` so that the event loop
never waits on a lock or an fsync. Writes use ``BEGIN IMMEDIATE`` so that two processes
never deadlock upgrading a read lock, and ``busy_timeout`` makes them queue instead.

Timestamps are stored as INTEGER microseconds since the Unix epoch (UTC): exact at the
microsecond, ordered as numbers, and cheap to turn into epoch floats for the snapshot.
(In the sqlite3 shell: ``datetime(created_at / 1000000, 'unixepoch')``.)

The schema is versioned with ``PRAGMA user_version``; ``_MIGRATIONS[n]`` takes the file
from version n to n + 1. Add a step at the end for a schema change; never edit one that
has shipped.

SQL text is assembled only from this module's constant column lists, column names
checked against ``_TARGET_FIELDS`` / ``_RULE_FIELDS`` / ``_CONTACT_SORT_COLUMNS``, and
``?`` / ``:name`` placeholders; every value is bound. That is why the ``S608``
(string-built SQL) warnings are silenced line by line.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

from gateway.errors import BadRequest, Conflict, DuplicateRule, StoreUnavailable
from gateway.models import ORG_MAIL, ORG_PHONE, NewRule, Rule, Target, TargetKind
from gateway.store.base import (
    CHANGE_LOG_KEEP,
    CHANGE_LOG_MAX_RULES,
    CHANGE_LOG_MAX_SCOPES,
    DELIVERED_OUTCOMES,
    AuditEntry,
    Change,
    Contact,
    ContactDelta,
    ContactFilter,
    ContactSort,
    EventFilter,
    EventRecord,
    NewAudit,
    RuleFilter,
    RuleState,
    SnapshotRule,
    StoredAnswer,
    exact_match_type,
)

log = logging.getLogger("sendergate.store.sqlite")

P = ParamSpec("P")
T = TypeVar("T")

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)

# Each step is a list of statements run in one transaction together with the
# ``user_version`` bump (not ``executescript``, which would commit half-way).
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 0 → 1: targets, rules, events and the version counter.
    (
        """CREATE TABLE meta (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            version INTEGER NOT NULL
        )""",
        "INSERT INTO meta (id, version) VALUES (1, 0)",
        # Enum columns carry no CHECK constraints: the API validates them, and adding a
        # value to a CHECK in SQLite means rebuilding the table.
        """CREATE TABLE targets (
            kind TEXT NOT NULL,
            id TEXT NOT NULL,
            filter_mode TEXT NOT NULL,
            enforce INTEGER NOT NULL,
            forward_url TEXT,
            voice_url TEXT,
            sms_url TEXT,
            rate_limit TEXT,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            PRIMARY KEY (kind, id)
        )""",
        "CREATE INDEX targets_kind_created ON targets (kind, created_at DESC, id)",
        """CREATE TABLE rules (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            scope TEXT NOT NULL,
            action TEXT NOT NULL,
            match_type TEXT NOT NULL,
            match_target TEXT NOT NULL,
            include_subdomains INTEGER NOT NULL,
            status TEXT NOT NULL,
            expires_at INTEGER,
            note TEXT,
            source TEXT NOT NULL,
            hits INTEGER NOT NULL DEFAULT 0,
            last_matched_at INTEGER,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL
        )""",
        # The slot rule of SPEC §3, enforced by the database itself so that it holds
        # across processes (two workers, the CLI) and not only within one.
        """CREATE UNIQUE INDEX rules_slot ON rules (scope, match_type, match_target)
            WHERE status != 'deleted'""",
        "CREATE INDEX rules_scope_created ON rules (scope, created_at DESC, id DESC)",
        "CREATE INDEX rules_created ON rules (created_at DESC, id DESC)",
        """CREATE TABLE events (
            id TEXT PRIMARY KEY,
            source TEXT NOT NULL,
            provider TEXT NOT NULL,
            channel TEXT NOT NULL,
            provider_event_id TEXT,
            sender TEXT NOT NULL,
            envelope_sender TEXT,
            recipient TEXT NOT NULL,
            verdict TEXT NOT NULL,
            rule INTEGER,
            reason TEXT NOT NULL,
            mode TEXT NOT NULL,
            would_drop INTEGER NOT NULL,
            unauthenticated_allow INTEGER NOT NULL,
            outcome TEXT NOT NULL,
            received_at INTEGER NOT NULL,
            method TEXT NOT NULL,
            path TEXT NOT NULL,
            query TEXT NOT NULL,
            content_type TEXT NOT NULL,
            headers TEXT NOT NULL,
            body BLOB NOT NULL,
            forward_url TEXT,
            forward_status INTEGER,
            response_status INTEGER,
            response_content_type TEXT,
            response_body BLOB,
            extra TEXT NOT NULL
        )""",
        # Listing is newest first by (received_at, id); each filter index ends with the
        # same pair so that a filtered page is an index range, not a sort.
        "CREATE INDEX events_received ON events (received_at, id)",
        # (dropped by 4 → 5)
        """CREATE INDEX events_dedupe
            ON events (source, provider_event_id, recipient, received_at)""",
        "CREATE INDEX events_verdict ON events (verdict, received_at, id)",
        "CREATE INDEX events_recipient ON events (recipient, received_at, id)",
        "CREATE INDEX events_sender ON events (sender, received_at, id)",
    ),
    # 1 → 2: contacts and the audit log (issue 5).
    (
        # match_type is the exact rule type for this sender (store.base.exact_match_type),
        # kept on the row so that the join to a contact's exact rule is an index lookup.
        """CREATE TABLE contacts (
            scope TEXT NOT NULL,
            sender TEXT NOT NULL,
            family TEXT NOT NULL,
            match_type TEXT NOT NULL,
            count INTEGER NOT NULL,
            delivered INTEGER NOT NULL,
            muted INTEGER NOT NULL,
            dropped INTEGER NOT NULL,
            first_seen INTEGER NOT NULL,
            last_seen INTEGER NOT NULL,
            category TEXT,
            number_type TEXT,
            region TEXT,
            PRIMARY KEY (scope, sender)
        ) WITHOUT ROWID""",
        "CREATE INDEX contacts_scope_count ON contacts (scope, count, sender)",
        "CREATE INDEX contacts_scope_last ON contacts (scope, last_seen, sender)",
        "CREATE INDEX contacts_scope_first ON contacts (scope, first_seen, sender)",
        "CREATE INDEX contacts_count ON contacts (count, scope, sender)",
        "CREATE INDEX contacts_last ON contacts (last_seen, scope, sender)",
        "CREATE INDEX contacts_first ON contacts (first_seen, scope, sender)",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at INTEGER NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            scope TEXT,
            rule_id INTEGER,
            before TEXT,
            after TEXT
        )""",
        "CREATE INDEX audit_at ON audit (at, id)",
        "CREATE INDEX audit_scope ON audit (scope, at, id)",
        "CREATE INDEX audit_actor ON audit (actor, at, id)",
    ),
    # 2 → 3: the log of what each version changed (``changed_scopes``), so that a worker
    # reloads only that. One row per scope a write changed, with the ids of the rules it
    # changed there (comma-separated; NULL: the whole scope). A file migrated from an
    # older schema starts with an empty log: versions before it are not listed, and
    # asking for them says so. A write that changed too many scopes is logged with the
    # scope ``*`` (no scope string is that).
    (
        """CREATE TABLE changes (
            version INTEGER NOT NULL,
            scope TEXT NOT NULL,
            rules TEXT,
            PRIMARY KEY (version, scope)
        ) WITHOUT ROWID""",
    ),
    # 3 → 4: events by outcome (issue 7), like the other filter indexes: the quarantine
    # gauge (``count_events``) counts one range of it instead of scanning every event, and
    # a listing filtered by outcome pages through it instead of sorting.
    ("CREATE INDEX events_outcome ON events (outcome, received_at, id)",),
    # 4 → 5: no index by (source, provider event id, recipient). Retry dedupe looks the
    # event up by its id, which is a hash of those three (pipeline.event_id_for); this
    # index was read by nothing and, its keys being random, cost a scattered page write
    # per stored event (about a fifth of the insert, docs/performance.md).
    ("DROP INDEX IF EXISTS events_dedupe",),
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)
_SNAPSHOT_COLUMNS: Final = (
    "id, scope, action, match_type, match_target, include_subdomains, expires_at / 1000000.0"
)
_IN_CHUNK: Final = 500  # values per IN (...) list: well under SQLite's variable limit

_TARGET_COLUMNS: Final = (
    "kind, id, filter_mode, enforce, forward_url, voice_url, sms_url, rate_limit,"
    " created_at, updated_at"
)
_RULE_COLUMNS: Final = (
    "id, scope, action, match_type, match_target, include_subdomains, status, expires_at,"
    " note, source, hits, last_matched_at, created_at, updated_at"
)
_EVENT_FIELDS: Final = (
    "id",
    "source",
    "provider",
    "channel",
    "provider_event_id",
    "sender",
    "envelope_sender",
    "recipient",
    "verdict",
    "rule",
    "reason",
    "mode",
    "would_drop",
    "unauthenticated_allow",
    "outcome",
    "received_at",
    "method",
    "path",
    "query",
    "content_type",
    "headers",
    "body",
    "forward_url",
    "forward_status",
    "response_status",
    "response_content_type",
    "response_body",
    "extra",
)
_EVENT_COLUMNS: Final = ", ".join(_EVENT_FIELDS)
# Insert or replace by id, except that a delivered record (its answer is what a retry is
# answered with) is never replaced by an undelivered one: two replicas can both handle a
# provider's retries of one event, and their record writes may land in either order.
_DELIVERED_SQL: Final = ", ".join(f"'{o}'" for o in DELIVERED_OUTCOMES)
_PUT_EVENT_SQL: Final = (
    f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES ({', '.join('?' * len(_EVENT_FIELDS))})"  # noqa: S608
    " ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _EVENT_FIELDS if c != "id")
    + f" WHERE events.outcome NOT IN ({_DELIVERED_SQL})"
    + f" OR excluded.outcome IN ({_DELIVERED_SQL})"
)

# Fields a PATCH may change (SPEC §3, §6); anything else is a programming error, since
# the API validates requests before they reach the store.
_TARGET_FIELDS: Final = frozenset(
    {"filter_mode", "enforce", "forward_url", "voice_url", "sms_url", "rate_limit"}
)
_RULE_FIELDS: Final = frozenset({"action", "status", "expires_at", "note"})


# --- values ---------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _to_us(value: datetime) -> int:
    if value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: the store takes timezone-aware times")
    return (value - _EPOCH) // _MICROSECOND


def _opt_us(value: datetime | None) -> int | None:
    return None if value is None else _to_us(value)


def _from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _opt_dt(value: int | None) -> datetime | None:
    return None if value is None else _from_us(value)


def _placeholders(n: int) -> str:
    return ", ".join("?" * n)


def _target_from_row(row: Any) -> Target:
    return Target(
        kind=row[0],
        id=row[1],
        filter_mode=row[2],
        enforce=bool(row[3]),
        forward_url=row[4],
        voice_url=row[5],
        sms_url=row[6],
        rate_limit=row[7],
        created_at=_from_us(row[8]),
        updated_at=_from_us(row[9]),
    )


def _rule_from_row(row: Any) -> Rule:
    return Rule(
        id=row[0],
        scope=row[1],
        action=row[2],
        match_type=row[3],
        match_target=row[4],
        include_subdomains=bool(row[5]),
        status=row[6],
        expires_at=_opt_dt(row[7]),
        note=row[8],
        source=row[9],
        hits=row[10],
        last_matched_at=_opt_dt(row[11]),
        created_at=_from_us(row[12]),
        updated_at=_from_us(row[13]),
    )


def _headers_json(headers: Sequence[tuple[str, str]]) -> str:
    """``json.dumps(headers)``, the same text, for two thirds of its cost: a sequence of
    string pairs needs no general encoder (callgrind, seven pairs: 26,000 instructions
    against 40,000 through ``json.dumps``, which was most of a stored row's building)."""
    text = encode_basestring_ascii
    return "[" + ", ".join(f"[{text(name)}, {text(value)}]" for name, value in headers) + "]"


def _event_to_row(e: EventRecord) -> tuple[Any, ...]:
    return (
        e.id,
        e.source,
        e.provider,
        e.channel,
        e.provider_event_id,
        e.sender,
        e.envelope_sender,
        e.recipient,
        e.verdict,
        e.rule,
        e.reason,
        e.mode,
        int(e.would_drop),
        int(e.unauthenticated_allow),
        e.outcome,
        _to_us(e.received_at),
        e.method,
        e.path,
        e.query,
        e.content_type,
        # A list of pairs, not an object: header order and repeated names survive.
        _headers_json(e.headers),
        e.body,
        e.forward_url,
        e.forward_status,
        e.response_status,
        e.response_content_type,
        e.response_body,
        json.dumps(dict(e.extra)),
    )


def _event_from_row(row: Any) -> EventRecord:
    return EventRecord(
        id=row[0],
        source=row[1],
        provider=row[2],
        channel=row[3],
        provider_event_id=row[4],
        sender=row[5],
        envelope_sender=row[6],
        recipient=row[7],
        verdict=row[8],
        rule=row[9],
        reason=row[10],
        mode=row[11],
        would_drop=bool(row[12]),
        unauthenticated_allow=bool(row[13]),
        outcome=row[14],
        received_at=_from_us(row[15]),
        method=row[16],
        path=row[17],
        query=row[18],
        content_type=row[19],
        headers=tuple((str(k), str(v)) for k, v in json.loads(row[20])),
        body=bytes(row[21]),
        forward_url=row[22],
        forward_status=row[23],
        response_status=row[24],
        response_content_type=row[25],
        response_body=None if row[26] is None else bytes(row[26]),
        extra=json.loads(row[27]),
    )


def _encode_cursor(received_at_us: int, event_id: str) -> str:
    return base64.urlsafe_b64encode(f"{received_at_us}|{event_id}".encode()).decode("ascii")


def _decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor.encode("ascii")).decode()
        received_at, sep, event_id = raw.partition("|")
        if not sep:
            raise ValueError("no separator")
        return int(received_at), event_id
    except (ValueError, binascii.Error, UnicodeError) as exc:
        raise BadRequest("invalid cursor: pass back the next_cursor of a page") from exc


# --- connection and transactions (these run on the worker thread) -----------------------


@contextmanager
def _transaction(conn: sqlite3.Connection, *, write: bool) -> Iterator[None]:
    """One transaction. Writes take the write lock up front (``BEGIN IMMEDIATE``): a
    deferred transaction that reads and then writes can fail with SQLITE_BUSY at once,
    whatever ``busy_timeout`` says, when another process wrote in between."""
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _connect(path: str, busy_timeout_ms: int) -> sqlite3.Connection:
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: no implicit transactions; _transaction() says BEGIN itself.
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        mode = _enable_wal(conn, busy_timeout_ms)
        if mode.lower() != "wal" and path != ":memory:":
            raise StoreUnavailable(
                f"SQLite store at {path}: could not switch to WAL mode (journal_mode is"
                f" {mode}); put the database on a local filesystem"
            )
        # NORMAL in WAL mode: a commit survives a crash of the process; only a power
        # loss can undo the last transactions, and the file is never corrupted.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _enable_wal(conn: sqlite3.Connection, busy_timeout_ms: int) -> str:
    # Switching a new file to WAL needs an exclusive lock, and SQLite answers BUSY at once
    # (no busy handler) when another process is opening the same new file: retry here.
    deadline = time.monotonic() + busy_timeout_ms / 1000
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    # Read user_version inside the write transaction: two processes opening a new file
    # at once then migrate one after the other, and the second finds nothing to do.
    with _transaction(conn, write=True):
        current = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if current > SCHEMA_VERSION:
            raise StoreUnavailable(
                f"SQLite store at {path} has schema version {current}, newer than this"
                f" SenderGate understands ({SCHEMA_VERSION}); upgrade SenderGate"
            )
        for version in range(current, SCHEMA_VERSION):
            for statement in _MIGRATIONS[version]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")


def _bump_version(conn: sqlite3.Connection, changes: Mapping[str, Iterable[int] | None]) -> None:
    """Bump the version and log what this write changed (same transaction): scope → the
    ids of the rules changed in it, or None for the whole scope."""
    conn.execute("UPDATE meta SET version = version + 1 WHERE id = 1")
    version = _read_version(conn)
    rows: list[tuple[int, str, str | None]] = []
    for scope, ids in changes.items():
        listed = None if ids is None else sorted(set(ids))
        if listed is not None and (not listed or len(listed) > CHANGE_LOG_MAX_RULES):
            listed = None
        rows.append((version, scope, None if listed is None else ",".join(map(str, listed))))
    if not rows or len(rows) > CHANGE_LOG_MAX_SCOPES:
        rows = [(version, "*", None)]
    conn.executemany("INSERT INTO changes (version, scope, rules) VALUES (?, ?, ?)", rows)
    conn.execute("DELETE FROM changes WHERE version <= ?", (version - CHANGE_LOG_KEEP,))


def _read_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT version FROM meta WHERE id = 1").fetchone()[0])


# --- targets ------------------------------------------------------------------------------


def _select_targets(conn: sqlite3.Connection) -> list[Target]:
    rows = conn.execute(f"SELECT {_TARGET_COLUMNS} FROM targets ORDER BY created_at DESC, kind, id")  # noqa: S608
    return [_target_from_row(row) for row in rows]


def _all_targets(conn: sqlite3.Connection) -> list[Target]:
    with _transaction(conn, write=False):
        return _select_targets(conn)


def _list_targets(
    conn: sqlite3.Connection,
    kind: TargetKind,
    ids: Sequence[str] | None,
    limit: int,
    offset: int,
) -> tuple[list[Target], int]:
    where = "kind = ?"
    params: list[Any] = [kind]
    if ids is not None:
        where += f" AND id IN ({_placeholders(len(ids))})"
        params.extend(ids)
    with _transaction(conn, write=False):
        total = conn.execute(f"SELECT count(*) FROM targets WHERE {where}", params).fetchone()[0]  # noqa: S608
        rows = conn.execute(
            f"SELECT {_TARGET_COLUMNS} FROM targets WHERE {where}"  # noqa: S608
            " ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
            [*params, limit, offset],
        ).fetchall()
    return [_target_from_row(row) for row in rows], int(total)


def _get_target(conn: sqlite3.Connection, kind: TargetKind, target_id: str) -> Target | None:
    row = conn.execute(
        f"SELECT {_TARGET_COLUMNS} FROM targets WHERE kind = ? AND id = ?",  # noqa: S608
        (kind, target_id),
    ).fetchone()
    return None if row is None else _target_from_row(row)


def _create_target(conn: sqlite3.Connection, t: Target) -> Target:
    with _transaction(conn, write=True):
        try:
            conn.execute(
                f"INSERT INTO targets ({_TARGET_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                (
                    t.kind,
                    t.id,
                    t.filter_mode,
                    int(t.enforce),
                    t.forward_url,
                    t.voice_url,
                    t.sms_url,
                    t.rate_limit,
                    _to_us(t.created_at),
                    _to_us(t.updated_at),
                ),
            )
        except sqlite3.IntegrityError as exc:
            raise Conflict(f"{t.kind} {t.id} already exists") from exc
        _bump_version(conn, {t.id: None})
        created = _get_target(conn, t.kind, t.id)
    assert created is not None
    return created


def _update_target(
    conn: sqlite3.Connection,
    kind: TargetKind,
    target_id: str,
    changes: Mapping[str, Any],
    now: datetime,
) -> Target | None:
    if not changes:
        return _get_target(conn, kind, target_id)
    assignments = ", ".join(f"{name} = ?" for name in changes)
    values = [int(v) if name == "enforce" else v for name, v in changes.items()]
    with _transaction(conn, write=True):
        cursor = conn.execute(
            f"UPDATE targets SET {assignments}, updated_at = ? WHERE kind = ? AND id = ?",  # noqa: S608
            [*values, _to_us(now), kind, target_id],
        )
        if cursor.rowcount == 0:
            return None
        _bump_version(conn, {target_id: None})
        return _get_target(conn, kind, target_id)


def _delete_target(
    conn: sqlite3.Connection, kind: TargetKind, target_id: str, now: datetime
) -> bool:
    with _transaction(conn, write=True):
        cursor = conn.execute("DELETE FROM targets WHERE kind = ? AND id = ?", (kind, target_id))
        if cursor.rowcount == 0:
            return False
        conn.execute(
            "UPDATE rules SET status = 'deleted', updated_at = ?"
            " WHERE scope = ? AND status != 'deleted'",
            (_to_us(now), target_id),
        )
        _bump_version(conn, {target_id: None})
    return True


# --- rules -----------------------------------------------------------------------------------


def _get_rule(conn: sqlite3.Connection, rule_id: int) -> Rule | None:
    row = conn.execute(
        f"SELECT {_RULE_COLUMNS} FROM rules WHERE id = ?",  # noqa: S608
        (rule_id,),
    ).fetchone()
    return None if row is None else _rule_from_row(row)


def _slot_holder(
    conn: sqlite3.Connection, scope: str, match_type: str, match_target: str
) -> int | None:
    row = conn.execute(
        "SELECT id FROM rules WHERE scope = ? AND match_type = ? AND match_target = ?"
        " AND status != 'deleted'",
        (scope, match_type, match_target),
    ).fetchone()
    return None if row is None else int(row[0])


def _insert_rule(conn: sqlite3.Connection, r: NewRule, now_us: int) -> Rule | DuplicateRule:
    """Insert one rule inside the caller's transaction. A failed INSERT undoes only that
    statement, so a batch goes on after a duplicate."""
    expires_us = _opt_us(r.expires_at)
    try:
        cursor = conn.execute(
            "INSERT INTO rules (scope, action, match_type, match_target, include_subdomains,"
            " status, expires_at, note, source, hits, last_matched_at, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, NULL, ?, ?)",
            (
                r.scope,
                r.action,
                r.match_type,
                r.match_target,
                int(r.include_subdomains),
                r.status,
                expires_us,
                r.note,
                r.source,
                now_us,
                now_us,
            ),
        )
    except sqlite3.IntegrityError:
        holder = _slot_holder(conn, r.scope, r.match_type, r.match_target)
        if holder is None:  # some other constraint: a bug, not a duplicate
            raise
        return DuplicateRule(holder)
    rule_id = cursor.lastrowid
    assert rule_id is not None
    return Rule(
        id=rule_id,
        scope=r.scope,
        action=r.action,
        match_type=r.match_type,
        match_target=r.match_target,
        include_subdomains=r.include_subdomains,
        status=r.status,
        expires_at=_opt_dt(expires_us),
        note=r.note,
        source=r.source,
        hits=0,
        last_matched_at=None,
        created_at=_from_us(now_us),
        updated_at=_from_us(now_us),
    )


def _create_rules(
    conn: sqlite3.Connection, rules: Sequence[NewRule], now: datetime
) -> list[Rule | DuplicateRule]:
    if not rules:
        return []
    now_us = _to_us(now)
    with _transaction(conn, write=True):
        results = [_insert_rule(conn, r, now_us) for r in rules]
        created: dict[str, list[int]] = {}
        for result in results:
            if isinstance(result, Rule):
                created.setdefault(result.scope, []).append(result.id)
        if created:
            _bump_version(conn, created)
    return results


def _update_rule(
    conn: sqlite3.Connection, rule_id: int, changes: Mapping[str, Any], now: datetime
) -> Rule | None:
    if not changes:
        return _get_rule(conn, rule_id)
    assignments = ", ".join(f"{name} = ?" for name in changes)
    values = [_opt_us(v) if name == "expires_at" else v for name, v in changes.items()]
    with _transaction(conn, write=True):
        try:
            cursor = conn.execute(
                f"UPDATE rules SET {assignments}, updated_at = ? WHERE id = ?",  # noqa: S608
                [*values, _to_us(now), rule_id],
            )
        except sqlite3.IntegrityError:
            # Bringing a deleted rule back while another rule holds its slot.
            rule = _get_rule(conn, rule_id)
            assert rule is not None
            holder = _slot_holder(conn, rule.scope, rule.match_type, rule.match_target)
            if holder is None:
                raise
            raise DuplicateRule(holder) from None
        if cursor.rowcount == 0:
            return None
        rule = _get_rule(conn, rule_id)
        assert rule is not None
        _bump_version(conn, {rule.scope: [rule.id]})
        return rule


def _delete_rule(conn: sqlite3.Connection, rule_id: int, now: datetime) -> Rule | None:
    with _transaction(conn, write=True):
        cursor = conn.execute(
            "UPDATE rules SET status = 'deleted', updated_at = ?"
            " WHERE id = ? AND status != 'deleted'",
            (_to_us(now), rule_id),
        )
        rule = _get_rule(conn, rule_id)
        if cursor.rowcount and rule is not None:
            _bump_version(conn, {rule.scope: [rule.id]})
        return rule


def _rule_where(flt: RuleFilter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if flt.scopes is not None:
        clauses.append(f"scope IN ({_placeholders(len(flt.scopes))})")
        params.extend(flt.scopes)
    if flt.family is not None:
        # The same test as models.family_of_scope, in SQL.
        mail = "(scope = ? OR (scope != ? AND instr(scope, '@') > 0))"
        clauses.append(mail if flt.family == "mail" else f"NOT {mail}")
        params.extend((ORG_MAIL, ORG_PHONE))
    for name in ("action", "match_type", "match_target"):
        value = getattr(flt, name)
        if value is not None:
            clauses.append(f"{name} = ?")
            params.append(value)
    if flt.status is None:
        clauses.append("status != 'deleted'")
    else:
        clauses.append("status = ?")
        params.append(flt.status)
    return " AND ".join(clauses), params


def _list_rules(
    conn: sqlite3.Connection, flt: RuleFilter, limit: int, offset: int
) -> tuple[list[Rule], int]:
    where, params = _rule_where(flt)
    with _transaction(conn, write=False):
        total = conn.execute(f"SELECT count(*) FROM rules WHERE {where}", params).fetchone()[0]  # noqa: S608
        rows = conn.execute(
            f"SELECT {_RULE_COLUMNS} FROM rules WHERE {where}"  # noqa: S608
            " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
            [*params, limit, offset],
        ).fetchall()
    return [_rule_from_row(row) for row in rows], int(total)


def _snapshot_rules(
    conn: sqlite3.Connection,
) -> tuple[int, list[Target], list[SnapshotRule]]:
    with _transaction(conn, write=False):
        version = _read_version(conn)
        targets = _select_targets(conn)
        # A million rows: plain tuples from the cursor, converted in one comprehension.
        cursor = conn.execute(
            "SELECT id, scope, action, match_type, match_target, include_subdomains,"
            " expires_at / 1000000.0 FROM rules WHERE status = 'active'"
        )
        rules: list[SnapshotRule] = [
            (rid, scope, action, match_type, target, inc == 1, expires)
            for rid, scope, action, match_type, target, inc, expires in cursor
        ]
    return version, targets, rules


def _scope_rules(
    conn: sqlite3.Connection, scopes: Sequence[str]
) -> tuple[int, list[Target], dict[str, list[SnapshotRule]]]:
    rules: dict[str, list[SnapshotRule]] = {scope: [] for scope in scopes}
    names = list(rules)
    targets: list[Target] = []
    with _transaction(conn, write=False):
        version = _read_version(conn)
        for start in range(0, len(names), _IN_CHUNK):
            chunk = names[start : start + _IN_CHUNK]
            marks = _placeholders(len(chunk))
            rows = conn.execute(
                f"SELECT {_TARGET_COLUMNS} FROM targets WHERE id IN ({marks})",  # noqa: S608
                chunk,
            )
            targets += [_target_from_row(row) for row in rows]
            query = (
                f"SELECT {_SNAPSHOT_COLUMNS} FROM rules WHERE scope IN ({marks})"  # noqa: S608
                " AND status = 'active' ORDER BY id"
            )
            cursor = conn.execute(query, chunk)
            for rid, scope, action, match_type, target, inc, expires in cursor:
                rules[scope].append((rid, scope, action, match_type, target, inc == 1, expires))
    # The order of all_targets: newest first, then kind and id.
    targets.sort(key=lambda t: (-_to_us(t.created_at), t.kind, t.id))
    return version, targets, rules


def _changed_scopes(
    conn: sqlite3.Connection, since: int
) -> tuple[int, dict[int, Change | None]] | None:
    with _transaction(conn, write=False):
        version = _read_version(conn)
        if since > version:
            return None  # the store went back (a restored file): only a full load will do
        rows = conn.execute(
            "SELECT version, scope, rules FROM changes WHERE version > ? AND version <= ?"
            " ORDER BY version",
            (since, version),
        ).fetchall()
    grouped: dict[int, dict[str, tuple[int, ...] | None] | None] = {}
    for v, scope, ids in rows:
        if scope == "*":
            grouped[int(v)] = None
            continue
        change = grouped.setdefault(int(v), {})
        if change is not None:
            change[scope] = None if ids is None else tuple(int(i) for i in ids.split(","))
    if len(grouped) != version - since:
        return None  # the log does not reach back that far
    return version, dict(grouped)


def _rule_states(conn: sqlite3.Connection, ids: Sequence[int]) -> tuple[int, list[RuleState]]:
    out: list[RuleState] = []
    with _transaction(conn, write=False):
        version = _read_version(conn)
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            query = (
                f"SELECT {_SNAPSHOT_COLUMNS}, status FROM rules"  # noqa: S608
                f" WHERE id IN ({_placeholders(len(chunk))})"
            )
            for rid, scope, action, mt, target, inc, expires, status in conn.execute(query, chunk):
                row = (rid, scope, action, mt, target, inc == 1, expires)
                out.append((rid, scope, mt, target, row if status == "active" else None))
    return version, out


def _add_rule_hits(conn: sqlite3.Connection, hits: Mapping[int, tuple[int, datetime]]) -> None:
    if not hits:
        return
    with _transaction(conn, write=True):
        # max(): flushes from several workers may arrive out of order.
        conn.executemany(
            "UPDATE rules SET hits = hits + ?,"
            " last_matched_at = max(coalesce(last_matched_at, ?), ?) WHERE id = ?",
            [(n, _to_us(at), _to_us(at), rule_id) for rule_id, (n, at) in hits.items()],
        )


# --- events ----------------------------------------------------------------------------------


def _put_events(conn: sqlite3.Connection, events: Sequence[EventRecord]) -> None:
    if not events:
        return
    with _transaction(conn, write=True):
        conn.executemany(_PUT_EVENT_SQL, map(_event_to_row, events))


def _get_event(conn: sqlite3.Connection, event_id: str) -> EventRecord | None:
    row = conn.execute(
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE id = ?",  # noqa: S608
        (event_id,),
    ).fetchone()
    return None if row is None else _event_from_row(row)


def _delivered_answers(
    conn: sqlite3.Connection, event_ids: Sequence[str]
) -> dict[str, StoredAnswer]:
    out: dict[str, StoredAnswer] = {}
    for start in range(0, len(event_ids), _IN_CHUNK):
        chunk = event_ids[start : start + _IN_CHUNK]
        # By id only, the outcome tested here: with "outcome IN (...)" in the WHERE clause
        # SQLite's planner preferred events_outcome and scanned every forwarded event
        # (milliseconds per lookup at 20,000 events) over the primary key.
        rows = conn.execute(
            "SELECT id, outcome, response_status, response_content_type, response_body"  # noqa: S608
            f" FROM events WHERE id IN ({_placeholders(len(chunk))})",
            chunk,
        )
        for event_id, outcome, status, content_type, body in rows:
            if outcome in DELIVERED_OUTCOMES and status is not None:
                out[event_id] = StoredAnswer(status, content_type, body or b"")
    return out


def _list_events(
    conn: sqlite3.Connection, flt: EventFilter, after: tuple[int, str] | None, limit: int
) -> tuple[list[EventRecord], str | None]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("verdict", flt.verdict),
        ("recipient", flt.target),
        ("sender", flt.sender),
        ("outcome", flt.outcome),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if flt.targets is not None:
        clauses.append(f"recipient IN ({_placeholders(len(flt.targets))})")
        params.extend(flt.targets)
    if flt.since is not None:
        clauses.append("received_at >= ?")
        params.append(_to_us(flt.since))
    if after is not None:
        clauses.append("(received_at, id) < (?, ?)")
        params.extend(after)
    where = " AND ".join(clauses) or "1"
    # One row more than asked tells whether there is a next page.
    rows = conn.execute(
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE {where}"  # noqa: S608
        " ORDER BY received_at DESC, id DESC LIMIT ?",
        [*params, limit + 1],
    ).fetchall()
    page = [_event_from_row(row) for row in rows[:limit]]
    more = len(rows) > limit and limit > 0
    next_cursor = _encode_cursor(rows[limit - 1][15], rows[limit - 1][0]) if more else None
    return page, next_cursor


def _purge_events(conn: sqlite3.Connection, before: datetime) -> int:
    with _transaction(conn, write=True):
        cursor = conn.execute("DELETE FROM events WHERE received_at < ?", (_to_us(before),))
    return int(cursor.rowcount)


def _count_events(conn: sqlite3.Connection, outcome: str) -> int:
    # A range of the events_outcome index (covering: no table row is read).
    row = conn.execute("SELECT count(*) FROM events WHERE outcome = ?", (outcome,)).fetchone()
    return int(row[0])


# --- contacts --------------------------------------------------------------------------------

# The contact joined to the rule that holds its exact slot (at most one non-deleted rule
# per slot: the rules_slot index), with the state that rule gives when it is in force.
_CONTACT_STATE: Final = (
    "CASE WHEN r.status = 'active' AND (r.expires_at IS NULL OR r.expires_at > :now)"
    " THEN CASE r.action WHEN 'block' THEN 'blocked' WHEN 'allow' THEN 'whitelisted'"
    " ELSE 'muted' END ELSE 'unset' END"
)
_CONTACT_FROM: Final = (
    "contacts AS c LEFT JOIN rules AS r ON r.scope = c.scope"
    " AND r.match_type = c.match_type AND r.match_target = c.sender AND r.status != 'deleted'"
)
_CONTACT_COLUMNS: Final = (
    f"c.scope, c.sender, c.family, {_CONTACT_STATE}, r.id, c.count, c.delivered, c.muted,"
    " c.dropped, c.first_seen, c.last_seen, c.category, c.number_type, c.region"
)
_CONTACT_SORT_COLUMNS: Final[dict[str, str]] = {
    "count": "c.count",
    "last_seen": "c.last_seen",
    "first_seen": "c.first_seen",
}


def _contact_from_row(row: Any) -> Contact:
    return Contact(
        scope=row[0],
        sender=row[1],
        family=row[2],
        state=row[3],
        rule_id=row[4],
        count=row[5],
        delivered=row[6],
        muted=row[7],
        dropped=row[8],
        first_seen=_from_us(row[9]),
        last_seen=_from_us(row[10]),
        category=row[11],
        number_type=row[12],
        region=row[13],
    )


def _add_contacts(conn: sqlite3.Connection, deltas: Sequence[ContactDelta]) -> None:
    if not deltas:
        return
    rows = [
        (
            d.scope,
            d.sender,
            d.family,
            exact_match_type(d.sender, d.family),
            d.count,
            d.delivered,
            d.muted,
            d.dropped,
            _to_us(d.first_seen),
            _to_us(d.last_seen),
            d.number_type,
            d.region,
        )
        for d in deltas
    ]
    with _transaction(conn, write=True):
        conn.executemany(
            "INSERT INTO contacts (scope, sender, family, match_type, count, delivered, muted,"
            " dropped, first_seen, last_seen, category, number_type, region)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)"
            " ON CONFLICT (scope, sender) DO UPDATE SET"
            " count = count + excluded.count,"
            " delivered = delivered + excluded.delivered,"
            " muted = muted + excluded.muted,"
            " dropped = dropped + excluded.dropped,"
            " first_seen = min(first_seen, excluded.first_seen),"
            " last_seen = max(last_seen, excluded.last_seen),"
            " region = CASE WHEN excluded.number_type IS NULL THEN region"
            " ELSE excluded.region END,"
            " number_type = coalesce(excluded.number_type, number_type)",
            rows,
        )


def _contact_where(flt: ContactFilter) -> tuple[str, dict[str, Any]]:
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if flt.scopes is not None:
        names = [f":scope{i}" for i in range(len(flt.scopes))]
        clauses.append(f"c.scope IN ({', '.join(names)})")
        params.update({name[1:]: scope for name, scope in zip(names, flt.scopes, strict=True)})
    if flt.family is not None:
        clauses.append("c.family = :family")
        params["family"] = flt.family
    if flt.state is not None:
        clauses.append(f"({_CONTACT_STATE}) = :state")
        params["state"] = flt.state
    return " AND ".join(clauses) or "1", params


def _list_contacts(
    conn: sqlite3.Connection,
    flt: ContactFilter,
    sort: ContactSort,
    descending: bool,
    limit: int,
    offset: int,
    now: datetime,
) -> tuple[list[Contact], int]:
    where, params = _contact_where(flt)
    params["now"] = _to_us(now)
    column = _CONTACT_SORT_COLUMNS[sort]
    order = "DESC" if descending else "ASC"
    with _transaction(conn, write=False):
        total = conn.execute(
            f"SELECT count(*) FROM {_CONTACT_FROM} WHERE {where}",  # noqa: S608
            params,
        ).fetchone()[0]
        rows = conn.execute(
            f"SELECT {_CONTACT_COLUMNS} FROM {_CONTACT_FROM} WHERE {where}"  # noqa: S608
            f" ORDER BY {column} {order}, c.scope, c.sender LIMIT :limit OFFSET :offset",
            {**params, "limit": limit, "offset": offset},
        ).fetchall()
    return [_contact_from_row(row) for row in rows], int(total)


def _get_contact(
    conn: sqlite3.Connection, scope: str, sender: str, now: datetime
) -> Contact | None:
    row = conn.execute(
        f"SELECT {_CONTACT_COLUMNS} FROM {_CONTACT_FROM}"  # noqa: S608
        " WHERE c.scope = :scope AND c.sender = :sender",
        {"scope": scope, "sender": sender, "now": _to_us(now)},
    ).fetchone()
    return None if row is None else _contact_from_row(row)


def _set_contact_category(
    conn: sqlite3.Connection, scope: str, sender: str, category: str | None, now: datetime
) -> Contact | None:
    with _transaction(conn, write=True):
        cursor = conn.execute(
            "UPDATE contacts SET category = ? WHERE scope = ? AND sender = ?",
            (category, scope, sender),
        )
        if cursor.rowcount == 0:
            return None
        return _get_contact(conn, scope, sender, now)


# --- audit -----------------------------------------------------------------------------------


def _json_or_none(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(dict(value), separators=(",", ":"))


def _add_audit(conn: sqlite3.Connection, entries: Sequence[NewAudit]) -> None:
    if not entries:
        return
    rows = [
        (
            _to_us(e.at),
            e.actor,
            e.action,
            e.scope,
            e.rule_id,
            _json_or_none(e.before),
            _json_or_none(e.after),
        )
        for e in entries
    ]
    with _transaction(conn, write=True):
        conn.executemany(
            "INSERT INTO audit (at, actor, action, scope, rule_id, before, after)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )


def _list_audit(
    conn: sqlite3.Connection, scope: str | None, actor: str | None, limit: int, offset: int
) -> tuple[list[AuditEntry], int]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (("scope", scope), ("actor", actor)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    where = " AND ".join(clauses) or "1"
    with _transaction(conn, write=False):
        total = conn.execute(f"SELECT count(*) FROM audit WHERE {where}", params).fetchone()[0]  # noqa: S608
        rows = conn.execute(
            "SELECT id, at, actor, action, scope, rule_id, before, after"  # noqa: S608
            f" FROM audit WHERE {where} ORDER BY at DESC, id DESC LIMIT ? OFFSET ?",
            [*params, limit, offset],
        ).fetchall()
    return [
        AuditEntry(
            id=row[0],
            at=_from_us(row[1]),
            actor=row[2],
            action=row[3],
            scope=row[4],
            rule_id=row[5],
            before=None if row[6] is None else json.loads(row[6]),
            after=None if row[7] is None else json.loads(row[7]),
        )
        for row in rows
    ], int(total)


# --- the store -------------------------------------------------------------------------------


def _lower_priority(increment: int) -> None:
    """Make the calling thread (the store's) ``increment`` nicer than it is, on Linux,
    where niceness is per thread; elsewhere, or at 0, nothing.

    Why: on a busy core the store's batches (the journal's quarantine records, the
    forwarded records) are bursts of tens of milliseconds of CPU, and at the same
    niceness the kernel shares the core evenly between them and the event loop, so the
    requests that arrive meanwhile queue (p90 of drops 1.5-3 ms at half load, against
    0.2-0.3 ms with the thread at +19; docs/performance.md). Nicer, the thread fills the
    event loop's idle time instead. Nothing can starve it for long: the recorder bounds
    what waits for it (``Recorder(backlog=...)``) and makes the hot path wait beyond that.
    Raising niceness needs no privilege (lowering it again would, so it is not)."""
    if increment <= 0 or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + increment))
    except OSError as exc:  # a sandbox that forbids it: run at the process's niceness
        log.warning("the SQLite store's thread keeps its priority: %s", exc)


class SQLiteStore:
    """The ``Store`` on one SQLite file (see the module docstring).

    ``busy_timeout`` is how long a write waits for another process's write lock before
    the store answers ``StoreUnavailable``; ``clock`` stamps ``created_at`` and
    ``updated_at`` of rules and target updates; ``thread_nice`` is added to the niceness
    of the store's thread (``[store] thread_nice``, see ``_lower_priority``).
    """

    name = "sqlite"

    def __init__(
        self,
        path: str,
        *,
        busy_timeout: float = 5.0,
        clock: Callable[[], datetime] = _utcnow,
        thread_nice: int = 0,
    ) -> None:
        self.path = path
        self._busy_timeout_ms = max(0, int(busy_timeout * 1000))
        self._thread_nice = thread_nice
        self._clock = clock
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        # The event loop's own read-only connection, for delivered_answers_nowait.
        self._reader: sqlite3.Connection | None = None

    async def open(self) -> None:
        if self._conn is not None:
            return
        executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="sendergate-sqlite",
            initializer=_lower_priority,
            initargs=(self._thread_nice,),
        )
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(executor, _connect, self.path, self._busy_timeout_ms)
        except (OSError, sqlite3.Error) as exc:
            executor.shutdown(wait=False)
            raise StoreUnavailable(f"cannot open the SQLite store at {self.path}: {exc}") from exc
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor, self._conn = executor, conn

    async def close(self) -> None:
        executor, conn = self._executor, self._conn
        if executor is None or conn is None:
            return
        # New calls fail from here on; calls already queued run first (one FIFO worker).
        self._executor = self._conn = None
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
        try:
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        finally:
            executor.shutdown(wait=True)

    async def _run(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``fn(connection, ...)`` on the worker thread; translate SQLite's "cannot
        reach the file" errors (locked, I/O, not a database) into ``StoreUnavailable``."""
        executor, conn = self._executor, self._conn
        if executor is None or conn is None:
            raise StoreUnavailable(f"the SQLite store at {self.path} is not open")
        call = functools.partial(fn, conn, *args, **kwargs)
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, call)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite store at {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            if type(exc) is not sqlite3.DatabaseError:  # integrity, programming: bugs
                raise
            raise StoreUnavailable(f"SQLite store at {self.path}: {exc}") from exc

    async def ping(self) -> None:
        await self._run(_read_version)

    async def version(self) -> int:
        # Read from the file every time: other processes' commits must show.
        return await self._run(_read_version)

    # --- targets ---------------------------------------------------------------------

    async def list_targets(
        self, kind: TargetKind, *, ids: Sequence[str] | None = None, limit: int, offset: int
    ) -> tuple[list[Target], int]:
        if ids is not None and not ids:
            return [], 0
        return await self._run(_list_targets, kind, ids, limit, offset)

    async def all_targets(self) -> list[Target]:
        return await self._run(_all_targets)

    async def get_target(self, kind: TargetKind, target_id: str) -> Target | None:
        return await self._run(_get_target, kind, target_id)

    async def create_target(self, target: Target) -> Target:
        return await self._run(_create_target, target)

    async def update_target(
        self, kind: TargetKind, target_id: str, changes: Mapping[str, Any]
    ) -> Target | None:
        _check_fields(changes, _TARGET_FIELDS, "target")
        return await self._run(_update_target, kind, target_id, dict(changes), self._clock())

    async def delete_target(self, kind: TargetKind, target_id: str) -> bool:
        return await self._run(_delete_target, kind, target_id, self._clock())

    # --- rules -----------------------------------------------------------------------

    async def create_rule(self, rule: NewRule) -> Rule:
        (result,) = await self._run(_create_rules, [rule], self._clock())
        if isinstance(result, DuplicateRule):
            raise result
        return result

    async def create_rules(self, rules: Sequence[NewRule]) -> list[Rule | DuplicateRule]:
        return await self._run(_create_rules, list(rules), self._clock())

    async def get_rule(self, rule_id: int) -> Rule | None:
        return await self._run(_get_rule, rule_id)

    async def update_rule(self, rule_id: int, changes: Mapping[str, Any]) -> Rule | None:
        _check_fields(changes, _RULE_FIELDS, "rule")
        return await self._run(_update_rule, rule_id, dict(changes), self._clock())

    async def delete_rule(self, rule_id: int) -> Rule | None:
        return await self._run(_delete_rule, rule_id, self._clock())

    async def list_rules(
        self, flt: RuleFilter, *, limit: int, offset: int
    ) -> tuple[list[Rule], int]:
        if flt.scopes is not None and not flt.scopes:
            return [], 0
        return await self._run(_list_rules, flt, limit, offset)

    async def snapshot_rules(self) -> tuple[int, list[Target], list[SnapshotRule]]:
        return await self._run(_snapshot_rules)

    async def scope_rules(
        self, scopes: Sequence[str]
    ) -> tuple[int, list[Target], dict[str, list[SnapshotRule]]]:
        return await self._run(_scope_rules, list(dict.fromkeys(scopes)))

    async def changed_scopes(self, since: int) -> tuple[int, dict[int, Change | None]] | None:
        return await self._run(_changed_scopes, since)

    async def rule_states(self, ids: Sequence[int]) -> tuple[int, list[RuleState]]:
        return await self._run(_rule_states, list(dict.fromkeys(int(i) for i in ids)))

    async def add_rule_hits(self, hits: Mapping[int, tuple[int, datetime]]) -> None:
        await self._run(_add_rule_hits, dict(hits))

    # --- events ----------------------------------------------------------------------

    async def put_events(self, events: Sequence[EventRecord]) -> None:
        await self._run(_put_events, list(events))

    async def get_event(self, event_id: str) -> EventRecord | None:
        return await self._run(_get_event, event_id)

    async def delivered_answers(self, event_ids: Sequence[str]) -> dict[str, StoredAnswer]:
        if not event_ids:
            return {}
        return await self._run(_delivered_answers, list(event_ids))

    def delivered_answers_nowait(self, event_ids: Sequence[str]) -> dict[str, StoredAnswer] | None:
        """Read on the calling thread (the event loop), through a read-only connection
        that never waits: a WAL reader takes no lock a writer holds, and with no busy
        handler a rare conflict (a checkpoint resetting the log, recovery) answers at
        once, and this returns None so that the caller asks ``delivered_answers``.

        Why on the event loop: the lookup is a primary-key probe of a few pages that the
        OS has cached, about ten microseconds; handing it to the store's thread and back
        cost several times that in thread hand-offs (docs/performance.md)."""
        reader = self._reader
        if reader is None:
            if self._conn is None or self.path == ":memory:":
                return None
            try:
                reader = sqlite3.connect(self.path, isolation_level=None, timeout=0)
                reader.execute("PRAGMA query_only = ON")
            except sqlite3.Error:
                return None
            self._reader = reader
        try:
            return _delivered_answers(reader, list(event_ids))
        except sqlite3.Error:
            return None

    async def list_events(
        self, flt: EventFilter, *, cursor: str | None, limit: int
    ) -> tuple[list[EventRecord], str | None]:
        after = None if cursor is None else _decode_cursor(cursor)
        if flt.targets is not None and not flt.targets:
            return [], None
        return await self._run(_list_events, flt, after, limit)

    async def purge_events(self, before: datetime) -> int:
        return await self._run(_purge_events, before)

    async def count_events(self, outcome: str) -> int:
        return await self._run(_count_events, outcome)

    # --- contacts --------------------------------------------------------------------

    async def add_contacts(self, deltas: Sequence[ContactDelta]) -> None:
        await self._run(_add_contacts, list(deltas))

    async def list_contacts(
        self,
        flt: ContactFilter,
        *,
        sort: ContactSort = "count",
        descending: bool = True,
        limit: int,
        offset: int,
    ) -> tuple[list[Contact], int]:
        if flt.scopes is not None and not flt.scopes:
            return [], 0
        if sort not in _CONTACT_SORT_COLUMNS:
            raise ValueError(f"cannot sort contacts by {sort!r}")
        return await self._run(_list_contacts, flt, sort, descending, limit, offset, self._clock())

    async def get_contact(self, scope: str, sender: str) -> Contact | None:
        return await self._run(_get_contact, scope, sender, self._clock())

    async def set_contact_category(
        self, scope: str, sender: str, category: str | None
    ) -> Contact | None:
        return await self._run(_set_contact_category, scope, sender, category, self._clock())

    # --- audit -------------------------------------------------------------------------

    async def add_audit(self, entries: Sequence[NewAudit]) -> None:
        await self._run(_add_audit, list(entries))

    async def list_audit(
        self, *, scope: str | None = None, actor: str | None = None, limit: int, offset: int
    ) -> tuple[list[AuditEntry], int]:
        return await self._run(_list_audit, scope, actor, limit, offset)


def _check_fields(changes: Mapping[str, Any], allowed: frozenset[str], what: str) -> None:
    unknown = sorted(set(changes) - allowed)
    if unknown:
        raise ValueError(f"cannot change {what} field(s) {', '.join(unknown)}")
