"""Shared fixtures.

Stores: ``store`` is an opened, empty store, once per backend in ``STORE_BACKENDS``, so
that the contract suite (``tests/contract/store_contract.py``) runs unchanged on each.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.store import Store
from gateway.store.sqlite import SQLiteStore

# One entry per backend. The Redis backend adds
#     pytest.param("redis", marks=pytest.mark.redis),
# and a branch in ``_make_store`` that asks for its redis-server fixture with
# ``request.getfixturevalue(...)`` and hands the store a fresh database.
STORE_BACKENDS = [pytest.param("sqlite")]


def _make_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if backend == "sqlite":
        return SQLiteStore(str(tmp_path / "store" / "sendergate.db"))
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
