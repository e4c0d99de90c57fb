"""What the lifespan builds and the handlers use, handed on as ``app.state.gw``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request

from gateway.http.auth import KeyRing
from gateway.settings import Settings
from gateway.snapshot import SnapshotHolder
from gateway.store.base import Store
from gateway.turns import TurnGate


@dataclass(slots=True)
class AppState:
    settings: Settings
    store: Store
    snapshot: SnapshotHolder
    keys: KeyRing
    clock: Callable[[], float] = time.time
    turns: TurnGate = field(default_factory=TurnGate)  # webhook answers leave together
    # Filled by the ingress layer when it starts (forwarder, providers, recorder...).
    extras: dict[str, Any] = field(default_factory=dict)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)


def get_state(request: Request) -> AppState:
    state = request.app.state.gw
    assert isinstance(state, AppState)
    return state
