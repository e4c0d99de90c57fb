"""The current RuleSet, swapped atomically when the store's version moves.

Webhooks read ``holder.current`` — a plain attribute read, never an await on the store.
A reload compiles a fresh, immutable RuleSet and replaces the reference in one
assignment, so a request sees either the old snapshot or the new one, never a mix.

Changes reach a process three ways:
* its own admin writes call ``reload()`` and wait for it (read-your-writes for the API);
* the poller compares ``store.version()`` every ``poll_interval_s`` (SQLite: other
  workers and the CLI writing to the same file become visible well within 1 s);
* a store that can push invalidations (Redis) calls ``notify(version)`` per write, and
  ``notify(None)`` after each (re)connection, when messages may have been lost: the
  poller then compares versions, so nothing is missed.

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
from collections.abc import Callable

from gateway.errors import StoreUnavailable
from gateway.rules import RuleSet, compile_rules
from gateway.settings import Settings
from gateway.store.base import Store

log = logging.getLogger("sendergate.snapshot")


class SnapshotHolder:
    def __init__(
        self, store: Store, settings: Settings, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self.current: RuleSet | None = None
        self.loaded_at: float | None = None
        self.reloads = 0
        self.last_error: str | None = None
        # True while ``current`` is the fail_open placeholder, not rules from the store.
        self.defaults_only = False

    async def reload(self) -> RuleSet:
        """Load and compile the store's rules now (coalescing concurrent callers)."""
        async with self._lock:
            version, targets, rows = await self._store.snapshot_rules()
            if self.current is not None and self.current.version == version:
                return self.current
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
            self.current = ruleset
            self.loaded_at = self._clock()
            self.reloads += 1
            self.last_error = None
            self.defaults_only = False
            return ruleset

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
        self._wake.set()

    def notify(self, version: int | None) -> None:
        """An invalidation: the store is at ``version`` now (None: unknown, compare). The
        poller wakes and reloads unless this snapshot already is that version (this
        process's own admin writes reload before they answer)."""
        current = self.current
        if version is not None and current is not None and current.version == version:
            return
        self._wake.set()

    async def run(self, interval_s: float) -> None:
        """Poll the store's version; reload when it moved. Store errors are logged and
        the last snapshot stays in force (fail-static)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=interval_s)
            self._wake.clear()
            try:
                version = await self._store.version()
                if self.current is None or version != self.current.version:
                    await self.reload()
            except StoreUnavailable as exc:
                if self.last_error != str(exc):
                    log.warning("snapshot refresh failed, keeping the last one: %s", exc)
                self.last_error = str(exc)
            except Exception:  # a bug must not stop refreshing for the life of the process
                log.exception("snapshot refresh failed")
