"""Shared helpers for tests that run the app through its lifespan (TestClient)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.settings import ApiKey, Settings, StoreSettings

ADMIN_KEY = "test-admin-key"
MEMBER_KEY = "test-member-key"
MEMBER_TARGETS = ("sales@acme.example", "+14155550100")

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
MEMBER = {"X-API-Key": MEMBER_KEY}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def make_settings(tmp_path: Path, **changes: Any) -> Settings:
    base = Settings(
        store=StoreSettings(url=f"sqlite:///{tmp_path / 'gw.db'}", poll_interval_s=0.05),
        api_keys=(
            ApiKey("ops", sha(ADMIN_KEY), "admin"),
            ApiKey("sales-agent", sha(MEMBER_KEY), "member", MEMBER_TARGETS),
        ),
    )
    return replace(base, **changes)


@contextmanager
def running(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=True) as client:
        yield client
