"""Store backends behind one Protocol (``gateway.store.base.Store``)."""

from __future__ import annotations

from gateway.store.base import EventFilter, EventRecord, RuleFilter, SnapshotRule, Store

__all__ = ["EventFilter", "EventRecord", "RuleFilter", "SnapshotRule", "Store", "open_store"]


def open_store(url: str) -> Store:
    """Build (not yet open) the store for a ``[store] url``."""
    if url.startswith("sqlite:///"):
        from gateway.store.sqlite import SQLiteStore

        return SQLiteStore(url.removeprefix("sqlite:///"))
    if url.startswith(("redis://", "rediss://")):
        raise ValueError("the Redis store is not built yet (see the Redis store issue)")
    raise ValueError(f"unsupported store url {url!r}: use sqlite:///PATH or redis://")
