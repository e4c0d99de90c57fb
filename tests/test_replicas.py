"""Several replicas on one Redis (SPEC §5), as real processes: three ``python -m gateway
serve`` subprocesses share a private redis-server, a real downstream app records what they
forward, and webhooks are signed the way Twilio signs them.

* A rule written through one replica's admin API is enforced by the others (``/v1/check``
  and a signed call answered ``<Reject``); the time it took is measured and printed.
* A per-sender rate limit holds across replicas: it is counted in Redis, not per process.
* Redis stops while webhooks flow: decisions go on from each replica's snapshot, /readyz
  says 503 naming redis, admin writes answer 503. Redis comes back: readiness returns,
  the events and rule hits buffered meanwhile arrive, and a rule written while the
  replicas were still cut off is picked up.
* A replica is killed (SIGKILL) mid-traffic: the others do not notice.
* Cold start (in-process, through the lifespan): a replica that starts while Redis is
  down answers webhooks 503, or with ``cold_start = "fail_open"`` decides with the default
  modes, and loads its rules when Redis comes up.

Every wait is bounded; the bounds are correctness limits ("within 5 s"), never speed
assertions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.pipeline import event_id_for
from gateway.settings import ApiKey, NumberDecl, RuleDecl, Settings, StoreSettings
from gateway.store.redis import RedisStore
from tests import providers_support as ps
from tests.redis_support import RedisServer, free_port, require_redis_server
from tests.servers import RecordingApp, Reply, UvicornThread

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "twilio-replica-token"
ADMIN_KEY = "replica-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
NUMBER = "+14155550100"
LIMITED = "+14155550101"  # rate_limit = "3/minute"
PREFIX = "replicas:"
TWIML = b"<Response><Say>hello from the app</Say></Response>"
REJECT = b"<Reject"
WITHIN_S = 5.0  # every propagation and recovery must happen within this


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = WITHIN_S) -> float:
    """Poll ``check`` until true; the seconds it took (AssertionError after timeout)."""
    began = time.monotonic()
    while not check():
        assert time.monotonic() - began < timeout_s, f"not within {timeout_s} s: {what}"
        time.sleep(0.005)
    return time.monotonic() - began


# --- replicas as processes ------------------------------------------------------------------


@dataclass
class Replica:
    """One ``python -m gateway serve`` process with its own config file and port."""

    name: str
    config: Path
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "SENDERGATE_CONFIG"}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env=env,
            )

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.TransportError:
            assert self.proc is not None and self.proc.poll() is None, self.tail()
            return False

    def readyz(self) -> httpx.Response:
        return httpx.get(f"{self.url}/readyz", timeout=5)

    def check(self, sender: str) -> str:
        r = httpx.get(
            f"{self.url}/v1/check", params={"from": sender, "to": NUMBER}, headers=ADMIN, timeout=5
        )
        assert r.status_code == 200, r.text
        verdict: str = r.json()["verdict"]
        return verdict

    def add_rule(self, action: str, sender: str) -> httpx.Response:
        return httpx.post(
            f"{self.url}/v1/org/phone/contact-rules",
            json={"action": action, "match_type": "exact_number", "match_target": sender},
            headers=ADMIN,
            timeout=5,
        )

    def call(self, sender: str, sid: str | None = None, to: str = NUMBER) -> httpx.Response:
        """A signed Twilio voice webhook from ``sender`` to our number (or ``to``)."""
        params = [
            ("CallSid", sid or "CA" + secrets.token_hex(16)),
            ("AccountSid", "AC" + "2" * 32),
            ("From", sender),
            ("To", to),
            ("CallStatus", "ringing"),
            ("Direction", "inbound"),
        ]
        signed = ps.twilio_request(TOKEN, f"{self.url}/hooks/twilio", params)
        return httpx.post(signed.url, headers=signed.headers, content=signed.body, timeout=10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def says(replica: Replica, sender: str, verdict: str) -> Callable[[], bool]:
    """A check for ``wait_for``: does ``replica`` decide ``verdict`` for ``sender``?"""
    return lambda: replica.check(sender) == verdict


def _unready(replica: Replica) -> bool:
    return replica.readyz().status_code == 503


def _deferring(replica: Replica) -> bool:
    """/readyz says the replica's last write to the store failed (it buffers)."""
    return bool(replica.readyz().json()["checks"]["recorder"]["deferring"])


