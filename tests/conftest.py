"""Shared fixtures.

Stores: ``store`` is an opened, empty store, once per backend in ``STORE_BACKENDS``, so
that the contract suite (``tests/contract/store_contract.py``) runs unchanged on each.

Redis: ``redis_server`` is one real redis-server for the session (tests/redis_support.py),
started on first use; each Redis store gets its own key prefix on it, so tests never see
each other's keys. Tests that stop or crash Redis start their own ``RedisServer``.

Apps: ``app_store`` is the ``[store]`` of an app under test, once per backend (pass it as
``make_settings(tmp_path, store=app_store)``); ``app_store_settings`` is the same for a
fixture parametrized its own way (``indirect``).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.settings import StoreSettings
from gateway.store import Store
from gateway.store.redis import RedisStore
from gateway.store.sqlite import SQLiteStore
from tests.redis_support import RedisServer, require_redis_server

# One entry per backend.
STORE_BACKENDS = [pytest.param("sqlite"), pytest.param("redis", marks=pytest.mark.redis)]

_prefixes = itertools.count(1)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server shared by the session (skipped without the binary, except
    under CI=true, where that fails)."""
    binary = require_redis_server()
    server = RedisServer(tmp_path_factory.mktemp("redis"), binary=binary)
    server.start()
    try:
        yield server
    finally:
        server.stop(save=False)


def fresh_prefix() -> str:
    """A key prefix no other test in this session uses."""
    return f"test{next(_prefixes)}:"


def _make_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if backend == "sqlite":
        return SQLiteStore(str(tmp_path / "store" / "sendergate.db"))
    if backend == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return RedisStore(server.url, key_prefix=fresh_prefix())
    raise AssertionError(f"no store fixture for backend {backend!r}")


@pytest.fixture(params=STORE_BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An opened, empty store; closed after the test."""
    backend: str = request.param
    opened = _make_store(backend, request, tmp_path)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def app_store_settings(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> StoreSettings:
    """The ``[store]`` of an app under test on ``backend``: SQLite in ``tmp_path`` (what
    ``tests.apptools.make_settings`` has by default), or a fresh key prefix on the
    session's redis-server."""
    if backend == "sqlite":
        return StoreSettings(url=f"sqlite:///{tmp_path / 'gw.db'}", poll_interval_s=0.05)
    if backend == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return StoreSettings(url=server.url, key_prefix=fresh_prefix(), poll_interval_s=0.05)
    raise AssertionError(f"no app store for backend {backend!r}")


@pytest.fixture(params=STORE_BACKENDS)
def app_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSettings:
    """The ``[store]`` settings of an app under test, once per backend."""
    backend: str = request.param
    return app_store_settings(backend, request, tmp_path)
