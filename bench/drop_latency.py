"""Drop-path latency at a fixed rate, in process: the real app and SQLite store, called
as an ASGI app by an open-loop schedule, with no sockets and no load generator.

Why beside ``ingress.py``: on a shared 2-core VM the socket benchmark's latency phases are
often disturbed (the generator on the other core falls behind, and the script then says
so). Here one process on one core does everything, so what remains is the gateway's own
behaviour: a stall of the event loop, or of the quarantine commit that every drop waits
for. Request i is started at t0 + i/R whatever happened before, and timed from then.

What it cannot show: how the gateway's background threads share the core with the
event loop. The schedule polls (``await asyncio.sleep(0)`` until a request is due, as
uvloop's timers have a 1 ms resolution), so the event loop's thread never goes idle and
the store's thread only runs when the GIL is handed over by force; the priority of that
thread (``[store] thread_nice``) makes no difference here. Measure that with the socket
benchmark's fixed-rate phases (``ingress.py``, docs/performance.md).

    .venv/bin/python bench/drop_latency.py                       # 1,500 drops/s for 8 s
    .venv/bin/python bench/drop_latency.py --no-autocheckpoint   # diagnosis only

``--no-autocheckpoint`` turns SQLite's automatic WAL checkpoint off on the store's
connection: the log then grows without bound, so it is a way to see what checkpoints
inside commits cost, not a setting (docs/performance.md, "Latency at half load").
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sqlite3
import sys
import tempfile
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ingress

from gateway import app as gateway_app
from gateway.settings import load_settings
from gateway.store import sqlite as sqlite_store

PATH = "/hooks/twilio"
PORT = 8080  # only in the signed URL and the config: nothing listens


def signed_requests(count: int) -> list[tuple[list[tuple[bytes, bytes]], bytes]]:
    url = f"http://127.0.0.1:{PORT}{PATH}"
    out = []
    for i in range(count):
        params = ingress.voice_params(f"CA{i:032x}", ingress.BLOCKED)
        body = urlencode(params).encode()
        headers = [
            (k.lower().encode(), v.encode())
            for k, v in ingress.provider_headers(ingress.twilio_signature(url, params))
        ]
        headers += [
            (b"content-length", str(len(body)).encode()),
            (b"host", f"127.0.0.1:{PORT}".encode()),
        ]
        out.append((headers, body))
    return out


async def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="sendergate-droplat-"))
    db = work / "gateway.db"
    config = ingress.gateway_config(work, PORT, 9, db, journal=args.journal)
    app = gateway_app.create_app(load_settings(str(config)))
    total = int(args.rate * (args.warmup + args.seconds))
    requests = signed_requests(total)
    latencies = [0.0] * total
    failures = 0
    loop = asyncio.get_running_loop()

    async def one(i: int, due: float) -> None:
        nonlocal failures
        headers, body = requests[i]
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": PATH,
            "raw_path": PATH.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", PORT),
            "app": app,
        }
        given = False

        async def receive() -> MutableMapping[str, Any]:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # never disconnects
            raise AssertionError("unreachable")

        statuses: list[int] = []

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(scope, receive, send)
        latencies[i] = loop.time() - due
        if statuses != [200]:
            failures += 1

    async with app.router.lifespan_context(app):
        gc.collect()
        gc.freeze()  # as `sendergate serve` does after start-up
        t0 = loop.time() + 0.1
        # Only the pending tasks are kept: holding all of them would fill the collector's
        # oldest generation with tens of thousands of finished tasks, and its full
        # collections (tens of ms) would be the bench's own stalls, not the gateway's.
        tasks: set[asyncio.Future[None]] = set()
        for i in range(total):
            due = t0 + i / args.rate
            # Poll rather than sleep: uvloop's timers have a 1 ms resolution.
            while loop.time() < due:  # noqa: ASYNC110
                await asyncio.sleep(0)
            task = asyncio.ensure_future(one(i, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.gather(*tasks)
        wal = db.with_name(db.name + "-wal")
        wal_bytes = wal.stat().st_size if wal.exists() else 0  # before close checkpoints it
    report(args, latencies[int(args.rate * args.warmup) :], failures, wal_bytes)


def report(
    args: argparse.Namespace, latencies: Sequence[float], failures: int, wal_bytes: int
) -> None:
    xs = sorted(latencies)
    n = len(xs)

    def pct(q: float) -> str:
        return f"{xs[min(n - 1, int(n * q))] * 1000:.2f}"

    slow = sum(1 for x in xs if x > 0.005) / n
    size = f"{wal_bytes / 1e6:.1f} MB"
    print(
        f"drops at {args.rate:,.0f}/s for {args.seconds:g} s (after {args.warmup:g} s warm-up), "
        f"in process on one core; journal {'on' if args.journal else 'off'}, "
        f"autocheckpoint {'off' if args.no_autocheckpoint else 'on'}, "
        f"switch interval {sys.getswitchinterval() * 1000:g} ms"
    )
    print(
        f"latency ms: p50 {pct(0.5)}  p90 {pct(0.9)}  p99 {pct(0.99)}  max {pct(1.0)};"
        f"  over 5 ms: {slow:.1%};  not 200: {failures};  WAL at the end: {size}"
    )


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=1500.0, help="drops per second")
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds left out of the figures")
    p.add_argument("--switch-interval", type=float, help="sys.setswitchinterval, in seconds")
    p.add_argument("--no-autocheckpoint", action="store_true", help="diagnosis: WAL grows")
    p.add_argument(
        "--no-journal",
        dest="journal",
        action="store_false",
        help="[store] quarantine_journal = false: each drop waits for its SQLite commit",
    )
    p.add_argument("--core", type=int, default=0, help="pin to this core (-1: do not pin)")
    args = p.parse_args(argv)
    if args.core >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.core})
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    if args.no_autocheckpoint:
        connect = sqlite_store._connect

        def without_autocheckpoint(path: str, busy_timeout_ms: int) -> sqlite3.Connection:
            conn = connect(path, busy_timeout_ms)
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            return conn

        sqlite_store._connect = without_autocheckpoint
    try:
        import uvloop
    except ImportError:
        asyncio.run(run(args))
    else:
        uvloop.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
