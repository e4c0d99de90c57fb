"""Store backends behind one Protocol (``gateway.store.base.Store``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from gateway.store.base import (
    Change,
    EventFilter,
    EventRecord,
    RuleFilter,
    SnapshotRule,
    Store,
)

__all__ = [
    "EventFilter",
    "EventRecord",
    "PushesInvalidations",
    "RuleFilter",
    "SnapshotRule",
    "Store",
    "open_store",
]


@runtime_checkable
class PushesInvalidations(Protocol):
    """A store that tells its processes about writes (Redis pub/sub), beside polling."""

    async def listen(self, on_change: Callable[[int | None, Change | None], None]) -> None:
        """Run until cancelled: ``on_change(version, change)`` per write anywhere (what it
        changed, as ``Store.changed_scopes`` says, or None when the message does not
        say), and ``on_change(None, None)`` whenever a change may have been missed (after
        each (re)connection), for the caller to compare versions."""


def open_store(url: str, *, key_prefix: str = "sendergate:", thread_nice: int = 0) -> Store:
    """Build (not yet open) the store for a ``[store] url``; ``key_prefix`` is the Redis
    store's ``[store] key_prefix``, ``thread_nice`` the SQLite store's ``[store]
    thread_nice``."""
    if url.startswith("sqlite:///"):
        from gateway.store.sqlite import SQLiteStore

        return SQLiteStore(url.removeprefix("sqlite:///"), thread_nice=thread_nice)
    if url.startswith(("redis://", "rediss://")):
        from gateway.store.redis import RedisStore

        return RedisStore(url, key_prefix=key_prefix)
    raise ValueError("unsupported store url: use sqlite:///PATH or redis://")