def replica_config(redis_url: str, port: int, downstream: str) -> str:
    digest = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()
    return f"""
[server]
host = "127.0.0.1"
port = {port}

[store]
url = "{redis_url}"
key_prefix = "{PREFIX}"

[forward]
timeout_s = 5

[[api_keys]]
name = "ops"
sha256 = "{digest}"
role = "admin"

[sources.twilio]
provider = "twilio"
secret = "{TOKEN}"
forward_url = "{downstream}/twilio"

[[numbers]]
number = "{NUMBER}"

[[numbers]]
number = "{LIMITED}"
rate_limit = "3/minute"
"""


@dataclass
class Cluster:
    redis: RedisServer
    app: RecordingApp
    replicas: list[Replica]
    store_url: str
    tmp: Path
    notes: list[str] = field(default_factory=list)

    def store(self) -> RedisStore:
        return RedisStore(self.store_url, key_prefix=PREFIX)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    binary = require_redis_server()
    tmp = tmp_path_factory.mktemp("replicas")
    redis = RedisServer(tmp / "redis", binary=binary)
    redis.start()
    app = RecordingApp(routes={"/twilio": Reply(200, "text/xml", TWIML)})
    downstream = UvicornThread(app)
    downstream.start()
    replicas = []
    for name in ("a", "b", "c"):
        port = free_port()
        config = tmp / f"replica-{name}.toml"
        config.write_text(replica_config(redis.url, port, downstream.url))
        replicas.append(Replica(name, config, port, tmp / f"replica-{name}.log"))
    for replica in replicas:
        replica.start()
    try:
        for replica in replicas:
            wait_for(replica.ready, f"replica {replica.name} ready", timeout_s=30)
        yield Cluster(redis, app, replicas, redis.url, tmp)
    except BaseException:
        for replica in replicas:
            print(f"--- replica {replica.name} log ---\n{replica.tail()}")
        raise
    finally:
        for replica in replicas:
            replica.stop()
        downstream.stop()
        redis.stop(save=False)


# --- propagation ------------------------------------------------------------------------------


def test_a_rule_written_on_one_replica_is_enforced_by_the_others(cluster: Cluster) -> None:
    """A block rule created through replica a's admin API: b and c decide "drop" for that
    sender within 5 s (the time is printed), and a signed call to b or c is rejected
    without reaching the application."""
    a, b, c = cluster.replicas
    sender = "+14158675309"
    assert {r.check(sender) for r in cluster.replicas} == {"deliver"}
    assert b.call(sender).status_code == 200
    seen = len(cluster.app.requests)
    assert seen >= 1

    created = a.add_rule("block", sender)
    assert created.status_code == 201, created.text
    written = time.monotonic()
    assert a.check(sender) == "drop"  # read-your-writes on the writer
    took = {
        r.name: wait_for(says(r, sender, "drop"), f"{r.name} enforces the rule") for r in (b, c)
    }
    total = time.monotonic() - written
    print(
        f"\nrule from a enforced on b after {took['b'] * 1000:.1f} ms, on c after "
        f"{took['c'] * 1000:.1f} ms (both within {total * 1000:.1f} ms of the write)"
    )
    for replica in (b, c):
        answer = replica.call(sender)
        assert answer.status_code == 200 and REJECT in answer.content, answer.text
    assert len(cluster.app.requests) == seen  # nothing of the blocked caller forwarded
    assert len(_forwarded_from(cluster, sender)) == 1  # only the call before the rule


