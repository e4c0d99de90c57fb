"""The shared store for several replicas: Redis (``[store] url = "redis://..."``).

One ``redis.asyncio`` connection pool per process (hiredis parses the replies). Every write
of a target or a rule is one Lua script, so that the slot rule of SPEC §3 holds across
replicas and the write, its ``version`` bump and its invalidation message are atomic: a
replica that hears the message and reads the store sees the write.

Key layout, every name under ``key_prefix`` (default ``sendergate:``; shown as ``P``):

=============================  ============================================================
``P version``                  integer, INCR on every target or rule write
``P invalidate``               pub/sub channel: ``{"version": N, "scopes": [...],
                               "rules": {scope: [rule ids]}}`` (``rules`` for rule writes
                               only, a scope without its list: changed whole)
``P changes``                  zset, score N, member the same JSON (``"scopes": null`` when
                               more than ``CHANGE_LOG_MAX_SCOPES``): the change log of the
                               last ``CHANGE_LOG_KEEP`` versions (``changed_scopes``)
``P target:{kind}:{id}``       hash: filter_mode, enforce, forward_url, voice_url,
                               sms_url, rate_limit, created, updated (a missing field is
                               None; times are integer microseconds since the epoch)
``P targets:{kind}``           zset of target ids by created
``P rule:seq``                 integer, INCR gives rule ids
``P rule:{id}``                hash: scope, action, match_type, match_target, inc, status,
                               expires, note, source, hits, last, created, updated
``P rules:slots``              hash ``scope US match_type US match_target`` → id, for
                               non-deleted rules (US is the byte 0x1F)
``P rules:active``             hash id → the compact row the snapshot compiler needs
``P rules:live``               zset of non-deleted rules (score created, member the id
                               zero-padded to 20 digits, so that ties order by id)
``P rules:deleted``            zset of deleted rules, the same way
``P rules:scope:{scope}``      zset of the scope's non-deleted rules, the same way
``P event:{id}``               hash: m (JSON of the record less its bodies), b (body),
                               rb (response body), k (index member), v, r, s, o, d
``P ev:all``                   zset, all scores 0, member ``{received_at:020d}|{id}``:
                               lexicographic order is (received_at, id), as in SQLite
``P ev:v:{verdict}``,          the same members, per verdict, recipient, sender, outcome,
``P ev:r:{recipient}``, ...    (earlier versions also kept ``P ev:d:...`` per provider
                               event id; the event's ``d`` field lets them be removed)
``P rl:{tgt}:{sender}:{w}``    integer: events from sender to target in rate-limit
                               window ``w`` (``gateway.ratelimit``), expiring by TTL
=============================  ============================================================

Redis Cluster is not supported: the scripts build key names they do not declare. Use a
single primary (with replicas and Sentinel, or a managed Redis's primary endpoint).

Unreachable Redis is ``StoreUnavailable``. After a connection failure, calls fail fast for
``breaker_s`` (no connect attempt per webhook while Redis is down; ``ping`` always tries),
so a replica keeps deciding from its snapshot at full speed during an outage.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import heapq
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from gateway.errors import BadRequest, Conflict, DuplicateRule, StoreUnavailable
from gateway.models import NewRule, Rule, Target, TargetKind, family_of_scope
from gateway.store.base import (
    CHANGE_LOG_KEEP,
    CHANGE_LOG_MAX_RULES,
    CHANGE_LOG_MAX_SCOPES,
    DELIVERED_OUTCOMES,
    STATE_OF_ACTION,
    AuditEntry,
    Change,
    Contact,
    ContactDelta,
    ContactFilter,
    ContactSort,
    ContactState,
    EventFilter,
    EventRecord,
    NewAudit,
    RuleFilter,
    RuleState,
    SnapshotRule,
    StoredAnswer,
    exact_match_type,
)

log = logging.getLogger("sendergate.store.redis")

DEFAULT_PREFIX: Final = "sendergate:"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_US: Final = "\x1f"  # separates the parts of a slot field and of an active row
_SCAN_COUNT: Final = 10_000  # HSCAN batch: bounded replies, no long block of Redis
_FETCH_CHUNK: Final = 1_000  # commands per pipeline when reading many hashes
_PURGE_BATCH: Final = 500  # events deleted per script call

_TARGET_FIELDS: Final = frozenset(
    {"filter_mode", "enforce", "forward_url", "voice_url", "sms_url", "rate_limit"}
)
_RULE_FIELDS: Final = frozenset({"action", "status", "expires_at", "note"})
_OPTIONAL_TARGET_FIELDS: Final = ("forward_url", "voice_url", "sms_url", "rate_limit")
# Contact sort keys → the field (and index name) that holds them.
_CONTACT_SORTS: Final[dict[str, str]] = {
    "count": "count",
    "last_seen": "last",
    "first_seen": "first",
}

# Server errors that mean "this Redis cannot take the command now" rather than a bug:
# a replica after a failover (READONLY), RDB snapshots failing (MISCONF), out of memory,
# a Sentinel-managed primary that lost its replicas (NOREPLICAS, MASTERDOWN).
_UNAVAILABLE_REPLIES: Final = ("MISCONF", "NOREPLICAS", "MASTERDOWN", "LOADING", "TRYAGAIN")


# --- Lua ----------------------------------------------------------------------------------
# Every script gets the key prefix as ARGV[1]. ``sync_rule`` brings a rule's indexes in
# line with its hash; the caller has already checked that a non-deleted rule may hold its
# slot. ``bump`` increments the version and publishes the invalidation, inside the same
# script as the write.

_LUA_COMMON: Final = (
    r"""
local p = ARGV[1]
local US = '\31'

local function member(id)
  return string.format('%020d', tonumber(id))
end

