"""A real gateway for the client and CLI tests: ``create_app`` under uvicorn in a thread,
with a generic HMAC source whose forward URL is a recording downstream app, so that
tests can make events (and quarantine) by sending webhooks."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway.app import create_app
from gateway.settings import NumberDecl, RuleDecl
from tests import providers_support as ps
from tests.apptools import make_settings
from tests.servers import RecordingApp, UvicornThread

GENERIC_SECRET = "cli-generic-secret"
HOME_NUMBER = "+14155550100"  # one of MEMBER_TARGETS
BLOCKED_PREFIX = "+1900"


@dataclass
class ApiWorld:
    gateway: UvicornThread
    downstream: UvicornThread
    app: RecordingApp

    @property
    def url(self) -> str:
        return self.gateway.url

    def send_sms(self, sender: str, recipient: str = HOME_NUMBER) -> httpx.Response:
        """A signed SMS webhook through the ``generic`` source."""
        body = json.dumps(
            {"id": f"sms-{time.time_ns()}", "from": sender, "to": recipient, "text": "hi"}
        ).encode()
        signed = ps.generic_hmac_request(GENERIC_SECRET, f"{self.url}/hooks/generic", body)
        return httpx.post(signed.url, headers=signed.headers, content=signed.body, timeout=10)


@contextmanager
def api_world(
    tmp: Path, *, app_options: Mapping[str, Any] | None = None, **changes: Any
) -> Iterator[ApiWorld]:
    """The gateway (settings from ``make_settings``; ``changes`` override them) with
    number ``HOME_NUMBER`` declared and an org-wide phone block on ``BLOCKED_PREFIX``.
    ``app_options`` are more keyword arguments of ``create_app``."""
    app = RecordingApp()
    with ExitStack() as stack:
        downstream = stack.enter_context(UvicornThread(app))
        source = ps.source(
            "generic",
            GENERIC_SECRET,
            forward_url=f"{downstream.url}/generic",
            options={
                "channel": "sms",
                "sender_field": "from",
                "recipient_field": "to",
                "event_id_field": "id",
            },
        )
        changes.setdefault("sources", {"generic": source})
        changes.setdefault("numbers", (NumberDecl(HOME_NUMBER),))
        changes.setdefault("org_phone_rules", (RuleDecl("block", "number_prefix", BLOCKED_PREFIX),))
        app_under_test = create_app(make_settings(tmp, **changes), **(app_options or {}))
        gateway = stack.enter_context(UvicornThread(app_under_test))
        yield ApiWorld(gateway, downstream, app)