def test_a_rate_limit_holds_across_replicas(cluster: Cluster) -> None:
    """LIMITED has rate_limit 3/minute, counted in Redis: 3 signed calls from one sender
    to replica a and then 2 to replica b deliver exactly 3 overall (counted at the
    downstream app); b drops the other 2 with reason rate_limited and quarantines them,
    as /v1/events shows on either replica. Another sender still gets through."""
    a, b, _ = cluster.replicas
    sender, other = "+14155554001", "+14155554002"
    answers = [a.call(sender, to=LIMITED) for _ in range(3)]
    answers += [b.call(sender, to=LIMITED) for _ in range(2)]
    assert [r.status_code for r in answers] == [200] * 5
    assert [r.content == TWIML for r in answers] == [True] * 3 + [False] * 2
    assert all(REJECT in r.content for r in answers[3:]), answers[3].text
    assert len(_forwarded_from(cluster, sender)) == 3
    assert b.call(other, to=LIMITED).content == TWIML
    assert len(_forwarded_from(cluster, other)) == 1

    def events(replica: Replica, outcome: str) -> list[Any]:
        r = httpx.get(
            f"{replica.url}/v1/events",
            headers=ADMIN,
            timeout=5,
            params={"outcome": outcome, "sender": sender, "target": LIMITED},
        )
        assert r.status_code == 200, r.text
        items: list[Any] = r.json()["items"]
        return items

    for replica in (a, b):
        dropped = events(replica, "quarantined")
        assert len(dropped) == 2
        assert {(e["decision"]["verdict"], e["decision"]["reason"]) for e in dropped} == {
            ("drop", "rate_limited")
        }
    # The deliveries' records are written in the background: all 3, none rate limited.
    wait_for(lambda: len(events(b, "forwarded")) == 3, "the 3 deliveries recorded")
    assert all(e["decision"]["reason"] != "rate_limited" for e in events(a, "forwarded"))


# --- Redis outage -------------------------------------------------------------------------------


@dataclass
class Sent:
    replica: str
    sender: str
    sid: str
    status: int
    body: bytes
    at: float


class Traffic(threading.Thread):
    """Signed calls from ``senders`` to ``replicas`` in turn until stopped."""

    def __init__(self, replicas: list[Replica], senders: list[str]) -> None:
        super().__init__(daemon=True)
        self.replicas = replicas
        self.senders = senders
        self.sent: list[Sent] = []
        self.errors: list[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        n = 0
        while not self._stop_event.is_set():
            replica = self.replicas[n % len(self.replicas)]
            sender = self.senders[n % len(self.senders)]
            sid = "CA" + secrets.token_hex(16)
            n += 1
            try:
                answer = replica.call(sender, sid)
            except httpx.HTTPError as exc:
                self.errors.append(f"{replica.name}: {exc!r}")
                continue
            self.sent.append(
                Sent(
                    replica.name, sender, sid, answer.status_code, answer.content, time.monotonic()
                )
            )
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)

    def since(self, t: float) -> list[Sent]:
        return [s for s in list(self.sent) if s.at >= t]


def _forwarded_from(cluster: Cluster, sender: str) -> list[Any]:
    wanted = f"From={quote(sender)}&".encode()
    return [r for r in cluster.app.requests if wanted in r.body]


def _rule_hits(cluster: Cluster, rule_id: int) -> int:
    import asyncio

    async def read() -> int:
        store = cluster.store()
        await store.open()
        try:
            rule = await store.get_rule(rule_id)
            assert rule is not None
            return rule.hits
        finally:
            await store.close()

    return asyncio.run(read())


def _events_stored(cluster: Cluster, ids: list[str]) -> int:
    import asyncio

    async def read() -> int:
        store = cluster.store()
        await store.open()
        try:
            return sum([await store.get_event(i) is not None for i in ids])
        finally:
            await store.close()

    return asyncio.run(read())


def _write_rule_directly(cluster: Cluster, sender: str) -> None:
    """Write a rule the way another replica or the CLI would: straight into Redis."""
    import asyncio

    from gateway.models import NewRule

    async def write() -> None:
        store = cluster.store()
        await store.open()
        try:
            await store.create_rule(
                NewRule(
                    scope="org:phone",
                    action="block",
                    match_type="exact_number",
                    match_target=sender,
                    source="cli",
                )
            )
        finally:
            await store.close()

    asyncio.run(write())


