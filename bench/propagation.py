"""Benchmark of replicas on Redis: rule propagation, and webhook throughput beside SQLite.

    python bench/propagation.py [--writes 200] [--duration 5] [--rounds 3] [--pin]
                                [--connections 32] [--snapshot-rules 0]
                                [--rules 0] [--full-writes 50]

Everything runs here, as real processes: a private ``redis-server`` (free port, no
persistence, its files in a temporary folder) and ``sendergate serve`` replicas.

1. **Propagation.** Two replicas, A and B, on the same Redis. ``--writes`` times: create a
   block rule for a new caller through A's admin API — alternately in the org-wide phone
   list and in the number's own list — then ask B's ``/v1/check`` about that caller in a
   tight loop until B says ``drop``. Printed: p50/p90/p99/max of the time from sending the
   write to B enforcing it, and from A's answer (the write is committed) to B enforcing
   it, overall and per scope. Goal (SPEC §5): p99 under 100 ms.

   ``--rules N`` first writes N rules straight into Redis (1 % of N targets, half
   mailboxes and half numbers, 90 % of the rules spread over them, 5 % in each org list),
   so that the replicas start with a realistic rule set; then the propagation is measured
   twice: with incremental reloads (the default: only the changed scopes are read and
   compiled) and with ``[store] incremental_reload = false`` (every change reloads
   everything), the latter over ``--full-writes`` writes.
2. **Throughput.** One replica at a time: the same Twilio voice webhook from a blocked
   caller, each with its own CallSid and signature (pre-signed), answered by the gateway
   itself (verify, parse, decide, quarantine record, ``<Reject>``). The store is the only
   difference: SQLite (WAL file in the temporary folder) or Redis. Rounds alternate
   SQLite and Redis, so that whatever else the machine runs meanwhile hits both; printed:
   requests/s of each run and the median, the gateway's CPU time per request, and
   redis-server's. Goal: Redis within 10 % of SQLite. The load is ``wrk`` (one thread,
   ``--connections``) with a Lua script cycling through the signed requests; without wrk,
   a Python asyncio + httpx generator (slower: it measures less than the gateway can do).
   ``--pin`` puts the gateway on core 0 and wrk and redis-server on core 1 (``taskset``);
   by default the scheduler places them. (On a 2-core VM shared with other work, pinned
   runs swing widely: a process waiting on another core's reply pays for the wake-up.)
3. ``--snapshot-rules N`` (optional): write N rules straight into Redis, then time one
   full snapshot read (``RedisStore.snapshot_rules``) and its compilation.

Nothing is asserted: numbers are printed for a human to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlencode

import httpx

from gateway.models import ORG_MAIL, ORG_PHONE, Action, Mode, NewRule, Target, TargetKind
from gateway.providers.twilio import twilio_signature
from gateway.rules import compile_rules
from gateway.store.redis import RedisStore

TOKEN = "bench-twilio-token"  # noqa: S105 - a made-up token for a local process
ADMIN_KEY = "bench-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
NUMBER = "+14155550100"
BLOCKED = "+14155559999"
SIGNED_REQUESTS = 30_000

WRK_SCRIPT = r"""
-- Cycles through pre-signed requests: one per line, "signature<TAB>form body".
local reqs = {}
local i = 0
init = function(args)
  for line in io.lines(args[1]) do
    local sig, body = line:match("^([^\t]*)\t(.*)$")
    reqs[#reqs + 1] = wrk.format("POST", nil, {
      ["Content-Type"] = "application/x-www-form-urlencoded",
      ["X-Twilio-Signature"] = sig,
    }, body)
  end
end
request = function()
  i = i % #reqs + 1
  return reqs[i]
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(core: int | None, argv: Sequence[str]) -> list[str]:
    if core is None or not shutil.which("taskset"):
        return list(argv)
    return ["taskset", "-c", str(core), *argv]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- processes ------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def start_redis(workdir: Path, core: int | None) -> tuple[Proc, str]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    log = workdir / "redis.log"
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(workdir)]
    with open(log, "wb") as out:
        popen = subprocess.Popen(pinned(core, argv), stdout=out, stderr=subprocess.STDOUT)
    proc = Proc("redis", popen, log)
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return proc, f"redis://127.0.0.1:{port}/0"
        if popen.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"redis-server did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.02)


