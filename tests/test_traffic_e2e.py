"""Real traffic through a running gateway (uvicorn in a thread, a recording downstream
app): contacts counted from signed webhooks, contact states obeyed by the next webhook,
per-sender rate limits, Prometheus metrics after traffic, one JSON log line per event.
The contact and rate-limit tests run on both stores (SQLite, and Redis, where the rate
limit is counted by ``RedisRateLimiter``)."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.logs import JsonFormatter
from gateway.settings import NumberDecl, RuleDecl
from tests.apiserver import HOME_NUMBER, ApiWorld, api_world
from tests.apptools import ADMIN
from tests.conftest import STORE_BACKENDS, app_store_settings

pytestmark = pytest.mark.slow

LIMITED = "+14155550101"
# Runs a test on each store: the world's backend as an indirect parameter.
ON_BOTH_STORES = pytest.mark.parametrize("world", STORE_BACKENDS, indirect=True)


@pytest.fixture
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ApiWorld]:
    """The gateway on SQLite, or on the backend of an ``ON_BOTH_STORES`` parameter."""
    backend: str = getattr(request, "param", "sqlite")
    numbers = (NumberDecl(HOME_NUMBER), NumberDecl(LIMITED, rate_limit="3/minute"))
    with api_world(
        tmp_path,
        numbers=numbers,
        org_phone_rules=(RuleDecl("block", "number_prefix", "+1900"),),
        store=app_store_settings(backend, request, tmp_path),
        # the quarantine gauge recounts this often (5 s in production)
        app_options={"quarantine_count_interval_s": 0.05},
    ) as w:
        yield w


def get(world: ApiWorld, path: str, **params: Any) -> Any:
    r = httpx.get(f"{world.url}{path}", params=params, headers=ADMIN, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def wait_for(check: Any, timeout_s: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


@ON_BOTH_STORES
def test_contacts_count_what_was_sent(world: ApiWorld) -> None:
    """Signed webhooks from many senders produce contacts whose counts match: total,
    delivered and dropped per sender, with number type and region."""
    sent = {"+14155550121": 3, "+442079460000": 2, "+19005550000": 4}
    for sender, n in sent.items():
        for _ in range(n):
            assert world.send_sms(sender).status_code == 200

    def contacts() -> dict[str, Any]:
        page = get(world, f"/v1/numbers/{HOME_NUMBER}/contacts", per_page=50)
        got = {c["sender"]: c for c in page["data"]}
        done = all(got.get(s, {}).get("count") == n for s, n in sent.items())
        return got if done else {}

    got = wait_for(contacts)
    assert got, "contacts did not reach the store"
    assert {s: c["count"] for s, c in got.items()} == sent
    assert got["+14155550121"]["delivered"] == 3 and got["+14155550121"]["dropped"] == 0
    assert got["+19005550000"]["dropped"] == 4 and got["+19005550000"]["delivered"] == 0
    assert got["+442079460000"]["region"] == "GB"
    assert got["+19005550000"]["number_type"] == "premium_rate"
    page = get(world, f"/v1/numbers/{HOME_NUMBER}/contacts", sort="count", per_page=1)
    assert page["data"][0]["sender"] == "+19005550000" and page["total_pages"] == 3


@ON_BOTH_STORES
@pytest.mark.parametrize(
    ("state", "delivered"),
    [("blocked", False), ("muted", True), ("whitelisted", True), ("unset", True)],
)
def test_contact_state_is_obeyed_by_next_webhook(
    world: ApiWorld, state: str, delivered: bool
) -> None:
    """PUT of a contact's state writes its exact rule and the next webhook obeys it."""
    sender = "+14155550133"
    assert world.send_sms(sender).status_code == 200
    path = f"/v1/numbers/{HOME_NUMBER}/contacts/{sender}"
    assert wait_for(lambda: httpx.get(f"{world.url}{path}", headers=ADMIN).status_code == 200)
    r = httpx.put(f"{world.url}{path}", json={"state": state}, headers=ADMIN, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == state
    world.app.clear()
    assert world.send_sms(sender).status_code == 200
    time.sleep(0.1)
    arrived = world.app.requests
    assert bool(arrived) is delivered
    if state == "muted":
        assert arrived[0].header("x-sendergate-verdict") == "mute"


@ON_BOTH_STORES
def test_rate_limit_drops_the_excess_from_one_sender(world: ApiWorld) -> None:
    """With rate_limit 3/minute the fourth message of a sender is dropped as rate_limited
    and quarantined, while another sender still gets through."""
    for _ in range(4):
        assert world.send_sms("+14155550144", LIMITED).status_code == 200
    assert len(world.app.requests) == 3
    assert world.send_sms("+14155550145", LIMITED).status_code == 200
    assert len(world.app.requests) == 4

    def limited() -> list[Any]:
        page = get(world, "/v1/events", outcome="quarantined", target=LIMITED)
        return [e for e in page["items"] if e["decision"]["reason"] == "rate_limited"]

    assert len(wait_for(limited)) == 1


def gauge(world: ApiWorld, name: str) -> float | None:
    """The value of an unlabelled gauge in a scrape of /metrics, None if it is absent."""
    text = httpx.get(f"{world.url}/metrics", timeout=10).text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return None if found is None else float(found[1])


def test_metrics_count_traffic(world: ApiWorld) -> None:
    """/metrics exposes events by source, channel and verdict, forward latency, decision
    latency, quarantine and snapshot gauges after real traffic."""
    world.send_sms("+14155550155")
    world.send_sms("+19005550001")
    text = httpx.get(f"{world.url}/metrics", timeout=10).text
    assert 'sendergate_events_total{channel="sms",source="generic",verdict="deliver"} 1.0' in text
    assert 'sendergate_events_total{channel="sms",source="generic",verdict="drop"} 1.0' in text
    assert 'sendergate_quarantined_total{source="generic"} 1.0' in text
    assert 'sendergate_forward_seconds_count{source="generic"} 1.0' in text
    assert "sendergate_snapshot_rules 1.0" in text
    assert "sendergate_snapshot_age_seconds" in text
    assert "sendergate_buffered_items" in text
    assert "sendergate_decision_seconds_count 2.0" in text
    bad = httpx.post(
        f"{world.url}/hooks/generic",
        content=b"{}",
        timeout=10,
        headers={"content-type": "application/json", "x-signature": "00"},
    )
    assert bad.status_code == 401
    text = httpx.get(f"{world.url}/metrics", timeout=10).text
    assert 'sendergate_refused_total{source="generic",status="401"} 1.0' in text


@ON_BOTH_STORES
def test_quarantine_gauge_follows_drops_and_release(world: ApiWorld) -> None:
    """sendergate_quarantine_events is the number of events held in quarantine in the
    store: it counts the drops (and not the deliveries), and a released event leaves it."""
    world.send_sms("+14155550177")
    for sender in ("+19005550003", "+19005550004", "+19005550005"):
        assert world.send_sms(sender).status_code == 200
    quarantined = get(world, "/v1/events", outcome="quarantined")["items"]
    assert len(quarantined) == 3
    assert wait_for(lambda: gauge(world, "sendergate_quarantine_events") == 3.0)

    released = httpx.post(
        f"{world.url}/v1/events/{quarantined[0]['id']}/release", headers=ADMIN, timeout=10
    )
    assert released.status_code == 200, released.text
    assert wait_for(lambda: gauge(world, "sendergate_quarantine_events") == 2.0)


def test_one_json_log_line_per_event(world: ApiWorld) -> None:
    """Each decided event writes one JSON line with its id, verdict and outcome, and never
    the body."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("sendergate.event")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        world.send_sms("+14155550166")
        world.send_sms("+19005550002")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(x["sender"], x["verdict"], x["outcome"]) for x in lines] == [
        ("+14155550166", "deliver", "forwarded"),
        ("+19005550002", "drop", "quarantined"),
    ]
    assert all(x["event"].startswith("evt_") and "body" not in x for x in lines)
    assert lines[0]["forward_status"] == 200