def test_a_redis_outage_keeps_decisions_and_loses_nothing(cluster: Cluster) -> None:
    """Stop redis-server while signed calls flow to a and b, then start it again."""
    a, b, _ = cluster.replicas
    allowed, muted, blocked, late = "+14155551001", "+14155551002", "+14155551003", "+14155551004"
    mute = a.add_rule("mute", muted)
    assert mute.status_code == 201, mute.text
    mute_id = mute.json()["id"]
    assert a.add_rule("block", blocked).status_code == 201
    for replica in (a, b):
        wait_for(says(replica, blocked, "drop"), "rules everywhere")
    traffic = Traffic([a, b], [allowed, muted])
    traffic.start()
    try:
        wait_for(lambda: len(traffic.sent) >= 6, "traffic flowing")
        cluster.redis.stop(save=True)  # data kept on disk, as with AOF in production
        down_at = time.monotonic()

        # Readiness flips and names redis; the snapshot itself is still there.
        for replica in (a, b):
            wait_for(partial(_unready, replica), f"{replica.name} unready")
            checks = replica.readyz().json()["checks"]
            assert checks["redis"]["status"] == "failing"
            assert checks["snapshot"]["status"] == "ok"
        wait_for(lambda: len(traffic.since(down_at)) >= 20, "calls answered during the outage")
        for replica in (a, b):
            wait_for(partial(_deferring, replica), f"{replica.name} deferring its writes")
            recorder = replica.readyz().json()["checks"]["recorder"]
            assert recorder["pending"] > 0 and recorder["overflowed"] == 0  # buffering
            metrics = httpx.get(f"{replica.url}/metrics", timeout=10).text
            assert "sendergate_store_deferring 1.0" in metrics
        # Decisions go on from the snapshot: allowed and muted callers are forwarded,
        # the blocked one is still blocked.
        for replica in (a, b):
            assert replica.check(blocked) == "drop"
            assert replica.check(muted) == "mute"
            answer = replica.call(blocked)
            # The drop is decided and answered (fail-static); its quarantine record waits
            # in the replica's buffer until Redis is back.
            assert answer.status_code == 200, answer.text
            assert REJECT in answer.content
            assert not _forwarded_from(cluster, blocked)
        # Admin writes answer 503 problem+json.
        for replica in (a, b):
            refused = replica.add_rule("block", "+14155551999")
            assert refused.status_code == 503, refused.text
            assert refused.headers["content-type"].startswith("application/problem+json")
            assert refused.json()["status"] == 503
        during = traffic.since(down_at)

        cluster.redis.start()
        up_at = time.monotonic()
        # Written straight into Redis before the replicas are back on the channel:
        # they must find it by comparing versions, not by the message they missed.
        _write_rule_directly(cluster, late)
    finally:
        traffic.stop()
        if not cluster.redis.running:
            cluster.redis.start()

    assert traffic.errors == []
    assert during and all(s.status == 200 and s.body == TWIML for s in during), [
        (s.status, s.body[:80]) for s in during if s.status != 200
    ]
    forwarded = {r.header("x-twilio-signature"): r for r in cluster.app.requests}
    assert len(forwarded) >= len(during)
    verdicts = {r.header("x-sendergate-verdict") for r in cluster.app.requests}
    assert {"deliver", "mute"} <= verdicts

    for replica in (a, b):
        took = wait_for(replica.ready, f"{replica.name} ready again")
        cluster.notes.append(f"{replica.name} ready {took:.2f} s after Redis came back")
        wait_for(says(replica, late, "drop"), f"{replica.name} sees the late rule")
    print(
        f"\nRedis back: readiness after {time.monotonic() - up_at:.2f} s; "
        + "; ".join(cluster.notes)
    )

    # What the replicas buffered during the outage reaches Redis: the events...
    outage_ids = [event_id_for("twilio", s.sid, NUMBER) for s in during]
    wait_for(lambda: _events_stored(cluster, outage_ids) == len(outage_ids), "buffered events")
    # ... and every hit of the mute rule, counted once.
    muted_calls = sum(1 for s in traffic.sent if s.sender == muted and s.status == 200)
    wait_for(lambda: _rule_hits(cluster, mute_id) == muted_calls, "buffered rule hits")
    for replica in (a, b):
        recorder = replica.readyz().json()["checks"]["recorder"]
        assert recorder["pending"] == 0 and not recorder["deferring"]
        metrics = httpx.get(f"{replica.url}/metrics", timeout=10).text
        assert "sendergate_store_deferring 0.0" in metrics

    # ... and the quarantine records of the calls dropped during the outage.
    def quarantined() -> bool:
        r = httpx.get(
            f"{a.url}/v1/events",
            headers=ADMIN,
            timeout=5,
            params={"outcome": "quarantined", "sender": blocked},
        )
        return len(r.json()["items"]) >= 2

    wait_for(quarantined, "quarantine records buffered during the outage")