def write_config(path: Path, port: int, store_url: str, *, incremental: bool = True) -> None:
    digest = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()
    prefix = 'key_prefix = "bench:"\n' if store_url.startswith("redis") else ""
    if not incremental:
        prefix += "incremental_reload = false\n"
    path.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}
public_url = "http://127.0.0.1:{port}"

[store]
url = "{store_url}"
{prefix}
[[api_keys]]
name = "bench"
sha256 = "{digest}"
role = "admin"

[sources.twilio]
provider = "twilio"
secret = "{TOKEN}"
forward_url = "http://127.0.0.1:9/unused"

[[numbers]]
number = "{NUMBER}"

[[org.phone_rules]]
action = "block"
match_type = "exact_number"
match_target = "{BLOCKED}"
"""
    )


def start_gateway(name: str, config: Path, workdir: Path, core: int | None = None) -> Proc:
    log = workdir / f"{name}.log"
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
    env = {k: v for k, v in os.environ.items() if k != "SENDERGATE_CONFIG"}
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            pinned(core, argv), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir
        )
    return Proc(name, popen, log)


def wait_ready(proc: Proc, url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        if proc.popen.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"{proc.name} did not become ready:\n{proc.log.read_text()[-3000:]}")
        time.sleep(0.05)


@contextlib.contextmanager
def running(procs: list[Proc]) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in reversed(procs):
            proc.stop()


# --- 1. propagation ----------------------------------------------------------------------------


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Propagation:
    scopes: list[str]  # "org" or "target", per write
    from_send: list[float]
    from_ack: list[float]


async def propagation(a_url: str, b_url: str, writes: int, series: int = 0) -> Propagation:
    """``writes`` rule writes on A, each timed until B enforces it; even writes go to the
    org-wide phone list, odd ones to the number's own list. ``series`` keeps the callers
    of several runs apart."""
    scopes: list[str] = []
    from_send: list[float] = []
    from_ack: list[float] = []
    paths = {
        "org": f"{a_url}/v1/org/phone/contact-rules",
        "target": f"{a_url}/v1/numbers/{quote(NUMBER)}/contact-rules",
    }
    async with httpx.AsyncClient(timeout=300, headers=ADMIN) as client:
        for i in range(writes):
            caller = f"+1415{6 + series}00{i:04d}"
            scope = "org" if i % 2 == 0 else "target"
            sent = time.perf_counter()
            created = await client.post(
                paths[scope],
                json={"action": "block", "match_type": "exact_number", "match_target": caller},
            )
            acked = time.perf_counter()
            if created.status_code != 201:
                sys.exit(f"write {i} failed: {created.status_code} {created.text}")
            params = {"from": caller, "to": NUMBER}
            while True:
                check = await client.get(f"{b_url}/v1/check", params=params)
                if check.json()["verdict"] == "drop":
                    seen = time.perf_counter()
                    break
                if time.perf_counter() - sent > 120:
                    sys.exit(f"write {i} not enforced on B within 120 s")
            scopes.append(scope)
            from_send.append(seen - sent)
            from_ack.append(seen - acked)
    return Propagation(scopes, from_send, from_ack)


def report_propagation(title: str, result: Propagation) -> None:
    print(f"\n{title}")
    report_latency("write sent on A -> drop on B", result.from_send)
    report_latency("write answered by A -> drop on B", result.from_ack)
    for scope, label in (("org", "org list"), ("target", "own list")):
        picked = [v for s, v in zip(result.scopes, result.from_send, strict=True) if s == scope]
        if picked:
            report_latency(f"  {label}: sent -> drop", picked)
    p99 = quantile(result.from_send, 0.99) * 1000
    print(f"  goal p99 < 100 ms: {'met' if p99 < 100 else 'NOT met'} ({p99:.1f} ms)")


def run_propagation(
    store_url: str, workdir: Path, writes: int, *, incremental: bool, series: int
) -> tuple[Propagation, float]:
    """Two fresh replicas (incremental reloads on or off), ``writes`` timed writes; also
    the seconds the replicas took to start (their first, full load included)."""
    name = "incremental" if incremental else "full"
    a_port, b_port = free_port(), free_port()
    write_config(workdir / f"a-{name}.toml", a_port, store_url, incremental=incremental)
    write_config(workdir / f"b-{name}.toml", b_port, store_url, incremental=incremental)
    began = time.perf_counter()
    a = start_gateway(f"replica-a-{name}", workdir / f"a-{name}.toml", workdir)
    b = start_gateway(f"replica-b-{name}", workdir / f"b-{name}.toml", workdir)
    with running([a, b]):
        a_url, b_url = f"http://127.0.0.1:{a_port}", f"http://127.0.0.1:{b_port}"
        wait_ready(a, a_url, timeout_s=600)
        wait_ready(b, b_url, timeout_s=600)
        started = time.perf_counter() - began
        return asyncio.run(propagation(a_url, b_url, writes, series)), started


async def preload(store_url: str, count: int) -> tuple[int, float]:
    """Write ``count`` rules (and 1 % as many targets) under the replicas' key prefix;
    return the number of targets and the seconds it took."""
    store = RedisStore(store_url, key_prefix="bench:", timeout_s=60)
    await store.open()
    began = time.perf_counter()
    try:
        n_targets = max(2, count // 100)
        mailboxes = [f"agent{i:06d}@ours.example" for i in range(n_targets // 2)]
        numbers = [f"+1650{i:07d}" for i in range(n_targets - n_targets // 2)]
        now = datetime.now(UTC)
        for i, tid in enumerate(mailboxes + numbers):
            kind: TargetKind = "mailbox" if "@" in tid else "number"
            mode: Mode = "whitelist" if i % 5 == 0 else "blacklist"
            await store.create_target(Target(kind, tid, mode, True, now, now))
        rng = random.Random(1)
        actions: tuple[Action, ...] = ("block", "block", "block", "allow", "mute")
        batch: list[NewRule] = []
        for i in range(count):
            pick = rng.random()
            if pick < 0.05:
                rule = NewRule(ORG_MAIL, rng.choice(actions), "domain", f"d{i}.spam.example")
            elif pick < 0.10:
                rule = NewRule(
                    ORG_PHONE, rng.choice(actions), "exact_number", f"+1{3_000_000_000 + i}"
                )
            elif pick < 0.55:
                box = rng.choice(mailboxes)
                if i % 2:
                    rule = NewRule(box, rng.choice(actions), "domain", f"d{i}.example")
                else:
                    rule = NewRule(box, rng.choice(actions), "exact_email", f"u{i}@mail.example")
            else:
                num = rng.choice(numbers)
                if i % 10 == 0:
                    rule = NewRule(
                        num, rng.choice(actions), "number_prefix", f"+1{400 + i % 500}{i}"
                    )
                else:
                    rule = NewRule(
                        num, rng.choice(actions), "exact_number", f"+1{4_000_000_000 + i}"
                    )
            batch.append(rule)
            if len(batch) == 5000:
                await store.create_rules(batch)
                batch = []
        if batch:
            await store.create_rules(batch)
    finally:
        await store.close()
    return n_targets, time.perf_counter() - began


def report_latency(label: str, values: Sequence[float]) -> None:
    ms = [v * 1000 for v in values]
    print(
        f"  {label:<34} p50 {quantile(ms, 0.5):6.2f} ms   p90 {quantile(ms, 0.9):6.2f} ms"
        f"   p99 {quantile(ms, 0.99):6.2f} ms   max {max(ms):6.2f} ms"
    )


# --- 2. throughput -----------------------------------------------------------------------------


def signed_requests(path: Path, url: str, count: int) -> None:
    """``count`` signed voice webhooks from the blocked caller, each its own CallSid."""
    lines = []
    for i in range(count):
        params = [
            ("CallSid", f"CA{i:032x}"),
            ("AccountSid", "AC" + "2" * 32),
            ("From", BLOCKED),
            ("To", NUMBER),
            ("CallStatus", "ringing"),
            ("Direction", "inbound"),
        ]
        lines.append(f"{twilio_signature(TOKEN, url, params)}\t{urlencode(params)}")
    path.write_text("\n".join(lines) + "\n")


@dataclass
class Load:
    requests: int
    seconds: float
    non_2xx: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def load_wrk(
    url: str, script: Path, requests: Path, seconds: float, conns: int, core: int | None
) -> Load:
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{seconds:g}s", "--timeout", "10s"]
    argv += ["-s", str(script), url, "--", str(requests)]
    out = subprocess.run(
        pinned(core, argv), capture_output=True, text=True, timeout=seconds + 60, check=True
    ).stdout
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if total is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    unit = {"ms": 0.001, "s": 1.0, "m": 60.0}[total.group(3)]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return Load(
        int(total.group(1)),
        float(total.group(2)) * unit,
        int(non_2xx.group(1)) if non_2xx else 0,
    )


async def load_python(url: str, lines: list[str], seconds: float, conns: int) -> Load:
    pairs = [line.split("\t", 1) for line in lines]
    done = bad = 0
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:

        async def worker(start: int) -> None:
            nonlocal done, bad
            i = start
            while time.perf_counter() < stop:
                sig, body = pairs[i % len(pairs)]
                i += conns
                answer = await client.post(
                    url,
                    content=body.encode(),
                    headers={
                        "content-type": "application/x-www-form-urlencoded",
                        "x-twilio-signature": sig,
                    },
                )
                done += 1
                bad += answer.status_code >= 300

        began = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(conns)))
        return Load(done, time.perf_counter() - began, bad)


@dataclass
class Throughput:
    store: str
    load: Load
    gateway_cpu_us: float
    redis_cpu_us: float | None


def throughput_run(
    store: str,
    config: Path,
    workdir: Path,
    url: str,
    requests: Path,
    args: argparse.Namespace,
    redis_pid: int | None,
) -> Throughput:
    proc = start_gateway(f"throughput-{store}", config, workdir, core=0 if args.pin else None)
    with running([proc]):
        wait_ready(proc, url)
        hook = f"{url}/hooks/twilio"
        probe = requests.read_text().split("\n", 1)[0].split("\t", 1)
        answer = httpx.post(
            hook,
            content=probe[1].encode(),
            headers={
                "content-type": "application/x-www-form-urlencoded",
                "x-twilio-signature": probe[0],
            },
        )
        if answer.status_code != 200 or b"<Reject" not in answer.content:
            sys.exit(f"{store}: the drop request is not answered <Reject>: {answer.text}")
        script = workdir / "signed.lua"
        script.write_text(WRK_SCRIPT)
        use_wrk = shutil.which("wrk") is not None

        def measure(seconds: float) -> Load:
            if use_wrk:
                core = 1 if args.pin else None
                return load_wrk(hook, script, requests, seconds, args.connections, core)
            lines = requests.read_text().splitlines()
            return asyncio.run(load_python(hook, lines, seconds, args.connections))

        measure(args.warmup)
        gw_before = cpu_seconds(proc.popen.pid)
        redis_before = cpu_seconds(redis_pid) if redis_pid else 0.0
        result = measure(args.duration)
        gw_cpu = cpu_seconds(proc.popen.pid) - gw_before
        redis_cpu = cpu_seconds(redis_pid) - redis_before if redis_pid else None
    n = max(1, result.requests)
    return Throughput(
        store,
        result,
        gw_cpu / n * 1e6,
        None if redis_cpu is None else redis_cpu / n * 1e6,
    )


# --- 3. snapshot at scale -------------------------------------------------------------------------


async def snapshot_at_scale(store_url: str, count: int) -> None:
    store = RedisStore(store_url, key_prefix="bench-snapshot:")
    await store.open()
    try:
        began = time.perf_counter()
        batch = 5000
        for start in range(0, count, batch):
            await store.create_rules(
                [
                    NewRule(
                        scope=ORG_PHONE,
                        action="block",
                        match_type="exact_number",
                        match_target=f"+1{2_000_000_000 + i}",
                    )
                    for i in range(start, min(count, start + batch))
                ]
            )
        written = time.perf_counter() - began
        began = time.perf_counter()
        version, targets, rows = await store.snapshot_rules()
        read = time.perf_counter() - began
        began = time.perf_counter()
        ruleset = compile_rules(
            targets, rows, mail_mode="blacklist", phone_mode="blacklist", version=version
        )
        compiled = time.perf_counter() - began
    finally:
        await store.close()
    print(f"\nSnapshot of {len(rows):,} rules from Redis")
    print(f"  written in batches of {batch}: {written:.1f} s")
    print(f"  snapshot_rules (HSCAN):        {read:.2f} s")
    print(f"  compile_rules:                 {compiled:.2f} s ({ruleset.rule_count:,} rules)")


# --- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=200, help="rule writes to time")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each run")
    parser.add_argument("--rounds", type=int, default=3, help="SQLite/Redis load rounds")
    parser.add_argument("--pin", action="store_true", help="pin processes to cores (taskset)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--snapshot-rules", type=int, default=0, metavar="N")
    parser.add_argument(
        "--rules",
        type=int,
        default=0,
        metavar="N",
        help="preload N rules; then measure propagation with and without incremental reload",
    )
    parser.add_argument(
        "--full-writes",
        type=int,
        default=50,
        metavar="N",
        help="writes timed with incremental reload off (each reloads everything)",
    )
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(
        f"python {sys.version.split()[0]}, {cores} cores, load generator: "
        f"{'wrk' if shutil.which('wrk') else 'python (httpx)'}"
    )

    with tempfile.TemporaryDirectory(prefix="sendergate-bench-") as tmp:
        workdir = Path(tmp)
        redis, store_url = start_redis(workdir, core=1 if args.pin and cores > 1 else None)
        with running([redis]):
            # 1. propagation
            size = ""
            if args.rules:
                n_targets, took = asyncio.run(preload(store_url, args.rules))
                size = f", {args.rules:,} rules preloaded over {n_targets:,} targets"
                print(f"\npreloaded {args.rules:,} rules and {n_targets:,} targets in {took:.1f} s")
            result, started = run_propagation(
                store_url, workdir, args.writes, incremental=True, series=0
            )
            report_propagation(
                f"Propagation: {args.writes} rule writes on replica A, enforced on B"
                f"{size} (incremental reload; replicas started in {started:.1f} s)",
                result,
            )
            if args.rules and args.full_writes:
                result, started = run_propagation(
                    store_url, workdir, args.full_writes, incremental=False, series=1
                )
                report_propagation(
                    f"Propagation: {args.full_writes} rule writes{size}, with"
                    f" incremental_reload = false (replicas started in {started:.1f} s)",
                    result,
                )

            if args.rounds <= 0:  # --rounds 0: propagation only
                return
            # 2. throughput: the same port for both stores, so one set of signatures
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            requests = workdir / "signed.txt"
            signed_requests(requests, f"{url}/hooks/twilio", SIGNED_REQUESTS)
            write_config(workdir / "sqlite.toml", port, f"sqlite:///{workdir}/sqlite/sg.db")
            write_config(workdir / "redis.toml", port, store_url)
            results: dict[str, list[Throughput]] = {"sqlite": [], "redis": []}
            for _ in range(args.rounds):
                for store in ("sqlite", "redis"):
                    pid = redis.popen.pid if store == "redis" else None
                    run = throughput_run(
                        store, workdir / f"{store}.toml", workdir, url, requests, args, pid
                    )
                    results[store].append(run)
            placement = "gateway on core 0, wrk and redis on core 1" if args.pin else "unpinned"
            print(
                f"\nThroughput: signed Twilio drop webhooks, {args.connections} connections,"
                f" {args.duration:g} s x {args.rounds} rounds, {placement}"
            )
            medians: dict[str, float] = {}
            for store, runs in results.items():
                rates = ", ".join(f"{r.load.rate:,.0f}" for r in runs)
                medians[store] = statistics.median(r.load.rate for r in runs)
                cpu = statistics.median(r.gateway_cpu_us for r in runs)
                extra = ""
                if store == "redis":
                    redis_cpu = statistics.median(r.redis_cpu_us or 0.0 for r in runs)
                    extra = f", redis-server {redis_cpu:.0f} us/req"
                bad = sum(r.load.non_2xx for r in runs)
                print(
                    f"  {store:<7} median {medians[store]:8,.0f} req/s  (runs: {rates};"
                    f" gateway {cpu:.0f} us CPU/req{extra}; non-2xx: {bad})"
                )
            ratio = medians["redis"] / medians["sqlite"]
            cpu_ratio = statistics.median(r.gateway_cpu_us for r in results["sqlite"]) / (
                statistics.median(r.gateway_cpu_us for r in results["redis"])
            )
            print(
                f"  gateway CPU per request, sqlite / redis: {cpu_ratio:.2f} (above 1: the"
                " Redis path costs the gateway less; less noisy than req/s on a busy machine)"
            )
            verdict = "met" if ratio >= 0.9 else "NOT met"
            print(f"  redis / sqlite (medians): {ratio:.2f}  (goal within 10 %: {verdict})")
            load = os.getloadavg()[0]
            if load > 1.5:
                print(f"  note: load average {load:.1f} during the run: other work shares the CPUs")

            if args.snapshot_rules:
                asyncio.run(snapshot_at_scale(store_url, args.snapshot_rules))


if __name__ == "__main__":
    main()
