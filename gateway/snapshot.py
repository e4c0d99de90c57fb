"""The current RuleSet, swapped atomically when the store's version moves.

Webhooks read ``holder.current`` — a plain attribute read, never an await on the store.
A reload builds a fresh, immutable RuleSet and replaces the reference in one assignment,
so a request sees either the old snapshot or the new one, never a mix.

Changes reach a process three ways:
* its own admin writes call ``reload()`` and wait for it (read-your-writes for the API);
* the poller asks the store every ``poll_interval_s`` what changed since its snapshot
  (SQLite: other workers and the CLI writing to the same file become visible well
  within 1 s);
* a store that can push invalidations (Redis) calls ``notify(version, scopes)`` per
  write, and ``notify(None)`` after each (re)connection, when messages may have been
  lost: the poller then compares versions, so nothing is missed.

Incremental reloads. Every write says what it changed — the scopes (a target's id, or
an org list) and, for rule writes, the ids of the rules changed in each — in the Redis
invalidation message and in the store's change log (``Store.changed_scopes``). The
holder keeps, for the versions after its snapshot's, what each one changed (``_seen``),
and the version at which it last read each scope (``_fresh``) and each rule
(``_fresh_rules``). It reads only what is not fresh enough: in a large scope (an org
list) just the changed rules (``Store.rule_states``, applied with
``RuleSet.patch_rules``), else the whole scope (``Store.scope_rules``, applied with
``RuleSet.replace_scopes``); either way every other scope's compiled data is shared.
The snapshot's ``version`` only moves past a version once everything that version
changed has been read at or after it, so ``version`` always means "every write up to
here is in". When the versions heard of do not account for every version up to the
store's (a lost message, a reconnection, a write whose message is still on its way, a
write by this process), the change log fills the gap. Bursts coalesce: messages that
arrive during a reload are handled together by the next one.

A full reload (``snapshot_rules`` and ``compile_rules``, seconds for a million rules)
happens at start-up, when the log cannot account for a version (it keeps the last
``CHANGE_LOG_KEEP``, or the store went back), when a write changed more scopes than the
log lists, and when incremental is not cheaper: more than ``max_scopes`` scopes to read
whole, or scopes to read whole holding more than half of the rules. (Costs: the
``gateway.rules`` docstring; end to end: docs/redis.md.) ``[store] incremental_reload =
false`` makes every change a full reload.

Cold start (SPEC §5): when the store cannot be reached at start-up there is no snapshot,
and webhooks are answered 503 so that providers retry, unless ``[store] cold_start =
"fail_open"``: then ``use_defaults()`` installs an empty rule set (the config's default
modes decide) until the first real load replaces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping

from gateway.errors import StoreUnavailable
from gateway.models import Target
from gateway.rules import RuleSet, compile_rules
from gateway.settings import Settings
from gateway.store.base import Change, RuleState, SnapshotRule, Store

log = logging.getLogger("sendergate.snapshot")

DEFAULT_MAX_SCOPES = 256  # more scopes to read whole than this at once: a full reload
# Read a scope rule by rule when it holds more than this many times the changed rules.
_PATCH_RATIO = 4
_MAX_ROUNDS = 4  # read-and-apply rounds per refresh before the next wake takes over


class SnapshotHolder:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        incremental: bool | None = None,
        max_scopes: int = DEFAULT_MAX_SCOPES,
    ) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._incremental = (
            settings.store.incremental_reload if incremental is None else incremental
        )
        self._max_scopes = max_scopes
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self.current: RuleSet | None = None
        self.loaded_at: float | None = None
        self.reloads = 0  # snapshots swapped in (full or incremental)
        self.full_reloads = 0
        self.incremental_reloads = 0
        self.last_error: str | None = None
        # True while ``current`` is the fail_open placeholder, not rules from the store.
        self.defaults_only = False
        # Versions after the snapshot's that this process heard of → what each one
        # changed: scope → rule ids or None for the whole scope (and None for the whole
        # change: too many scopes to list, only a full reload will do).
        self._seen: dict[int, dict[str, tuple[int, ...] | None] | None] = {}
        # Scope (rule id) → the store version at which it was last read (kept while
        # above the snapshot's version).
        self._fresh: dict[str, int] = {}
        self._fresh_rules: dict[int, int] = {}
        self._compare = False  # the next refresh asks the store what changed

    # --- public --------------------------------------------------------------------------

    async def reload(self, scopes: Iterable[str] | None = None) -> RuleSet:
        """Make the snapshot current now (coalescing concurrent callers) and return it.

        Without a snapshot, or with ``incremental_reload`` off, this is a full load when
        the store's version moved. Otherwise the store's change log says what changed
        and only that is read. ``scopes`` (optional) names scopes the caller has just
        written, which are read whole in any case."""
        hint = frozenset(scopes or ())
        async with self._lock:
            if self._needs_full_load():
                return await self._full_reload()
            return await self._catch_up(hint, compare=True)

    def use_defaults(self) -> None:
        """Cold start with ``fail_open``: decide with the default modes and no rules until
        the store answers. Does nothing once a snapshot is loaded."""
        if self.current is not None:
            return
        # Version -1: no store has it, so the poller's first comparison reloads.
        self.current = compile_rules(
            [],
            [],
            mail_mode=self._settings.mail_filter_mode,
            phone_mode=self._settings.phone_filter_mode,
            version=-1,
        )
        self.defaults_only = True

    def request_reload(self) -> None:
        self._compare = True
        self._wake.set()

    def notify(self, version: int | None, scopes: Change | Iterable[str] | None = None) -> None:
        """An invalidation: the store is at ``version`` now and that write changed
        ``scopes`` (scope names, or a ``Change``: scope → the ids of the rules changed
        there, or None for the whole scope). ``version`` None: messages may have been
        lost, compare with the store; ``scopes`` None (or empty): not said, the store's
        change log will say. The poller wakes unless this snapshot already has that
        version."""
        current = self.current
        if (
            version is not None
            and current is not None
            and version <= current.version
            and not self.defaults_only
        ):
            return  # already in (this process's own admin writes reload before answering)
        change: dict[str, tuple[int, ...] | None] = {}
        if isinstance(scopes, Mapping):
            change.update(scopes)
        elif scopes is not None:
            change.update((scope, None) for scope in scopes)
        if version is not None and change:
            self._seen[version] = change
        else:
            self._compare = True
        self._wake.set()

    async def run(self, interval_s: float) -> None:
        """Refresh on each invalidation, and every ``interval_s`` ask the store what
        changed. Store errors are logged and the last snapshot stays in force
        (fail-static)."""
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that arrives as the wait ends, and this loop would run on.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval_s):
                    await self._wake.wait()
            timed_out = not self._wake.is_set()
            self._wake.clear()
            try:
                await self._refresh(compare=timed_out)
            except StoreUnavailable as exc:
                if self.last_error != str(exc):
                    log.warning("snapshot refresh failed, keeping the last one: %s", exc)
                self.last_error = str(exc)
            except Exception:  # a bug must not stop refreshing for the life of the process
                log.exception("snapshot refresh failed")

    # --- refresh -------------------------------------------------------------------------

    async def _refresh(self, *, compare: bool) -> None:
        async with self._lock:
            compare = compare or self._compare
            self._compare = False
            if self._needs_full_load():
                await self._full_reload()
            elif not self._incremental:
                # As before incremental reloads: compare versions, load everything.
                current = self.current
                assert current is not None
                if await self._store.version() != current.version:
                    await self._full_reload(force=True)
            elif compare or self._seen:
                await self._catch_up(frozenset(), compare=compare)

    def _needs_full_load(self) -> bool:
        return self.current is None or self.defaults_only

    async def _full_reload(self, *, force: bool = False) -> RuleSet:
        """Read and compile everything (under the lock)."""
        # Scopes read from here on are read after this snapshot: none is fresher. (And
        # reads of an attempt that ends here are in no snapshot.)
        self._fresh.clear()
        self._fresh_rules.clear()
        version, targets, rows = await self._store.snapshot_rules()
        current = self.current
        if (
            not force
            and current is not None
            and not self.defaults_only
            and current.version == version
        ):
            return current
        # Compiling a large rule set is CPU work; a thread lets the event loop keep
        # answering webhooks from the old snapshot meanwhile.
        ruleset = await asyncio.to_thread(
            compile_rules,
            targets,
            rows,
            mail_mode=self._settings.mail_filter_mode,
            phone_mode=self._settings.phone_filter_mode,
            version=version,
        )
        self._install(ruleset)
        self.full_reloads += 1
        self.defaults_only = False
        return ruleset

    async def _catch_up(self, hint: frozenset[str], *, compare: bool) -> RuleSet:
        """Bring the snapshot up to the newest version heard of by reading only the
        scopes that changed; fall back to a full reload when that is not possible or not
        cheaper (under the lock)."""
        current = self.current
        assert current is not None
        if not self._incremental:
            if await self._store.version() == current.version:
                return current
            return await self._full_reload(force=True)
        base = current.version
        goal = base  # the newest store version known to exist
        if compare:
            answer = await self._ask_log(base)
            if answer is None:
                return await self._full_reload(force=True)
            goal = answer
        # progress[0]: the RuleSet built so far. ``_fresh`` records reads that are in it,
        # so it is installed even when a later read fails.
        progress = [current]
        try:
            full = await self._rounds(base, goal, set(hint), progress)
        except BaseException:
            self._settle(current, progress[0], base)
            raise
        if full:
            return await self._full_reload(force=True)
        return self._settle(current, progress[0], base)

    async def _rounds(
        self, base: int, goal: int, pending: set[str], progress: list[RuleSet]
    ) -> bool:
        """Read stale scopes and fill gaps from the log until every version up to the
        newest one known is in ``progress[0]``; True when only a full reload will do."""
        for _ in range(_MAX_ROUNDS):
            if any(change is None for v, change in self._seen.items() if v > base):
                return True  # a write of very many scopes
            whole, by_rule = self._stale(base, progress[0])
            whole |= pending
            pending.clear()
            if by_rule:
                version, states = await self._store.rule_states(sorted(by_rule))
                if version < base:
                    return True  # the store went back
                patched = await self._patch(progress[0], states)
                if patched is None:  # a slot held by a rule whose change is not in yet
                    whole |= {state[1] for state in states}
                else:
                    progress[0] = patched
                    for rule_id in by_rule:
                        self._fresh_rules[rule_id] = max(
                            self._fresh_rules.get(rule_id, -1), version
                        )
                goal = max(goal, version)
            if whole:
                if self._too_costly(progress[0], whole):
                    return True
                version, targets, rows = await self._store.scope_rules(sorted(whole))
                if version < base:
                    return True  # the store went back
                progress[0] = await self._apply(progress[0], targets, rows)
                for scope in whole:
                    self._fresh[scope] = max(self._fresh.get(scope, -1), version)
                goal = max(goal, version)
            covered = self._covered(base)
            goal = max(goal, max(self._seen, default=base))
            if covered >= goal:
                return False
            if self._unheard(covered, goal):
                answer = await self._ask_log(covered)
                if answer is None:
                    return True
                goal = max(goal, answer)
        self._wake.set()  # changes keep coming: go on at the next wake
        return False

    def _settle(self, current: RuleSet, ruleset: RuleSet, base: int) -> RuleSet:
        """Install what was built, under the version up to which it is complete."""
        covered = self._covered(base)
        if ruleset is current and covered == base:
            return current
        ruleset = ruleset.with_version(covered)
        self._install(ruleset)
        self.incremental_reloads += 1
        return ruleset

    async def _ask_log(self, since: int) -> int | None:
        """Learn from the store's change log what each version after ``since`` changed,
        and return the store's version; None when the log cannot say (a full reload is
        needed)."""
        answer = await self._store.changed_scopes(since)
        if answer is None:
            return None
        version, changes = answer
        if version < since:
            return None
        for v, change in changes.items():
            if v > since:
                self._seen[v] = None if change is None else dict(change)
        return version

    def _stale(self, base: int, ruleset: RuleSet) -> tuple[set[str], set[int]]:
        """What versions heard of changed after it was last read: scopes to read whole,
        and rules to read one by one (in scopes much larger than their changes)."""
        fresh, fresh_rules = self._fresh, self._fresh_rules
        whole: set[str] = set()
        by_scope: dict[str, set[int]] = {}
        for v, change in self._seen.items():
            if v <= base or not change:
                continue
            for scope, ids in change.items():
                if fresh.get(scope, -1) >= v:
                    continue
                if ids is None:
                    whole.add(scope)
                else:
                    stale = {i for i in ids if fresh_rules.get(i, -1) < v}
                    if stale:
                        by_scope.setdefault(scope, set()).update(stale)
        by_rule: set[int] = set()
        for scope, stale_ids in by_scope.items():
            if scope in whole:
                continue
            if len(stale_ids) * _PATCH_RATIO < ruleset.scope_rule_count(scope):
                by_rule |= stale_ids
            else:  # a small scope: reading it whole costs no more
                whole.add(scope)
        return whole, by_rule

    def _has(self, v: int, scope: str, ids: tuple[int, ...] | None) -> bool:
        """What version ``v`` changed in ``scope`` has been read at or after ``v``."""
        if self._fresh.get(scope, -1) >= v:
            return True
        if ids is None:
            return False
        fresh_rules = self._fresh_rules
        return all(fresh_rules.get(i, -1) >= v for i in ids)

    def _covered(self, base: int) -> int:
        """The highest version up to which every write is in the snapshot being built."""
        v = base
        while True:
            change = self._seen.get(v + 1)
            if change is None or not all(
                self._has(v + 1, scope, ids) for scope, ids in change.items()
            ):
                return v
            v += 1

    def _unheard(self, covered: int, goal: int) -> bool:
        """Some version in (covered, goal] was not heard of."""
        heard = sum(1 for v in self._seen if covered < v <= goal)
        return heard < goal - covered

    def _too_costly(self, ruleset: RuleSet, need: set[str]) -> bool:
        """Reading ``need`` scope by scope costs about what reading everything does."""
        if len(need) > self._max_scopes:
            return True
        rows = sum(ruleset.scope_rule_count(scope) for scope in need)
        return rows > 1000 and rows * 2 > ruleset.rule_count

    async def _apply(
        self,
        ruleset: RuleSet,
        targets: list[Target],
        rows: dict[str, list[SnapshotRule]],
    ) -> RuleSet:
        total = sum(len(r) for r in rows.values())
        if total < 2000 and ruleset.target_count < 10_000:
            # Small: less than a millisecond, cheaper than the hop to a thread.
            return ruleset.replace_scopes(targets, rows, version=ruleset.version)
        return await asyncio.to_thread(
            ruleset.replace_scopes, targets, rows, version=ruleset.version
        )

    async def _patch(self, ruleset: RuleSet, states: list[RuleState]) -> RuleSet | None:
        scopes = {state[1] for state in states}
        size = sum(ruleset.scope_rule_count(scope) for scope in scopes)
        if size < 20_000 and ruleset.target_count < 10_000:
            return ruleset.patch_rules(states, version=ruleset.version)
        return await asyncio.to_thread(ruleset.patch_rules, states, version=ruleset.version)

    def _install(self, ruleset: RuleSet) -> None:
        version = ruleset.version
        self._seen = {v: s for v, s in self._seen.items() if v > version}
        self._fresh = {s: v for s, v in self._fresh.items() if v > version}
        self._fresh_rules = {i: v for i, v in self._fresh_rules.items() if v > version}
        self.current = ruleset
        self.loaded_at = self._clock()
        self.reloads += 1
        self.last_error = None