# --- a replica dies ----------------------------------------------------------------------------


def test_killing_a_replica_leaves_the_others_unaffected(cluster: Cluster) -> None:
    """SIGKILL replica a while calls flow to b and c: every call to b and c is answered,
    they stay ready, and a rule written on b still reaches c."""
    a, b, c = cluster.replicas
    for replica in (b, c):
        wait_for(replica.ready, f"{replica.name} ready")
    traffic = Traffic([b, c], ["+14155552001"])
    traffic.start()
    try:
        wait_for(lambda: len(traffic.sent) >= 5, "traffic flowing")
        a.kill()
        killed_at = time.monotonic()
        assert a.proc is not None and a.proc.returncode == -signal.SIGKILL
        wait_for(lambda: len(traffic.since(killed_at)) >= 20, "calls after the kill")
        created = b.add_rule("block", "+14155552002")
        assert created.status_code == 201, created.text
        wait_for(lambda: c.check("+14155552002") == "drop", "c enforces b's rule")
    finally:
        traffic.stop()
    assert traffic.errors == []
    assert all(s.status == 200 for s in traffic.sent), [s.status for s in traffic.sent]
    assert b.readyz().status_code == 200 and c.readyz().status_code == 200


# --- cold start (in-process, through the lifespan) ---------------------------------------------


def _settings(redis_url: str, downstream: str, **store: Any) -> Settings:
    return Settings(
        store=StoreSettings(url=redis_url, key_prefix="cold:", poll_interval_s=0.2, **store),
        api_keys=(ApiKey("ops", hashlib.sha256(ADMIN_KEY.encode()).hexdigest(), "admin"),),
        sources={"twilio": ps.source("twilio", TOKEN, forward_url=f"{downstream}/twilio")},
        numbers=(NumberDecl(NUMBER),),
        org_phone_rules=(RuleDecl("block", "exact_number", "+14155553001"),),
    )


def _client_call(client: TestClient, sender: str) -> Any:
    params = [
        ("CallSid", "CA" + secrets.token_hex(16)),
        ("AccountSid", "AC" + "2" * 32),
        ("From", sender),
        ("To", NUMBER),
        ("CallStatus", "ringing"),
    ]
    signed = ps.twilio_request(TOKEN, "http://testserver/hooks/twilio", params)
    return client.post("/hooks/twilio", headers=signed.headers, content=signed.body)


@pytest.fixture
def downstream() -> Iterator[tuple[RecordingApp, str]]:
    app = RecordingApp(routes={"/twilio": Reply(200, "text/xml", TWIML)})
    with UvicornThread(app) as server:
        yield app, server.url


@pytest.mark.parametrize("cold_start", ["fail_closed", "fail_open"])
def test_a_replica_that_starts_without_redis_serves_and_catches_up(
    tmp_path: Path, downstream: tuple[RecordingApp, str], cold_start: str
) -> None:
    """Redis is down at start-up: the app starts anyway and /readyz is 503. Webhooks get
    503 (providers retry) or, with fail_open, are decided by the default mode. Once Redis
    is up, config is applied and rules load without a restart."""
    app, url = downstream
    redis = RedisServer(tmp_path / "redis", binary=require_redis_server())
    settings = _settings(redis.url, url, cold_start=cold_start)
    try:
        with TestClient(create_app(settings)) as client:
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["redis"]["status"] == "failing"
            assert ready.json()["checks"]["snapshot"]["status"] == "failing"
            answer = _client_call(client, "+14155553001")  # blocked by config, not loaded
            if cold_start == "fail_closed":
                assert answer.status_code == 503
                assert app.requests == []
            else:
                assert answer.status_code == 200 and answer.content == TWIML
                assert app.last.header("x-sendergate-verdict") == "deliver"
            redis.start()
            wait_for(lambda: client.get("/readyz").status_code == 200, "loaded after start")
            answer = _client_call(client, "+14155553001")
            assert answer.status_code == 200 and REJECT in answer.content
    finally:
        redis.stop(save=False)