-- scopes: scope -> true (the whole scope changed) or a list of the rule ids changed in it.
local function bump(scopes)
  local v = redis.call('INCR', p .. 'version')
  local list, rules, listed = {}, {}, false
  for s, ids in pairs(scopes) do
    list[#list + 1] = s
    if type(ids) == 'table' and #ids <= CHANGE_LOG_MAX_RULES then
      rules[s] = ids
      listed = true
    end
  end
  local payload = '{"version":' .. v .. ',"scopes":' .. cjson.encode(list)
  if listed then payload = payload .. ',"rules":' .. cjson.encode(rules) end
  payload = payload .. '}'
  if #list == 0 then payload = '{"version":' .. v .. ',"scopes":[]}' end
  redis.call('PUBLISH', p .. 'invalidate', payload)
  -- The change log: what each of the last CHANGE_LOG_KEEP versions changed.
  local logged = payload
  if #list == 0 or #list > CHANGE_LOG_MAX_SCOPES then
    logged = '{"version":' .. v .. ',"scopes":null}'
  end
  redis.call('ZADD', p .. 'changes', v, logged)
  redis.call('ZREMRANGEBYSCORE', p .. 'changes', '-inf', v - CHANGE_LOG_KEEP)
  return v
end

local function sync_rule(id, key)
  local r = redis.call('HMGET', key, 'scope', 'action', 'match_type', 'match_target', 'inc',
                       'expires', 'status', 'created')
  local scope, status, created = r[1], r[7], r[8]
  local m = member(id)
  local slot = scope .. US .. r[3] .. US .. r[4]
  if status == 'deleted' then
    if redis.call('HGET', p .. 'rules:slots', slot) == id then
      redis.call('HDEL', p .. 'rules:slots', slot)
    end
    redis.call('ZREM', p .. 'rules:live', m)
    redis.call('ZREM', p .. 'rules:scope:' .. scope, m)
    redis.call('ZADD', p .. 'rules:deleted', created, m)
    redis.call('HDEL', p .. 'rules:active', id)
  else
    redis.call('HSET', p .. 'rules:slots', slot, id)
    redis.call('ZREM', p .. 'rules:deleted', m)
    redis.call('ZADD', p .. 'rules:live', created, m)
    redis.call('ZADD', p .. 'rules:scope:' .. scope, created, m)
    if status == 'active' then
      local row = r[2] .. US .. r[3] .. US .. r[5] .. US .. (r[6] or '') .. US .. scope
                  .. US .. r[4]
      redis.call('HSET', p .. 'rules:active', id, row)
    else
      redis.call('HDEL', p .. 'rules:active', id)
    end
  end
end
""".replace("CHANGE_LOG_KEEP", str(CHANGE_LOG_KEEP))
    .replace("CHANGE_LOG_MAX_SCOPES", str(CHANGE_LOG_MAX_SCOPES))
    .replace("CHANGE_LOG_MAX_RULES", str(CHANGE_LOG_MAX_RULES))
)

# ARGV[2..]: groups of 11: scope, action, match_type, match_target, inc, status, expires
# ('' for none), has_note ('1'/'0'), note, source, created. Returns one integer per rule:
# the new id, or minus the id of the rule that holds the slot.
_CREATE_RULES: Final = r"""
local out, scopes, created = {}, {}, 0
for i = 2, #ARGV, 11 do
  local scope, mt, target, status = ARGV[i], ARGV[i + 2], ARGV[i + 3], ARGV[i + 5]
  local holder = false
  if status ~= 'deleted' then
    holder = redis.call('HGET', p .. 'rules:slots', scope .. US .. mt .. US .. target)
  end
  if holder then
    out[#out + 1] = -tonumber(holder)
  else
    local id = tostring(redis.call('INCR', p .. 'rule:seq'))
    local key = p .. 'rule:' .. id
    local f = {'scope', scope, 'action', ARGV[i + 1], 'match_type', mt, 'match_target', target,
               'inc', ARGV[i + 4], 'status', status, 'source', ARGV[i + 9], 'hits', '0',
               'created', ARGV[i + 10], 'updated', ARGV[i + 10]}
    if ARGV[i + 6] ~= '' then f[#f + 1] = 'expires'; f[#f + 1] = ARGV[i + 6] end
    if ARGV[i + 7] == '1' then f[#f + 1] = 'note'; f[#f + 1] = ARGV[i + 8] end
    redis.call('HSET', key, unpack(f))
    sync_rule(id, key)
    local ids = scopes[scope]
    if not ids then
      ids = {}
      scopes[scope] = ids
    end
    ids[#ids + 1] = tonumber(id)
    created = created + 1
    out[#out + 1] = tonumber(id)
  end
end
if created > 0 then bump(scopes) end
return out
"""

# ARGV[2] id, ARGV[3] updated, then triples: field, '1' set / '0' delete, value.
# Returns false (no rule), {'dup', holder id} or {'ok', field, value, ...}.
_UPDATE_RULE: Final = r"""
local id = ARGV[2]
local key = p .. 'rule:' .. id
if redis.call('EXISTS', key) == 0 then return false end
local cur = redis.call('HMGET', key, 'scope', 'match_type', 'match_target', 'status')
local new_status = cur[4]
for i = 4, #ARGV, 3 do
  if ARGV[i] == 'status' then new_status = ARGV[i + 2] end
end
if cur[4] == 'deleted' and new_status ~= 'deleted' then
  local holder = redis.call('HGET', p .. 'rules:slots', cur[1] .. US .. cur[2] .. US .. cur[3])
  if holder and holder ~= id then return {'dup', holder} end
end
for i = 4, #ARGV, 3 do
  if ARGV[i + 1] == '1' then
    redis.call('HSET', key, ARGV[i], ARGV[i + 2])
  else
    redis.call('HDEL', key, ARGV[i])
  end
end
redis.call('HSET', key, 'updated', ARGV[3])
sync_rule(id, key)
bump({[cur[1]] = {tonumber(id)}})
local res = redis.call('HGETALL', key)
table.insert(res, 1, 'ok')
return res
"""

# ARGV[2] id, ARGV[3] updated. Returns false (no rule) or the rule's fields.
_DELETE_RULE: Final = r"""
local id = ARGV[2]
local key = p .. 'rule:' .. id
if redis.call('EXISTS', key) == 0 then return false end
if redis.call('HGET', key, 'status') ~= 'deleted' then
  redis.call('HSET', key, 'status', 'deleted', 'updated', ARGV[3])
  sync_rule(id, key)
  bump({[redis.call('HGET', key, 'scope')] = {tonumber(id)}})
end
return redis.call('HGETALL', key)
"""

# ARGV[2..]: triples id, count, at. Unknown ids are skipped; ``last`` never moves back.
_ADD_HITS: Final = r"""
for i = 2, #ARGV, 3 do
  local key = p .. 'rule:' .. ARGV[i]
  if redis.call('EXISTS', key) == 1 then
    redis.call('HINCRBY', key, 'hits', ARGV[i + 1])
    local last = redis.call('HGET', key, 'last')
    if (not last) or tonumber(last) < tonumber(ARGV[i + 2]) then
      redis.call('HSET', key, 'last', ARGV[i + 2])
    end
  end
end
return 0
"""

# ARGV[2] kind, ARGV[3] id, ARGV[4] created, then field/value pairs. 0 when it exists.
_CREATE_TARGET: Final = r"""
local key = p .. 'target:' .. ARGV[2] .. ':' .. ARGV[3]
if redis.call('EXISTS', key) == 1 then return 0 end
local f = {}
for i = 5, #ARGV do f[#f + 1] = ARGV[i] end
redis.call('HSET', key, unpack(f))
redis.call('ZADD', p .. 'targets:' .. ARGV[2], ARGV[4], ARGV[3])
bump({[ARGV[3]] = true})
return 1
"""

# ARGV[2] kind, ARGV[3] id, ARGV[4] updated, then triples as in _UPDATE_RULE.
_UPDATE_TARGET: Final = r"""
local key = p .. 'target:' .. ARGV[2] .. ':' .. ARGV[3]
if redis.call('EXISTS', key) == 0 then return false end
for i = 5, #ARGV, 3 do
  if ARGV[i + 1] == '1' then
    redis.call('HSET', key, ARGV[i], ARGV[i + 2])
  else
    redis.call('HDEL', key, ARGV[i])
  end
end
redis.call('HSET', key, 'updated', ARGV[4])
bump({[ARGV[3]] = true})
return redis.call('HGETALL', key)
"""

# ARGV[2] kind, ARGV[3] id, ARGV[4] updated. Marks the scope's rules deleted.
_DELETE_TARGET: Final = r"""
local key = p .. 'target:' .. ARGV[2] .. ':' .. ARGV[3]
if redis.call('DEL', key) == 0 then return 0 end
redis.call('ZREM', p .. 'targets:' .. ARGV[2], ARGV[3])
local members = redis.call('ZRANGE', p .. 'rules:scope:' .. ARGV[3], 0, -1)
for _, m in ipairs(members) do
  local id = tostring(tonumber(m))
  local rkey = p .. 'rule:' .. id
  redis.call('HSET', rkey, 'status', 'deleted', 'updated', ARGV[4])
  sync_rule(id, rkey)
end
bump({[ARGV[3]] = true})
return 1
"""

_LUA_EVENTS: Final = r"""
local p = ARGV[1]

local function unindex(key)
  local old = redis.call('HMGET', key, 'k', 'v', 'r', 's', 'o', 'd')
  local m = old[1]
  if not m then return end
  redis.call('ZREM', p .. 'ev:all', m)
  redis.call('ZREM', p .. 'ev:v:' .. old[2], m)
  redis.call('ZREM', p .. 'ev:r:' .. old[3], m)
  redis.call('ZREM', p .. 'ev:s:' .. old[4], m)
  redis.call('ZREM', p .. 'ev:o:' .. old[5], m)
  if old[6] ~= '' then redis.call('ZREM', p .. 'ev:d:' .. old[6], m) end
end
"""

# ARGV[2..]: groups of 11: id, member, verdict, recipient, sender, outcome, dedupe suffix
# ('' for none), meta JSON, body, has response body ('1'/'0'), response body.
_PUT_EVENTS: Final = r"""
local function delivered(outcome)
  return outcome == 'forwarded' or outcome == 'released'
end
for i = 2, #ARGV, 11 do
  local key = p .. 'event:' .. ARGV[i]
  local m = ARGV[i + 1]
  -- A delivered record is never replaced by an undelivered one (see Store.put_events).
  local old = redis.call('HGET', key, 'o')
  if not (old and delivered(old) and not delivered(ARGV[i + 5])) then
    unindex(key)
    redis.call('DEL', key)
    local f = {'k', m, 'v', ARGV[i + 2], 'r', ARGV[i + 3], 's', ARGV[i + 4], 'o', ARGV[i + 5],
               'd', ARGV[i + 6], 'm', ARGV[i + 7], 'b', ARGV[i + 8]}
    if ARGV[i + 9] == '1' then f[#f + 1] = 'rb'; f[#f + 1] = ARGV[i + 10] end
    redis.call('HSET', key, unpack(f))
    redis.call('ZADD', p .. 'ev:all', 0, m)
    redis.call('ZADD', p .. 'ev:v:' .. ARGV[i + 2], 0, m)
    redis.call('ZADD', p .. 'ev:r:' .. ARGV[i + 3], 0, m)
    redis.call('ZADD', p .. 'ev:s:' .. ARGV[i + 4], 0, m)
    redis.call('ZADD', p .. 'ev:o:' .. ARGV[i + 5], 0, m)
  end
end
return 0
"""

# ARGV[2] the exclusive upper bound ('(' .. received_at), ARGV[3] batch size.
_PURGE_EVENTS: Final = r"""
local members = redis.call('ZRANGE', p .. 'ev:all', '-', ARGV[2], 'BYLEX', 'LIMIT', 0,
                           tonumber(ARGV[3]))
for _, m in ipairs(members) do
  local key = p .. 'event:' .. string.sub(m, 22)
  unindex(key)
  redis.call('DEL', key)
  redis.call('ZREM', p .. 'ev:all', m)
end
return #members
"""

# ARGV[2..]: groups of 14: scope, sender, family, match type, count, delivered, muted,
# dropped, first, last, has number_type, number_type, has region, region. Times stay the
# strings Python sent (a Lua number would print them with 14 digits).
_ADD_CONTACTS: Final = r"""
for i = 2, #ARGV, 14 do
  local scope, sender = ARGV[i], ARGV[i + 1]
  local member = scope .. US .. sender
  local key = p .. 'contact:' .. member
  local first, last = ARGV[i + 8], ARGV[i + 9]
  local old = redis.call('HMGET', key, 'first', 'last')
  if old[1] then
    if tonumber(old[1]) < tonumber(first) then first = old[1] end
    if tonumber(old[2]) > tonumber(last) then last = old[2] end
  else
    redis.call('HSET', key, 'family', ARGV[i + 2], 'mt', ARGV[i + 3])
  end
  local count = redis.call('HINCRBY', key, 'count', ARGV[i + 4])
  redis.call('HINCRBY', key, 'delivered', ARGV[i + 5])
  redis.call('HINCRBY', key, 'muted', ARGV[i + 6])
  redis.call('HINCRBY', key, 'dropped', ARGV[i + 7])
  redis.call('HSET', key, 'first', first, 'last', last)
  if ARGV[i + 10] == '1' then
    redis.call('HSET', key, 'number_type', ARGV[i + 11])
    if ARGV[i + 12] == '1' then
      redis.call('HSET', key, 'region', ARGV[i + 13])
    else
      redis.call('HDEL', key, 'region')
    end
  end
  for _, pair in ipairs({{'count', count}, {'last', last}, {'first', first}}) do
    redis.call('ZADD', p .. 'contacts:' .. pair[1] .. ':' .. scope, pair[2], sender)
    redis.call('ZADD', p .. 'contacts:' .. pair[1], pair[2], member)
  end
end
return 0
"""

# ARGV[2..]: groups of 5: at, actor, has scope, scope, JSON of the entry.
_ADD_AUDIT: Final = r"""
for i = 2, #ARGV, 5 do
  local id = redis.call('INCR', p .. 'audit:seq')
  local m = member(id)
  redis.call('HSET', p .. 'audit:entries', m, ARGV[i + 4])
  redis.call('ZADD', p .. 'audit:all', ARGV[i], m)
  redis.call('ZADD', p .. 'audit:actor:' .. ARGV[i + 1], ARGV[i], m)
  if ARGV[i + 2] == '1' then
    redis.call('ZADD', p .. 'audit:scope:' .. ARGV[i + 3], ARGV[i], m)
  end
end
return 0
"""

# ARGV[2] scope, ARGV[3] first rank, ARGV[4] last rank. Returns the version, the size of
# the scope's index, then (id, active row) pairs for its members in that rank range that
# have an active row: one consistent read, with no id list to send and no scores back.
_SCOPE_ROWS: Final = r"""
local key = p .. 'rules:scope:' .. ARGV[2]
local active = p .. 'rules:active'
local out = {redis.call('GET', p .. 'version') or '0', redis.call('ZCARD', key)}
for _, m in ipairs(redis.call('ZRANGE', key, ARGV[3], ARGV[4])) do
  local id = string.match(m, '^0*(%d+)$')
  local row = redis.call('HGET', active, id)
  if row then
    out[#out + 1] = id
    out[#out + 1] = row
  end
end
return out
"""

# ARGV[2..]: rule ids. Returns the version, then for each rule that exists: id, scope,
# match_type, match_target and its active row ('' when it has none).
_RULE_STATES: Final = r"""
local out = {redis.call('GET', p .. 'version') or '0'}
for i = 2, #ARGV do
  local f = redis.call('HMGET', p .. 'rule:' .. ARGV[i], 'scope', 'match_type', 'match_target')
  if f[1] then
    out[#out + 1] = ARGV[i]
    out[#out + 1] = f[1]
    out[#out + 1] = f[2]
    out[#out + 1] = f[3]
    out[#out + 1] = redis.call('HGET', p .. 'rules:active', ARGV[i]) or ''
  end
end
return out
"""


# --- values -------------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _to_us(value: datetime) -> int:
    if value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: the store takes timezone-aware times")
    return (value - _EPOCH) // _MICROSECOND


def _from_us(value: bytes | int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(value))


def _opt_dt(value: bytes | None) -> datetime | None:
    return None if value is None else _from_us(value)


def _s(value: bytes) -> str:
    return value.decode()


def _event_member(received_at_us: int, event_id: str) -> str:
    return f"{received_at_us:020d}|{event_id}"


def _pairs(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _target_from_hash(kind: TargetKind, target_id: str, h: Mapping[bytes, bytes]) -> Target:
    def opt(name: bytes) -> str | None:
        value = h.get(name)
        return None if value is None else value.decode()

    return Target(
        kind=kind,
        id=target_id,
        filter_mode=cast(Any, _s(h[b"filter_mode"])),
        enforce=h[b"enforce"] == b"1",
        created_at=_from_us(h[b"created"]),
        updated_at=_from_us(h[b"updated"]),
        forward_url=opt(b"forward_url"),
        voice_url=opt(b"voice_url"),
        sms_url=opt(b"sms_url"),
        rate_limit=opt(b"rate_limit"),
    )


def _target_value(name: str, value: Any) -> str:
    if name == "enforce":
        return "1" if value else "0"
    return str(value)


def _rule_from_hash(rule_id: int, h: Mapping[bytes, bytes]) -> Rule:
    note = h.get(b"note")
    return Rule(
        id=rule_id,
        scope=_s(h[b"scope"]),
        action=cast(Any, _s(h[b"action"])),
        match_type=cast(Any, _s(h[b"match_type"])),
        match_target=_s(h[b"match_target"]),
        include_subdomains=h[b"inc"] == b"1",
        status=cast(Any, _s(h[b"status"])),
        expires_at=_opt_dt(h.get(b"expires")),
        note=None if note is None else note.decode(),
        source=_s(h[b"source"]),
        hits=int(h.get(b"hits", b"0")),
        last_matched_at=_opt_dt(h.get(b"last")),
        created_at=_from_us(h[b"created"]),
        updated_at=_from_us(h[b"updated"]),
    )


def _snapshot_row(rule_id: bytes, row: bytes) -> SnapshotRule:
    # Called once per rule of a snapshot: no cast() calls (they cost a third of the time).
    action, match_type, inc, expires, scope, target = row.decode().split(_US, 5)
    return (  # type: ignore[return-value]  # action and match_type as stored
        int(rule_id),
        scope,
        action,
        match_type,
        target,
        inc == "1",
        int(expires) / 1_000_000 if expires else None,
    )


def _event_args(e: EventRecord) -> list[str | bytes]:
    received_us = _to_us(e.received_at)
    meta = {
        "source": e.source,
        "provider": e.provider,
        "channel": e.channel,
        "provider_event_id": e.provider_event_id,
        "sender": e.sender,
        "envelope_sender": e.envelope_sender,
        "recipient": e.recipient,
        "verdict": e.verdict,
        "rule": e.rule,
        "reason": e.reason,
        "mode": e.mode,
        "would_drop": e.would_drop,
        "unauthenticated_allow": e.unauthenticated_allow,
        "outcome": e.outcome,
        "received_at": received_us,
        "method": e.method,
        "path": e.path,
        "query": e.query,
        "content_type": e.content_type,
        # A list of pairs, not an object: header order and repeated names survive.
        "headers": [list(pair) for pair in e.headers],
        "forward_url": e.forward_url,
        "forward_status": e.forward_status,
        "response_status": e.response_status,
        "response_content_type": e.response_content_type,
        "extra": dict(e.extra),
    }
    # No per-provider-id index any more (retry dedupe reads the event by its id, a hash of
    # source, provider id and recipient): the slot stays, empty, so that the script still
    # unindexes the ``ev:d:`` entries that earlier versions wrote.
    dedupe = ""
    return [
        e.id,
        _event_member(received_us, e.id),
        e.verdict,
        e.recipient,
        e.sender,
        e.outcome,
        dedupe,
        json.dumps(meta, separators=(",", ":")),
        e.body,
        "0" if e.response_body is None else "1",
        b"" if e.response_body is None else e.response_body,
    ]


def _event_from_fields(
    event_id: str, meta_raw: bytes, body: bytes, rbody: bytes | None
) -> EventRecord:
    m = json.loads(meta_raw)
    return EventRecord(
        id=event_id,
        source=m["source"],
        provider=m["provider"],
        channel=m["channel"],
        provider_event_id=m["provider_event_id"],
        sender=m["sender"],
        envelope_sender=m["envelope_sender"],
        recipient=m["recipient"],
        verdict=m["verdict"],
        rule=m["rule"],
        reason=m["reason"],
        mode=m["mode"],
        would_drop=m["would_drop"],
        unauthenticated_allow=m["unauthenticated_allow"],
        outcome=m["outcome"],
        received_at=_from_us(m["received_at"]),
        method=m["method"],
        path=m["path"],
        query=m["query"],
        content_type=m["content_type"],
        headers=tuple((str(k), str(v)) for k, v in m["headers"]),
        body=body,
        forward_url=m["forward_url"],
        forward_status=m["forward_status"],
        response_status=m["response_status"],
        response_content_type=m["response_content_type"],
        response_body=rbody,
        extra=m["extra"],
    )


def _encode_cursor(member: str) -> str:
    received, _, event_id = member.partition("|")
    raw = f"{int(received)}|{event_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode("ascii")


def _decode_cursor(cursor: str) -> str:
    """The index member of the cursor's event (the same cursor format as SQLite's)."""
    try:
        raw = base64.urlsafe_b64decode(cursor.encode("ascii")).decode()
        received_at, sep, event_id = raw.partition("|")
        if not sep:
            raise ValueError("no separator")
        return _event_member(int(received_at), event_id)
    except (ValueError, binascii.Error, UnicodeError) as exc:
        raise BadRequest("invalid cursor: pass back the next_cursor of a page") from exc


def _check_fields(changes: Mapping[str, Any], allowed: frozenset[str], what: str) -> None:
    unknown = sorted(set(changes) - allowed)
    if unknown:
        raise ValueError(f"cannot change {what} field(s) {', '.join(unknown)}")


def _unavailable_reply(exc: ResponseError) -> bool:
    if isinstance(exc, (OutOfMemoryError, ReadOnlyError)):
        return True
    return str(exc).startswith(_UNAVAILABLE_REPLIES)


def redact_url(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at:
        return url
    user = creds.partition(":")[0]
    return f"{scheme}://{user + ':***' if user else '***'}@{host}"


# --- the store ----------------------------------------------------------------------------


class RedisStore:
    """The ``Store`` on Redis (see the module docstring for the key layout).

    ``key_prefix`` starts every key and the invalidation channel, so that several
    gateways (or a test) can share one Redis. ``clock`` stamps ``created_at`` and
    ``updated_at`` of rules and target updates. ``connect_timeout_s`` and ``timeout_s``
    bound how long a call waits on an unreachable or stuck Redis; after such a failure the
    store answers ``StoreUnavailable`` at once for ``breaker_s``.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], datetime] = _utcnow,
        connect_timeout_s: float = 1.0,
        timeout_s: float = 5.0,
        max_connections: int = 32,
        breaker_s: float = 0.5,
    ) -> None:
        if not key_prefix:
            raise ValueError("key_prefix must not be empty")
        self.url = url
        self.prefix = key_prefix
        self.channel = f"{key_prefix}invalidate"
        self._clock = clock
        self._connect_timeout_s = connect_timeout_s
        self._timeout_s = timeout_s
        self._max_connections = max_connections
        self._breaker_s = breaker_s
        self._client: Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._open_until = 0.0  # monotonic time until which calls fail fast
        self._last_failure = ""
        self.subscribed = False  # the invalidation listener holds a live subscription

    # --- plumbing ------------------------------------------------------------------------

    async def open(self) -> None:
        """Build the connection pool. Nothing is contacted: a replica must be able to start
        while Redis is down (SPEC §5) and connect when it comes back."""
        if self._client is not None:
            return
        pool = BlockingConnectionPool.from_url(
            self.url,
            max_connections=self._max_connections,
            timeout=self._timeout_s,  # waiting for a free connection
            socket_connect_timeout=self._connect_timeout_s,
            socket_timeout=self._timeout_s,
            # One immediate retry: a pooled connection that died with a Redis restart is
            # replaced at once; a Redis that is down fails fast.
            retry=Retry(NoBackoff(), 1),
            client_name="sendergate",
        )
        client = Redis.from_pool(pool)
        self._scripts = {
            name: client.register_script(body)
            for name, body in (
                ("create_rules", _LUA_COMMON + _CREATE_RULES),
                ("update_rule", _LUA_COMMON + _UPDATE_RULE),
                ("delete_rule", _LUA_COMMON + _DELETE_RULE),
                ("add_hits", _LUA_COMMON + _ADD_HITS),
                ("create_target", _LUA_COMMON + _CREATE_TARGET),
                ("update_target", _LUA_COMMON + _UPDATE_TARGET),
                ("delete_target", _LUA_COMMON + _DELETE_TARGET),
                ("put_events", _LUA_EVENTS + _PUT_EVENTS),
                ("purge_events", _LUA_EVENTS + _PURGE_EVENTS),
                ("add_contacts", _LUA_COMMON + _ADD_CONTACTS),
                ("add_audit", _LUA_COMMON + _ADD_AUDIT),
                ("scope_rows", _LUA_COMMON + _SCOPE_ROWS),
                ("rule_states", _LUA_COMMON + _RULE_STATES),
            )
        }
        self._client = client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def client(self) -> contextlib.AbstractAsyncContextManager[Redis]:
        """``async with store.client() as r``: the store's client for a companion that
        shares its pool, timeouts and fail-fast breaker (the shared rate limiter); raises
        ``StoreUnavailable`` as the store's own calls do."""
        return self._guard()

    def _redis(self) -> Redis:
        if self._client is None:
            raise StoreUnavailable(f"the Redis store at {redact_url(self.url)} is not open")
        return self._client

    @contextlib.asynccontextmanager
    async def _guard(self, *, probe: bool = False) -> AsyncIterator[Redis]:
        """Hand out the client; translate "cannot reach Redis" into ``StoreUnavailable``.
        ``probe`` tries even while the breaker is open (ping, the invalidation listener)."""
        client = self._redis()
        if not probe and time.monotonic() < self._open_until:
            raise StoreUnavailable(self._last_failure)
        try:
            yield client
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise self._failed(exc) from exc
        except ResponseError as exc:
            if not _unavailable_reply(exc):
                raise
            raise self._failed(exc) from exc
        else:
            if probe:
                self._open_until = 0.0

    def _failed(self, exc: BaseException) -> StoreUnavailable:
        self._open_until = time.monotonic() + self._breaker_s
        self._last_failure = f"Redis at {redact_url(self.url)}: {exc or type(exc).__name__}"
        return StoreUnavailable(self._last_failure)

    async def _script(self, name: str, args: Sequence[str | bytes | int]) -> Any:
        async with self._guard():
            return await self._scripts[name](keys=[], args=[self.prefix, *args])

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def ping(self) -> None:
        async with self._guard(probe=True) as r:
            await r.ping()

    async def version(self) -> int:
        async with self._guard() as r:
            raw = await r.get(self._key("version"))
        return 0 if raw is None else int(raw)

    # --- targets -------------------------------------------------------------------------

    def _target_key(self, kind: str, target_id: str) -> str:
        return f"{self.prefix}target:{kind}:{target_id}"

    async def _load_targets(self, r: Redis, keys: Sequence[tuple[TargetKind, str]]) -> list[Target]:
        out: list[Target] = []
        for start in range(0, len(keys), _FETCH_CHUNK):
            chunk = keys[start : start + _FETCH_CHUNK]
            async with r.pipeline(transaction=False) as pipe:
                for kind, target_id in chunk:
                    pipe.hgetall(self._target_key(kind, target_id))
                hashes = await pipe.execute()
            out.extend(
                _target_from_hash(kind, target_id, h)
                for (kind, target_id), h in zip(chunk, hashes, strict=True)
                if h
            )
        return out

    async def list_targets(
        self, kind: TargetKind, *, ids: Sequence[str] | None = None, limit: int, offset: int
    ) -> tuple[list[Target], int]:
        index = self._key(f"targets:{kind}")
        async with self._guard() as r:
            if ids is None:
                total = await r.zcard(index)
                # Newest first, ties by id ascending: the SQLite store's order.
                chosen = [_s(m) for m in await _zpage(r, index, True, offset, limit)]
            else:
                wanted = list(dict.fromkeys(ids))
                if not wanted:
                    return [], 0
                scores = await r.zmscore(index, wanted)
                found = sorted(
                    (
                        (score, tid)
                        for tid, score in zip(wanted, scores, strict=True)
                        if score is not None
                    ),
                    key=lambda pair: (-pair[0], pair[1]),
                )
                total = len(found)
                chosen = [tid for _, tid in found[offset : offset + max(0, limit)]]
            targets = await self._load_targets(r, [(kind, tid) for tid in chosen])
        return targets, int(total)

    async def all_targets(self) -> list[Target]:
        async with self._guard() as r:
            return await self._all_targets(r)

    async def _all_targets(self, r: Redis) -> list[Target]:
        async with r.pipeline(transaction=False) as pipe:
            pipe.zrange(self._key("targets:mailbox"), 0, -1)
            pipe.zrange(self._key("targets:number"), 0, -1)
            mailboxes, numbers = await pipe.execute()
        keys: list[tuple[TargetKind, str]] = [("mailbox", _s(m)) for m in mailboxes]
        keys += [("number", _s(n)) for n in numbers]
        targets = await self._load_targets(r, keys)
        # The SQLite store's order: newest first, then kind and id.
        targets.sort(key=lambda t: (-_to_us(t.created_at), t.kind, t.id))
        return targets

    async def get_target(self, kind: TargetKind, target_id: str) -> Target | None:
        async with self._guard() as r:
            h = cast(dict[bytes, bytes], await r.hgetall(self._target_key(kind, target_id)))
        return _target_from_hash(kind, target_id, h) if h else None

    async def create_target(self, target: Target) -> Target:
        created, updated = _to_us(target.created_at), _to_us(target.updated_at)
        fields: list[str] = [
            "filter_mode",
            target.filter_mode,
            "enforce",
            _target_value("enforce", target.enforce),
            "created",
            str(created),
            "updated",
            str(updated),
        ]
        for name in _OPTIONAL_TARGET_FIELDS:
            value = getattr(target, name)
            if value is not None:
                fields += [name, str(value)]
        ok = await self._script("create_target", [target.kind, target.id, str(created), *fields])
        if not ok:
            raise Conflict(f"{target.kind} {target.id} already exists")
        # What was stored, read back as get_target would (UTC, microseconds).
        return _target_from_hash(
            target.kind,
            target.id,
            {k.encode(): v.encode() for k, v in zip(fields[::2], fields[1::2], strict=True)},
        )

    async def update_target(
        self, kind: TargetKind, target_id: str, changes: Mapping[str, Any]
    ) -> Target | None:
        _check_fields(changes, _TARGET_FIELDS, "target")
        if not changes:
            return await self.get_target(kind, target_id)
        args: list[str] = [kind, target_id, str(_to_us(self._clock()))]
        for name, value in changes.items():
            args += [name, "0", ""] if value is None else [name, "1", _target_value(name, value)]
        flat = await self._script("update_target", args)
        return None if not flat else _target_from_hash(kind, target_id, _pairs(flat))

    async def delete_target(self, kind: TargetKind, target_id: str) -> bool:
        now = str(_to_us(self._clock()))
        return bool(await self._script("delete_target", [kind, target_id, now]))

    # --- rules ---------------------------------------------------------------------------

    async def create_rule(self, rule: NewRule) -> Rule:
        (result,) = await self.create_rules([rule])
        if isinstance(result, DuplicateRule):
            raise result
        return result

    async def create_rules(self, rules: Sequence[NewRule]) -> list[Rule | DuplicateRule]:
        if not rules:
            return []
        now = self._clock()
        now_us = _to_us(now)
        created_at = _from_us(now_us)
        args: list[str] = []
        for r in rules:
            expires = "" if r.expires_at is None else str(_to_us(r.expires_at))
            args += [
                r.scope,
                r.action,
                r.match_type,
                r.match_target,
                "1" if r.include_subdomains else "0",
                r.status,
                expires,
                "0" if r.note is None else "1",
                r.note or "",
                r.source,
                str(now_us),
            ]
        ids: list[int] = await self._script("create_rules", args)
        results: list[Rule | DuplicateRule] = []
        for r, rid in zip(rules, ids, strict=True):
            if rid < 0:
                results.append(DuplicateRule(-rid))
                continue
            results.append(
                Rule(
                    id=rid,
                    scope=r.scope,
                    action=r.action,
                    match_type=r.match_type,
                    match_target=r.match_target,
                    include_subdomains=r.include_subdomains,
                    status=r.status,
                    expires_at=None if r.expires_at is None else _from_us(_to_us(r.expires_at)),
                    note=r.note,
                    source=r.source,
                    hits=0,
                    last_matched_at=None,
                    created_at=created_at,
                    updated_at=created_at,
                )
            )
        return results

    async def get_rule(self, rule_id: int) -> Rule | None:
        async with self._guard() as r:
            h = cast(dict[bytes, bytes], await r.hgetall(self._key(f"rule:{int(rule_id)}")))
        return _rule_from_hash(rule_id, h) if h else None

    async def update_rule(self, rule_id: int, changes: Mapping[str, Any]) -> Rule | None:
        _check_fields(changes, _RULE_FIELDS, "rule")
        if not changes:
            return await self.get_rule(rule_id)
        args: list[str] = [str(int(rule_id)), str(_to_us(self._clock()))]
        for name, value in changes.items():
            field = "expires" if name == "expires_at" else name
            if value is None:
                args += [field, "0", ""]
            elif name == "expires_at":
                args += [field, "1", str(_to_us(value))]
            else:
                args += [field, "1", str(value)]
        reply = await self._script("update_rule", args)
        if not reply:
            return None
        if reply[0] == b"dup":
            raise DuplicateRule(int(reply[1]))
        return _rule_from_hash(rule_id, _pairs(reply[1:]))

    async def delete_rule(self, rule_id: int) -> Rule | None:
        now = str(_to_us(self._clock()))
        flat = await self._script("delete_rule", [str(int(rule_id)), now])
        return _rule_from_hash(rule_id, _pairs(flat)) if flat else None

    async def list_rules(
        self, flt: RuleFilter, *, limit: int, offset: int
    ) -> tuple[list[Rule], int]:
        if flt.scopes is not None and not flt.scopes:
            return [], 0
        deleted = flt.status == "deleted"
        if deleted or flt.scopes is None:
            indexes = [self._key("rules:deleted" if deleted else "rules:live")]
        else:
            indexes = [self._key(f"rules:scope:{s}") for s in dict.fromkeys(flt.scopes)]
        post_filter = (
            flt.family is not None
            or flt.action is not None
            or flt.match_type is not None
            or flt.match_target is not None
            or flt.status in ("active", "paused")
            or (deleted and flt.scopes is not None)
        )
        limit = max(0, limit)
        async with self._guard() as r:
            if len(indexes) == 1 and not post_filter:
                # One index, nothing to filter: the page is a range of the index.
                total = await r.zcard(indexes[0])
                members = (
                    await r.zrange(indexes[0], offset, offset + limit - 1, desc=True)
                    if limit > 0
                    else []
                )
                ids = [int(cast(bytes, m)) for m in members]
                return await self._load_rules(r, ids), int(total)
            ordered = await self._members_newest_first(r, indexes)
            matching = await self._filter_rules(r, ordered, flt)
            page = matching[offset : offset + limit]
            return await self._load_rules(r, page), len(matching)

    async def _members_newest_first(self, r: Redis, indexes: Sequence[str]) -> list[int]:
        async with r.pipeline(transaction=False) as pipe:
            for index in indexes:
                pipe.zrange(index, 0, -1, withscores=True)
            replies = await pipe.execute()
        # (created, id) descending, as SQLite's ORDER BY created_at DESC, id DESC.
        merged = {int(m): score for reply in replies for m, score in reply}
        return sorted(merged, key=lambda rid: (merged[rid], rid), reverse=True)

    async def _filter_rules(self, r: Redis, ids: Sequence[int], flt: RuleFilter) -> list[int]:
        scopes = None if flt.scopes is None else frozenset(flt.scopes)
        keep: list[int] = []
        for start in range(0, len(ids), _FETCH_CHUNK):
            chunk = ids[start : start + _FETCH_CHUNK]
            async with r.pipeline(transaction=False) as pipe:
                for rid in chunk:
                    pipe.hmget(
                        self._key(f"rule:{rid}"),
                        ["scope", "action", "match_type", "match_target", "status"],
                    )
                rows = await pipe.execute()
            for rid, row in zip(chunk, rows, strict=True):
                if row[0] is None:
                    continue
                scope, action, match_type, match_target, status = (_s(v) for v in row)
                if (
                    (scopes is not None and scope not in scopes)
                    or (flt.family is not None and family_of_scope(scope) != flt.family)
                    or (flt.action is not None and action != flt.action)
                    or (flt.match_type is not None and match_type != flt.match_type)
                    or (flt.match_target is not None and match_target != flt.match_target)
                    or (flt.status is not None and status != flt.status)
                    or (flt.status is None and status == "deleted")
                ):
                    continue
                keep.append(rid)
        return keep

    async def _load_rules(self, r: Redis, ids: Sequence[int]) -> list[Rule]:
        out: list[Rule] = []
        for start in range(0, len(ids), _FETCH_CHUNK):
            chunk = ids[start : start + _FETCH_CHUNK]
            async with r.pipeline(transaction=False) as pipe:
                for rid in chunk:
                    pipe.hgetall(self._key(f"rule:{rid}"))
                hashes = await pipe.execute()
            out.extend(_rule_from_hash(rid, h) for rid, h in zip(chunk, hashes, strict=True) if h)
        return out

    async def snapshot_rules(self) -> tuple[int, list[Target], list[SnapshotRule]]:
        """Version, targets and active rules. The active rows are read with HSCAN in
        batches (a million rules: about a hundred round trips, none blocking Redis for
        long). The version is read before and after: when a write landed in between, the
        version from *before* is returned, so that the holder sees the store's version
        move on and reloads again. (A snapshot may so hold part of a newer write, never
        miss one that its version counts.)"""
        active = self._key("rules:active")
        async with self._guard() as r:
            before = int(await r.get(self._key("version")) or 0)
            targets = await self._all_targets(r)
            # Rows are parsed batch by batch, between awaits: a million rules must not
            # hold the event loop (and the webhooks it serves) for seconds in one go.
            # HSCAN may return an entry twice; the dict keeps one.
            found: dict[bytes, SnapshotRule] = {}
            cursor = 0
            while True:
                cursor, batch = await r.hscan(active, cursor, count=_SCAN_COUNT)
                for rid, row in cast(dict[bytes, bytes], batch).items():
                    found[rid] = _snapshot_row(rid, row)
                if cursor == 0:
                    break
            after = int(await r.get(self._key("version")) or 0)
        if after != before:
            log.debug("rules changed during the snapshot read (%d → %d)", before, after)
        return before, targets, list(found.values())

    async def scope_rules(
        self, scopes: Sequence[str]
    ) -> tuple[int, list[Target], dict[str, list[SnapshotRule]]]:
        """Each scope's active rows come from a read-only script (its index, then the
        active row of each member) run over ranks of ``_SCAN_COUNT`` members, so that no
        call blocks Redis for long; the first range of every scope and the target hashes
        go in one pipeline. A scope whose version moved between two ranges (a write
        could have shifted the ranks) is read again, or scanned with ZSCAN, which returns
        every member present for the whole scan. The version answered is the smallest
        that the reads saw: every write it counts is in the rows."""
        names = list(dict.fromkeys(scopes))
        rules: dict[str, list[SnapshotRule]] = {scope: [] for scope in names}
        if not names:
            return await self.version(), [], rules
        script = self._scripts["scope_rows"]
        last = _SCAN_COUNT - 1
        targets: list[Target] = []
        async with self._guard() as r:
            async with r.pipeline(transaction=False) as pipe:
                for scope in names:
                    await script(keys=[], args=[self.prefix, scope, 0, last], client=pipe)
                    pipe.hgetall(self._target_key("mailbox", scope))
                    pipe.hgetall(self._target_key("number", scope))
                replies = await pipe.execute()
            version: int | None = None
            for i, scope in enumerate(names):
                first, mailbox, number = replies[3 * i : 3 * i + 3]
                seen, pairs = int(first[0]), list(first[2:])
                if int(first[1]) > _SCAN_COUNT:
                    seen, pairs = await self._scope_pairs(r, scope, first)
                version = seen if version is None else min(version, seen)
                bucket = rules[scope]
                for rid, raw in zip(pairs[::2], pairs[1::2], strict=True):
                    bucket.append(_snapshot_row(rid, raw))
                bucket.sort()  # by id, as the SQLite store answers
                if mailbox:
                    targets.append(_target_from_hash("mailbox", scope, mailbox))
                if number:
                    targets.append(_target_from_hash("number", scope, number))
        assert version is not None
        targets.sort(key=lambda t: (-_to_us(t.created_at), t.kind, t.id))
        return version, targets, rules

    async def _scope_pairs(self, r: Redis, scope: str, first: list[Any]) -> tuple[int, list[bytes]]:
        """(version, flat id/row pairs) of a scope larger than one range, whose first
        range is ``first``."""
        script = self._scripts["scope_rows"]
        for _attempt in range(3):
            version, size = int(first[0]), int(first[1])
            pairs: list[bytes] = list(first[2:])
            async with r.pipeline(transaction=False) as pipe:
                for start in range(_SCAN_COUNT, size, _SCAN_COUNT):
                    end = start + _SCAN_COUNT - 1
                    await script(keys=[], args=[self.prefix, scope, start, end], client=pipe)
                chunks = await pipe.execute()
            if all(int(chunk[0]) == version for chunk in chunks):
                for chunk in chunks:
                    pairs += chunk[2:]
                return version, pairs
            first = await script(keys=[], args=[self.prefix, scope, 0, _SCAN_COUNT - 1])
        # Writes keep landing: ZSCAN, then the active rows by id.
        version = int(await r.get(self._key("version")) or 0)
        key = self._key(f"rules:scope:{scope}")
        ids: dict[bytes, None] = {}  # ZSCAN may return a member twice
        cursor = 0
        while True:
            cursor, members = await r.zscan(key, cursor, count=_SCAN_COUNT)
            ids.update((str(int(m)).encode(), None) for m, _score in members)
            if cursor == 0:
                break
        wanted = list(ids)
        pairs = []
        for start in range(0, len(wanted), _SCAN_COUNT):
            batch = wanted[start : start + _SCAN_COUNT]
            rows = cast(list[bytes | None], await r.hmget(self._key("rules:active"), batch))
            for rid, raw in zip(batch, rows, strict=True):
                if raw is not None:
                    pairs += [rid, raw]
        return version, pairs

    async def changed_scopes(self, since: int) -> tuple[int, dict[int, Change | None]] | None:
        """The version and the change log after ``since`` (``P changes``), read in one
        MULTI so that they agree."""
        async with self._guard() as r, r.pipeline(transaction=True) as pipe:
            pipe.get(self._key("version"))
            pipe.zrange(self._key("changes"), f"({int(since)}", "+inf", byscore=True)
            raw, members = await pipe.execute()
        version = int(raw or 0)
        if since > version:
            return None  # the store went back (restored from a backup, or flushed)
        found: dict[int, Change | None] = {}
        for member in cast(list[bytes], members):
            v, change = _message_fields(member)
            if v is not None and since < v <= version:
                found[v] = change
        if len(found) != version - since:
            return None  # the log does not reach back that far
        return version, dict(sorted(found.items()))

    async def rule_states(self, ids: Sequence[int]) -> tuple[int, list[RuleState]]:
        """One read-only script per thousand ids, pipelined; the version answered is the
        smallest the scripts saw."""
        wanted = list(dict.fromkeys(str(int(i)) for i in ids))
        if not wanted:
            return await self.version(), []
        script = self._scripts["rule_states"]
        async with self._guard() as r, r.pipeline(transaction=False) as pipe:
            for start in range(0, len(wanted), _FETCH_CHUNK):
                chunk = wanted[start : start + _FETCH_CHUNK]
                await script(keys=[], args=[self.prefix, *chunk], client=pipe)
            replies: list[list[bytes]] = await pipe.execute()
        out: list[RuleState] = []
        for reply in replies:
            for i in range(1, len(reply), 5):
                rid, scope, match_type, target, raw = reply[i : i + 5]
                out.append(
                    (
                        int(rid),
                        _s(scope),
                        cast(Any, _s(match_type)),
                        _s(target),
                        _snapshot_row(rid, raw) if raw else None,
                    )
                )
        return min(int(reply[0]) for reply in replies), out

    async def add_rule_hits(self, hits: Mapping[int, tuple[int, datetime]]) -> None:
        if not hits:
            return
        args: list[str] = []
        for rule_id, (count, at) in hits.items():
            args += [str(int(rule_id)), str(int(count)), str(_to_us(at))]
        await self._script("add_hits", args)

    # --- events --------------------------------------------------------------------------

    async def put_events(self, events: Sequence[EventRecord]) -> None:
        if not events:
            return
        args: list[str | bytes] = []
        for e in events:
            args += _event_args(e)
        await self._script("put_events", args)

    async def get_event(self, event_id: str) -> EventRecord | None:
        async with self._guard() as r:
            reply = await r.hmget(self._key(f"event:{event_id}"), ["m", "b", "rb"])
        meta, body, rbody = cast(list[bytes | None], reply)
        if meta is None:
            return None
        return _event_from_fields(event_id, meta, body or b"", rbody)

    async def delivered_answers(self, event_ids: Sequence[str]) -> dict[str, StoredAnswer]:
        if not event_ids:
            return {}
        async with self._guard() as r, r.pipeline(transaction=False) as pipe:
            for event_id in event_ids:
                pipe.hmget(self._key(f"event:{event_id}"), ["o", "m", "rb"])
            rows = await pipe.execute()
        out: dict[str, StoredAnswer] = {}
        for event_id, (outcome, meta, rbody) in zip(event_ids, rows, strict=True):
            if meta is None or _s(outcome or b"") not in DELIVERED_OUTCOMES:
                continue
            m = json.loads(meta)
            if m["response_status"] is not None:
                out[event_id] = StoredAnswer(
                    m["response_status"], m["response_content_type"], rbody or b""
                )
        return out

    def delivered_answers_nowait(self, event_ids: Sequence[str]) -> dict[str, StoredAnswer] | None:
        return None  # every read is a round trip: the caller uses delivered_answers

    async def _load_events(self, r: Redis, members: Sequence[str]) -> list[EventRecord]:
        ids = [m.partition("|")[2] for m in members]
        out: list[EventRecord] = []
        for start in range(0, len(ids), _FETCH_CHUNK):
            chunk = ids[start : start + _FETCH_CHUNK]
            async with r.pipeline(transaction=False) as pipe:
                for event_id in chunk:
                    pipe.hmget(self._key(f"event:{event_id}"), ["m", "b", "rb"])
                rows = await pipe.execute()
            out.extend(
                _event_from_fields(event_id, meta, body or b"", rbody)
                for event_id, (meta, body, rbody) in zip(chunk, rows, strict=True)
                if meta is not None
            )
        return out

    async def list_events(
        self, flt: EventFilter, *, cursor: str | None, limit: int
    ) -> tuple[list[EventRecord], str | None]:
        """Newest first, keyset-paged like the SQLite store. One index is walked (the
        recipient's, or each recipient's for ``targets``, else the smallest of the
        verdict, sender and outcome indexes, else all events) from the cursor down to
        ``since``; the other filters are checked on each event's index fields."""
        upper = "+" if cursor is None else "(" + _decode_cursor(cursor)
        lower = "-" if flt.since is None else f"[{_to_us(flt.since):020d}"
        if limit <= 0:
            return [], None
        if flt.targets is not None:
            recipients = [t for t in dict.fromkeys(flt.targets) if flt.target in (None, t)]
            if not recipients:
                return [], None
            indexes = [self._key(f"ev:r:{t}") for t in recipients]
        elif flt.target is not None:
            indexes = [self._key(f"ev:r:{flt.target}")]
        else:
            indexes = []
        async with self._guard() as r:
            if not indexes:
                indexes = [await self._smallest_event_index(r, flt)]
            want = limit + 1  # one more than asked tells whether there is a next page
            matches: list[str] = []
            batch = max(want, 64)
            while len(matches) < want:
                members, exhausted = await self._walk(r, indexes, upper, lower, batch)
                matches += await self._matching_events(r, members, flt)
                if exhausted or not members:
                    break
                upper = "(" + members[-1]
                batch = min(batch * 2, 4096)
            page_members = matches[:limit]
            page = await self._load_events(r, page_members)
        next_cursor = _encode_cursor(page_members[-1]) if len(matches) > limit else None
        return page, next_cursor

    async def _smallest_event_index(self, r: Redis, flt: EventFilter) -> str:
        candidates = [
            self._key(f"ev:{code}:{value}")
            for code, value in (("s", flt.sender), ("v", flt.verdict), ("o", flt.outcome))
            if value is not None
        ]
        if not candidates:
            return self._key("ev:all")
        if len(candidates) == 1:
            return candidates[0]
        async with r.pipeline(transaction=False) as pipe:
            for key in candidates:
                pipe.zcard(key)
            sizes = await pipe.execute()
        return min(zip(sizes, candidates, strict=True))[1]

    async def _walk(
        self, r: Redis, indexes: Sequence[str], upper: str, lower: str, count: int
    ) -> tuple[list[str], bool]:
        """Up to ``count`` members below ``upper`` from the union of ``indexes``, newest
        first, and whether the indexes hold nothing more below them."""
        async with r.pipeline(transaction=False) as pipe:
            for index in indexes:
                pipe.zrange(index, upper, lower, bylex=True, desc=True, offset=0, num=count)
            replies: list[list[bytes]] = await pipe.execute()
        streams = [[_s(m) for m in reply] for reply in replies]
        merged = list(dict.fromkeys(heapq.merge(*streams, reverse=True)))
        exhausted = all(len(s) < count for s in streams) and len(merged) <= count
        return merged[:count], exhausted

    async def _matching_events(
        self, r: Redis, members: Sequence[str], flt: EventFilter
    ) -> list[str]:
        if not members:
            return []
        if flt.verdict is None and flt.sender is None and flt.outcome is None:
            return list(members)  # the walked index already is the filter
        async with r.pipeline(transaction=False) as pipe:
            for m in members:
                pipe.hmget(self._key("event:" + m.partition("|")[2]), ["v", "s", "o"])
            rows = await pipe.execute()
        keep: list[str] = []
        for m, (verdict, sender, outcome) in zip(members, rows, strict=True):
            if verdict is None:
                continue
            if (
                (flt.verdict is not None and _s(verdict) != flt.verdict)
                or (flt.sender is not None and _s(sender) != flt.sender)
                or (flt.outcome is not None and _s(outcome) != flt.outcome)
            ):
                continue
            keep.append(m)
        return keep

    async def purge_events(self, before: datetime) -> int:
        bound = f"({_to_us(before):020d}"
        removed = 0
        while True:
            n = int(await self._script("purge_events", [bound, str(_PURGE_BATCH)]))
            removed += n
            if n < _PURGE_BATCH:
                return removed

    async def count_events(self, outcome: str) -> int:
        # O(1): the outcome index holds exactly the stored events with that outcome, since
        # put_events moves a replaced event between indexes and purge_events unindexes it,
        # each in one script.
        async with self._guard() as r:
            return int(await r.zcard(self._key(f"ev:o:{outcome}")))

    # --- contacts ------------------------------------------------------------------------

    async def add_contacts(self, deltas: Sequence[ContactDelta]) -> None:
        if not deltas:
            return
        args: list[str] = []
        for d in deltas:
            args += [
                d.scope,
                d.sender,
                d.family,
                exact_match_type(d.sender, d.family),
                str(d.count),
                str(d.delivered),
                str(d.muted),
                str(d.dropped),
                str(_to_us(d.first_seen)),
                str(_to_us(d.last_seen)),
                "0" if d.number_type is None else "1",
                d.number_type or "",
                "0" if d.region is None else "1",
                d.region or "",
            ]
        await self._script("add_contacts", args)

    def _contact_key(self, scope: str, sender: str) -> str:
        return f"{self.prefix}contact:{scope}{_US}{sender}"

    async def _load_contacts(self, r: Redis, pairs: Sequence[tuple[str, str]]) -> list[Contact]:
        """The contacts (scope, sender) that exist, in the order given, each with the
        state of its exact rule now."""
        now_us = _to_us(self._clock())
        out: list[Contact] = []
        for start in range(0, len(pairs), _FETCH_CHUNK):
            chunk = pairs[start : start + _FETCH_CHUNK]
            async with r.pipeline(transaction=False) as pipe:
                for scope, sender in chunk:
                    pipe.hgetall(self._contact_key(scope, sender))
                hashes: list[dict[bytes, bytes]] = await pipe.execute()
            found = [(pair, h) for pair, h in zip(chunk, hashes, strict=True) if h]
            if not found:
                continue
            slots = [_US.join((sc, _s(h[b"mt"]), se)) for (sc, se), h in found]
            holders = cast(list[bytes | None], await r.hmget(self._key("rules:slots"), slots))
            rule_ids = [None if h is None else int(h) for h in holders]
            async with r.pipeline(transaction=False) as pipe:
                for rid in rule_ids:
                    if rid is not None:
                        pipe.hmget(self._key(f"rule:{rid}"), ["action", "status", "expires"])
                rule_rows = iter(await pipe.execute())
            for ((scope, sender), h), rid in zip(found, rule_ids, strict=True):
                state: ContactState = "unset"
                if rid is not None:
                    action, status, expires = next(rule_rows)
                    in_force = status == b"active" and (expires is None or int(expires) > now_us)
                    if in_force and action is not None:
                        state = STATE_OF_ACTION[cast(Any, _s(action))]
                out.append(_contact_from_hash(scope, sender, h, state, rid))
        return out

    async def list_contacts(
        self,
        flt: ContactFilter,
        *,
        sort: ContactSort = "count",
        descending: bool = True,
        limit: int,
        offset: int,
    ) -> tuple[list[Contact], int]:
        """One page in the SQLite store's order: ``sort`` (either way), then scope and
        sender ascending. Each sort key has a sorted-set index per scope and one over all
        scopes; a page of one index needs no scan. Several scopes, a family filter over
        all scopes, or a state filter (which depends on rules and the clock) read every
        contact of the scopes concerned and sort in memory."""
        if flt.scopes is not None and not flt.scopes:
            return [], 0
        if sort not in _CONTACT_SORTS:
            raise ValueError(f"cannot sort contacts by {sort!r}")
        field = _CONTACT_SORTS[sort]
        scopes = None if flt.scopes is None else list(dict.fromkeys(flt.scopes))
        if scopes is not None and flt.family is not None:
            scopes = [sc for sc in scopes if family_of_scope(sc) == flt.family]
            if not scopes:
                return [], 0
        limit = max(0, limit)
        async with self._guard() as r:
            if flt.state is None and (scopes is None or len(scopes) == 1):
                if scopes is None and flt.family is None:
                    key, scope = self._key(f"contacts:{field}"), None
                elif scopes is not None:
                    key, scope = self._key(f"contacts:{field}:{scopes[0]}"), scopes[0]
                else:
                    key = ""
                if key:
                    total = await r.zcard(key)
                    members = await _zpage(r, key, descending, offset, limit)
                    pairs = [
                        (scope, _s(m)) if scope is not None else _split_member(m) for m in members
                    ]
                    return await self._load_contacts(r, pairs), int(total)
            candidates = await self._contact_candidates(r, scopes, flt.family, field)
            candidates.sort(key=lambda c: (-c[0] if descending else c[0], c[1], c[2]))
            pairs = [(sc, se) for _, sc, se in candidates]
            if flt.state is None:
                return await self._load_contacts(r, pairs[offset : offset + limit]), len(pairs)
            matching: list[Contact] = []
            for start in range(0, len(pairs), _FETCH_CHUNK):
                loaded = await self._load_contacts(r, pairs[start : start + _FETCH_CHUNK])
                matching += [c for c in loaded if c.state == flt.state]
            return matching[offset : offset + limit], len(matching)

    async def _contact_candidates(
        self, r: Redis, scopes: Sequence[str] | None, family: str | None, field: str
    ) -> list[tuple[float, str, str]]:
        """(sort value, scope, sender) of every contact in ``scopes`` (None: all) and
        ``family`` (None: both)."""
        out: list[tuple[float, str, str]] = []
        if scopes is None:
            reply = await r.zrange(self._key(f"contacts:{field}"), 0, -1, withscores=True)
            for m, score in cast(list[tuple[bytes, float]], reply):
                scope, sender = _split_member(m)
                if family is None or family_of_scope(scope) == family:
                    out.append((score, scope, sender))
            return out
        async with r.pipeline(transaction=False) as pipe:
            for scope in scopes:
                pipe.zrange(self._key(f"contacts:{field}:{scope}"), 0, -1, withscores=True)
            replies: list[list[tuple[bytes, float]]] = await pipe.execute()
        for scope, members in zip(scopes, replies, strict=True):
            out += [(score, scope, _s(m)) for m, score in members]
        return out

    async def get_contact(self, scope: str, sender: str) -> Contact | None:
        async with self._guard() as r:
            found = await self._load_contacts(r, [(scope, sender)])
        return found[0] if found else None

    async def set_contact_category(
        self, scope: str, sender: str, category: str | None
    ) -> Contact | None:
        key = self._contact_key(scope, sender)
        async with self._guard() as r:
            if not await r.exists(key):
                return None
            if category is None:
                await r.hdel(key, "category")
            else:
                await r.hset(key, "category", category)
            found = await self._load_contacts(r, [(scope, sender)])
        return found[0] if found else None

    # --- audit ---------------------------------------------------------------------------

    async def add_audit(self, entries: Sequence[NewAudit]) -> None:
        if not entries:
            return
        args: list[str] = []
        for e in entries:
            at = _to_us(e.at)
            entry = {
                "at": at,
                "actor": e.actor,
                "action": e.action,
                "scope": e.scope,
                "rule_id": e.rule_id,
                "before": None if e.before is None else dict(e.before),
                "after": None if e.after is None else dict(e.after),
            }
            args += [
                str(at),
                e.actor,
                "0" if e.scope is None else "1",
                e.scope or "",
                json.dumps(entry, separators=(",", ":")),
            ]
        await self._script("add_audit", args)

    async def list_audit(
        self, *, scope: str | None = None, actor: str | None = None, limit: int, offset: int
    ) -> tuple[list[AuditEntry], int]:
        """Newest first (at, then id, descending: the sorted sets' reverse order)."""
        limit = max(0, limit)
        entries = self._key("audit:entries")
        async with self._guard() as r:
            if scope is not None and actor is not None:
                key = self._key(f"audit:scope:{scope}")
                members = cast(list[bytes], await r.zrange(key, 0, -1, desc=True))
                matching: list[AuditEntry] = []
                for start in range(0, len(members), _FETCH_CHUNK):
                    chunk = members[start : start + _FETCH_CHUNK]
                    raws = cast(list[bytes | None], await r.hmget(entries, chunk))
                    for m, raw in zip(chunk, raws, strict=True):
                        if raw is not None:
                            entry = _audit_from_json(int(m), raw)
                            if entry.actor == actor:
                                matching.append(entry)
                return matching[offset : offset + limit], len(matching)
            if scope is not None:
                key = self._key(f"audit:scope:{scope}")
            elif actor is not None:
                key = self._key(f"audit:actor:{actor}")
            else:
                key = self._key("audit:all")
            total = await r.zcard(key)
            page = (
                cast(list[bytes], await r.zrange(key, offset, offset + limit - 1, desc=True))
                if limit
                else []
            )
            raws = cast(list[bytes | None], await r.hmget(entries, page)) if page else []
        found = [_audit_from_json(int(m), raw) for m, raw in zip(page, raws, strict=True) if raw]
        return found, int(total)

    # --- invalidations -------------------------------------------------------------------

    async def listen(
        self,
        on_change: Callable[[int | None, Change | None], None],
        *,
        retry_max_s: float = 2.0,
    ) -> None:
        """Follow the invalidation channel until cancelled.

        ``on_change(version, change)`` is called for each message (``change``: scope →
        rule ids or None, as ``changed_scopes`` gives it; None when the message does not
        list the scopes); ``on_change(None, None)`` after each
        (re)subscription, because messages published while the connection was down are
        lost: the caller compares versions then. A lost connection is retried with
        backoff (50 ms doubling up to ``retry_max_s``)."""
        delay = 0.05
        warned = False
        while True:
            pubsub: PubSub | None = None
            try:
                async with self._guard(probe=True) as r:
                    pubsub = r.pubsub()
                    await pubsub.subscribe(self.channel)
                    while True:
                        message = await pubsub.get_message(timeout=None)
                        if message is None:
                            continue
                        kind = message.get("type")
                        if kind == "subscribe":
                            # Also seen when redis-py reconnects and subscribes again by
                            # itself: either way, something may have been missed.
                            self.subscribed = True
                            delay = 0.05
                            if warned:
                                log.info("invalidations: subscribed again to %s", self.channel)
                                warned = False
                            on_change(None, None)
                        elif kind == "message":
                            on_change(*_message_fields(message.get("data")))
            except StoreUnavailable as exc:
                self.subscribed = False
                if not warned:
                    log.warning("invalidations: lost the subscription, retrying: %s", exc)
                    warned = True
            except RedisError as exc:  # a protocol surprise: log it and subscribe again
                self.subscribed = False
                log.warning("invalidations: %s; subscribing again", exc)
            except Exception:  # a bug must not end the subscription for the process's life
                self.subscribed = False
                log.exception("invalidations: unexpected error; subscribing again")
            finally:
                if pubsub is not None:
                    with contextlib.suppress(RedisError, OSError):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, retry_max_s)


async def _zpage(r: Redis, key: str, descending: bool, offset: int, limit: int) -> list[bytes]:
    """Members ``offset`` to ``offset + limit`` of a sorted set ordered by score (either
    way), then by member *ascending*. Redis's reverse order breaks ties by member
    descending, so for a descending page the tie groups it touches are read again in
    ascending order (ZRANGE BYSCORE s s LIMIT keeps ties ascending)."""
    if limit <= 0:
        return []
    if not descending:
        return cast(list[bytes], await r.zrange(key, offset, offset + limit - 1))
    page = cast(
        list[tuple[bytes, float]],
        await r.zrange(key, offset, offset + limit - 1, desc=True, withscores=True),
    )
    scores = list(dict.fromkeys(int(score) for _, score in page))
    if not scores:
        return []
    async with r.pipeline(transaction=False) as pipe:
        for score in scores:
            pipe.zcount(key, f"({score}", "+inf")  # rank of the group's first member
            pipe.zcount(key, score, score)
        counts: list[int] = await pipe.execute()
    async with r.pipeline(transaction=False) as pipe:
        for i, score in enumerate(scores):
            start, size = counts[2 * i], counts[2 * i + 1]
            lo, hi = max(offset, start), min(offset + limit, start + size)
            pipe.zrange(key, score, score, byscore=True, offset=lo - start, num=max(0, hi - lo))
        groups: list[list[bytes]] = await pipe.execute()
    return [m for group in groups for m in group]


def _split_member(member: bytes) -> tuple[str, str]:
    scope, _, sender = _s(member).partition(_US)
    return scope, sender


def _contact_from_hash(
    scope: str, sender: str, h: Mapping[bytes, bytes], state: ContactState, rule_id: int | None
) -> Contact:
    def opt(name: bytes) -> str | None:
        value = h.get(name)
        return None if value is None else value.decode()

    return Contact(
        scope=scope,
        sender=sender,
        family=cast(Any, _s(h[b"family"])),
        state=state,
        rule_id=rule_id,
        count=int(h[b"count"]),
        delivered=int(h[b"delivered"]),
        muted=int(h[b"muted"]),
        dropped=int(h[b"dropped"]),
        first_seen=_from_us(h[b"first"]),
        last_seen=_from_us(h[b"last"]),
        category=opt(b"category"),
        number_type=opt(b"number_type"),
        region=opt(b"region"),
    )


def _audit_from_json(audit_id: int, raw: bytes) -> AuditEntry:
    e = json.loads(raw)
    return AuditEntry(
        id=audit_id,
        at=_from_us(e["at"]),
        actor=e["actor"],
        action=e["action"],
        scope=e["scope"],
        rule_id=e["rule_id"],
        before=e["before"],
        after=e["after"],
    )


def _message_version(data: object) -> int | None:
    """The version in an invalidation payload, or None when it cannot be read (the
    caller then compares versions itself)."""
    try:
        payload = json.loads(data) if isinstance(data, (bytes, str)) else None
        version = payload.get("version") if isinstance(payload, dict) else None
    except ValueError:
        return None
    return version if isinstance(version, int) else None


def _message_fields(data: object) -> tuple[int | None, Change | None]:
    """The version and the ``Change`` of an invalidation payload or change log entry:
    (None, None) when unreadable; the change None when its scopes are not listed; a
    scope's rule ids None when they are not listed (the whole scope)."""
    version = _message_version(data)
    if version is None:
        return None, None
    payload = json.loads(cast(bytes | str, data))
    scopes = payload.get("scopes")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        return version, None
    rules = payload.get("rules")
    if not isinstance(rules, dict):
        rules = {}
    change: dict[str, tuple[int, ...] | None] = {}
    for scope in scopes:
        ids = rules.get(scope)
        if isinstance(ids, list) and ids and all(type(i) is int for i in ids):
            change[scope] = tuple(ids)
        else:
            change[scope] = None
    return version, change


def scopes_of(data: bytes | str) -> tuple[str, ...]:
    """The scopes named in an invalidation payload (empty when unreadable)."""
    try:
        payload = json.loads(data)
    except ValueError:
        return ()
    scopes = payload.get("scopes") if isinstance(payload, dict) else None
    return tuple(s for s in scopes if isinstance(s, str)) if isinstance(scopes, list) else ()