def test_admin_writes_answer_503_problem_while_redis_is_down(tmp_path: Path) -> None:
    """Every kind of admin write (target, rule, batch, patch) answers 503 problem+json
    when Redis cannot be reached; reads that need the store do too."""
    redis = RedisServer(tmp_path / "redis", binary=require_redis_server())
    redis.start()
    settings = dataclasses.replace(
        _settings(redis.url, "http://127.0.0.1:9"), sources={}, org_phone_rules=()
    )
    try:
        with TestClient(create_app(settings)) as client:
            assert client.get("/readyz").status_code == 200
            number = quote(NUMBER)
            redis.stop(save=False)
            for method, path, body in [
                ("POST", "/v1/mailboxes", {"address": "x@acme.example"}),
                ("PATCH", f"/v1/numbers/{number}", {"enforce": False}),
                (
                    "POST",
                    f"/v1/numbers/{number}/contact-rules",
                    {"action": "block", "match_type": "exact_number", "match_target": "+1555"},
                ),
                (
                    "POST",
                    "/v1/org/phone/contact-rules",
                    {"action": "block", "match_type": "anonymous", "match_target": "anonymous"},
                ),
                (
                    "POST",
                    "/v1/contact-rules/batch",
                    {
                        "rules": [
                            {
                                "scope": NUMBER,
                                "action": "block",
                                "match_type": "exact_number",
                                "match_target": "+1555",
                            }
                        ]
                    },
                ),
                ("DELETE", "/v1/org/phone/contact-rules/1", None),
                ("GET", "/v1/contact-rules", None),
            ]:
                answer = client.request(method, path, json=body, headers=ADMIN)
                assert answer.status_code == 503, (method, path, answer.text)
                assert answer.headers["content-type"].startswith("application/problem+json")
                assert answer.json()["type"].endswith("/store-unavailable")
            assert client.get("/readyz").status_code == 503
    finally:
        redis.stop(save=False)


# --- the compose file ---------------------------------------------------------------------------


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation, as far as the file uses it: ${VAR}, ${VAR:-default},
    ${VAR:?message} and $$ for a literal $."""
    import re

    def one(m: re.Match[str]) -> str:
        name, op, rest = m.group(1), m.group(2), m.group(3)
        if name in env:
            return env[name]
        assert op == ":-", f"{name} is required by the compose file ({rest})"
        return rest

    text = re.sub(r"(?<!\$)\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, text)
    return text.replace("$$", "$")


def test_the_compose_file_runs_redis_with_aof_and_two_replicas() -> None:
    """deploy/docker-compose.yml: Redis with AOF (fsync every second, no eviction), two
    gateway replicas on it behind nginx, and a config.toml that the gateway accepts."""
    import yaml

    from gateway.settings import parse_settings

    env = {
        "TWILIO_AUTH_TOKEN": "token",
        "SENDERGATE_SIGNING_SECRET": "whsec_c2VuZGVyZ2F0ZS1kZW1vLXNpZ25pbmctc2VjcmV0ISE=",
        "SENDERGATE_ADMIN_SHA256": "a" * 64,
        "SENDERGATE_PUBLIC_URL": "https://hooks.acme.example",
    }
    compose = yaml.safe_load(_interpolate((ROOT / "deploy/docker-compose.yml").read_text(), env))
    services = compose["services"]
    assert set(services) == {"redis", "gateway-1", "gateway-2", "lb"}
    command = " ".join(services["redis"]["command"])
    for flag in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction"):
        assert flag in command
    for name in ("gateway-1", "gateway-2"):
        gateway = services[name]
        assert gateway["environment"]["SENDERGATE_REDIS_URL"] == "redis://redis:6379/0"
        assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
        assert gateway["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (ROOT / "deploy/Dockerfile").exists()
    nginx = compose["configs"]["nginx-config"]["content"]
    assert "server gateway-1:8080" in nginx and "server gateway-2:8080" in nginx
    assert "$host" in nginx  # $$ in the file: nginx's variable, not compose's
    toml = compose["configs"]["sendergate-config"]["content"]
    import tomllib

    settings = parse_settings(
        tomllib.loads(toml), {**env, "SENDERGATE_REDIS_URL": "redis://redis:6379/0"}
    )
    assert settings.store.url == "redis://redis:6379/0"
    assert settings.store.poll_interval_s == 1.0
    assert settings.server.public_url == "https://hooks.acme.example"
    assert set(settings.sources) == {"twilio"}
