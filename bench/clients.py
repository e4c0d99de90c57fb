"""Forwarding client candidates, side by side in one run: what each costs per forward.

    python bench/clients.py [--concurrency 32] [--duration 5] [--warmup 1] [--rounds 1]
                            [--only httpx,httpx-limits,httpx-aiohttp,aiohttp,forwarder,http1]

The downstream application of ``bench/ingress.py`` (``make_downstream_app``: Starlette,
parses the form, answers TwiML) runs under uvicorn (uvloop + httptools, no access log)
pinned to core 0. This process pins itself to core 1, runs uvloop, and for each candidate
client runs a closed loop of ``--concurrency`` asyncio tasks that POST the same 1 KB
Twilio voice form with the provider's headers (``ingress.provider_headers``) for
``--warmup`` + ``--duration`` seconds. Measured over the ``--duration`` window: requests/s,
p50/p99 latency, the client's CPU time per request (``time.process_time``, all threads of
this process: what the gateway pays per forward), the app's CPU per request (from /proc)
and ``other``, the share of each core that other processes took meanwhile. Candidates:

1. ``httpx``: ``httpx.AsyncClient()`` with its defaults (100 connections, 20 kept alive);
2. ``httpx-limits``: ``httpx.AsyncClient`` with ``max_connections`` = ``max_keepalive`` =
   concurrency, HTTP/1.1 only;
3. ``httpx-aiohttp``: ``httpx.AsyncClient`` over ``httpx_aiohttp.AiohttpTransport`` (the
   ``bench`` extra), same limits;
4. ``aiohttp``: an ``aiohttp.ClientSession`` (``TCPConnector(limit=concurrency)``);
5. ``forwarder``: ``gateway.forward.Forwarder``, the production forwarder, with its header
   policy and Standard Webhooks signing;
6. ``http1``: ``gateway.http1.Http1Pool`` (raw), when that module exists.

Each candidate must get the app's TwiML once before it is measured. ``--rounds N`` runs
the candidates in turn N times and keeps each candidate's round with the least client CPU
per request. Nothing is asserted: numbers are printed for a human to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import importlib
import importlib.util
import inspect
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol
from urllib.parse import quote, urlencode

import aiohttp
import httpx
import uvloop
from ingress import (
    ALLOWED,
    APP_PATH,
    APP_TWIML,
    LOAD_CORE,
    SERVER_CORE,
    Processes,
    core_busy,
    cpu_seconds,
    machine_line,
    package_version,
    provider_headers,
    serve_app,
    twilio_signature,
    versions_line,
    voice_params,
)

from gateway.forward import Forwarder

SIGNING_SECRET = "whsec_" + base64.b64encode(b"sendergate-bench-clients-secret!").decode()
SENDER = "+15551234567"
TIMEOUT_S = 10.0
VERSIONS = ("httpx", "httpcore", "h11", "aiohttp", "httpx-aiohttp", "uvloop", "sendergate")


# --- the candidates -------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What every candidate sends: the same URL, body and provider headers."""

    url: str
    body: bytes
    headers: list[tuple[str, str]]
    concurrency: int


class Client(Protocol):
    async def post(self) -> tuple[int, bytes]:
        """One POST of the target: (status, body)."""
        ...

    async def aclose(self) -> None: ...


class HttpxClient:
    def __init__(self, client: httpx.AsyncClient, target: Target) -> None:
        self._client = client
        self._target = target

    async def post(self) -> tuple[int, bytes]:
        t = self._target
        r = await self._client.post(t.url, content=t.body, headers=t.headers)
        return r.status_code, r.content

    async def aclose(self) -> None:
        await self._client.aclose()


class AiohttpClient:
    def __init__(self, target: Target) -> None:
        self._target = target
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=target.concurrency)
        )

    async def post(self) -> tuple[int, bytes]:
        t = self._target
        async with self._session.post(t.url, data=t.body, headers=t.headers) as r:
            return r.status, await r.read()

    async def aclose(self) -> None:
        await self._session.close()


class ForwarderClient:
    """The production forwarder as the relay path calls it (``Pipeline`` → ``forward``)."""

    def __init__(self, target: Target) -> None:
        self._target = target
        self._forwarder = Forwarder(SIGNING_SECRET)
        self._n = 0

    async def start(self) -> None:
        await self._forwarder.start()

    async def post(self) -> tuple[int, bytes]:
        t = self._target
        self._n += 1
        result = await self._forwarder.forward(
            t.url,
            method="POST",
            query="",
            headers=t.headers,
            body=t.body,
            event_id=f"evt_{self._n:032x}",
            verdict="deliver",
            rule=None,
            sender=SENDER,
            timeout_s=TIMEOUT_S,
        )
        return result.status, result.body

    async def aclose(self) -> None:
        await self._forwarder.aclose()


class Http1PoolClient:
    """``gateway.http1.Http1Pool``, called raw (no header policy, no signing). The module
    is imported by name: it may not exist yet, and then this candidate is skipped."""

    def __init__(self, target: Target) -> None:
        module = importlib.import_module("gateway.http1")
        pool_class = module.Http1Pool
        # Give the pool as many connections as there are tasks, under whichever name its
        # constructor uses for that (its defaults otherwise).
        params = inspect.signature(pool_class).parameters
        limits = ("limit", "limit_per_host", "max_connections", "max_connections_per_host")
        kwargs = {name: target.concurrency for name in limits if name in params}
        self._pool: Any = pool_class(**kwargs)
        self._target = target

    async def start(self) -> None:
        await _call_if_any(self._pool, "start")

    async def post(self) -> tuple[int, bytes]:
        t = self._target
        r = await self._pool.request("POST", t.url, t.headers, t.body, timeout_s=TIMEOUT_S)
        return int(r.status), bytes(r.body)

    async def aclose(self) -> None:
        if not await _call_if_any(self._pool, "aclose"):
            await _call_if_any(self._pool, "close")


async def _call_if_any(obj: object, name: str) -> bool:
    """Call ``obj.name()`` if it exists (awaiting it if it is a coroutine function)."""
    method = getattr(obj, name, None)
    if method is None:
        return False
    result = method()
    if inspect.isawaitable(result):
        await result
    return True


def _limits(t: Target) -> httpx.Limits:
    return httpx.Limits(max_connections=t.concurrency, max_keepalive_connections=t.concurrency)


async def open_httpx_defaults(t: Target) -> Client:
    return HttpxClient(httpx.AsyncClient(), t)


async def open_httpx_limits(t: Target) -> Client:
    return HttpxClient(httpx.AsyncClient(limits=_limits(t), http2=False), t)


async def open_httpx_aiohttp(t: Target) -> Client:
    # Imported by name: httpx-aiohttp is in the ``bench`` extra only, and mypy runs where
    # just the ``test`` extra is installed.
    module = importlib.import_module("httpx_aiohttp")
    transport: httpx.AsyncBaseTransport = module.AiohttpTransport(limits=_limits(t))
    return HttpxClient(httpx.AsyncClient(transport=transport), t)


async def open_aiohttp(t: Target) -> Client:
    return AiohttpClient(t)


async def open_forwarder(t: Target) -> Client:
    client = ForwarderClient(t)
    await client.start()
    return client


async def open_http1(t: Target) -> Client:
    client = Http1PoolClient(t)
    await client.start()
    return client


def _missing(module: str, what: str) -> Callable[[], str | None]:
    def check() -> str | None:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        return None if found else what

    return check


@dataclass(frozen=True)
class Candidate:
    key: str
    label: str
    open: Callable[[Target], Awaitable[Client]]
    missing: Callable[[], str | None] = lambda: None  # why it cannot run, or None


CANDIDATES = (
    Candidate("httpx", "httpx.AsyncClient() defaults", open_httpx_defaults),
    Candidate("httpx-limits", "httpx.AsyncClient(limits=C, http2=False)", open_httpx_limits),
    Candidate(
        "httpx-aiohttp",
        "httpx + httpx_aiohttp.AiohttpTransport",
        open_httpx_aiohttp,
        _missing("httpx_aiohttp", "not installed (pip install -e '.[bench]')"),
    ),
    Candidate("aiohttp", "aiohttp.ClientSession(limit=C)", open_aiohttp),
    Candidate("forwarder", "gateway.forward.Forwarder", open_forwarder),
    Candidate(
        "http1",
        "gateway.http1.Http1Pool (raw)",
        open_http1,
        _missing("gateway.http1", "gateway/http1.py does not exist (yet)"),
    ),
)


# --- the measurement ------------------------------------------------------------------------


@dataclass
class Result:
    key: str
    requests: int = 0
    seconds: float = 0.0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    client_cpu_us: float = 0.0  # per request, this process (all threads)
    app_cpu_us: float = 0.0  # per request, the downstream app
    other: tuple[float, float] | None = None  # share of core 0 / core 1 taken by others
    failure: str | None = None  # why it was not measured

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


@dataclass
class Window:
    """Clocks read at the start and the end of the measured window."""

    wall: float
    cpu: float
    app: float
    busy: tuple[float, float] | None

    @staticmethod
    def read(app_pid: int, pinned: bool) -> Window:
        busy = (core_busy(SERVER_CORE), core_busy(LOAD_CORE)) if pinned else None
        return Window(time.perf_counter(), time.process_time(), cpu_seconds(app_pid), busy)


async def measure(
    client: Client, key: str, args: argparse.Namespace, app_pid: int, pinned: bool
) -> Result:
    result = Result(key)
    measuring = stopping = False

    async def worker() -> None:
        while not stopping:
            began = time.perf_counter()
            try:
                status, _ = await client.post()
            except Exception:
                if measuring:
                    result.errors += 1
                await asyncio.sleep(0.01)  # no busy loop on a dead server
                continue
            if measuring:
                if status == 200:
                    result.requests += 1
                    result.latencies.append(time.perf_counter() - began)
                else:
                    result.errors += 1

    tasks = [asyncio.create_task(worker()) for _ in range(args.concurrency)]
    try:
        await asyncio.sleep(args.warmup)
        start = Window.read(app_pid, pinned)
        measuring = True
        await asyncio.sleep(args.duration)
        measuring = False
        end = Window.read(app_pid, pinned)
        stopping = True
        await asyncio.gather(*tasks)  # the requests in flight finish, uncounted
    finally:
        for task in tasks:
            task.cancel()
    done = max(1, result.requests)
    result.seconds = end.wall - start.wall
    result.client_cpu_us = (end.cpu - start.cpu) / done * 1e6
    result.app_cpu_us = (end.app - start.app) / done * 1e6
    if start.busy is not None and end.busy is not None:
        core0 = end.busy[0] - start.busy[0] - (end.app - start.app)
        core1 = end.busy[1] - start.busy[1] - (end.cpu - start.cpu)
        result.other = (max(0.0, core0 / result.seconds), max(0.0, core1 / result.seconds))
    return result


async def run_candidate(
    candidate: Candidate, target: Target, args: argparse.Namespace, app_pid: int, pinned: bool
) -> Result:
    why = candidate.missing()
    if why is not None:
        return Result(candidate.key, failure=why)
    try:
        client = await candidate.open(target)
    except Exception as exc:
        return Result(candidate.key, failure=f"could not be opened: {exc!r}")
    try:
        status, body = await client.post()
        if status != 200 or body != APP_TWIML:
            return Result(candidate.key, failure=f"wrong answer: {status} {body[:200]!r}")
        return await measure(client, candidate.key, args, app_pid, pinned)
    except Exception as exc:
        return Result(candidate.key, failure=f"failed: {exc!r}")
    finally:
        await client.aclose()
        gc.collect()


async def run_rounds(
    candidates: Sequence[Candidate],
    target: Target,
    args: argparse.Namespace,
    app_pid: int,
    pinned: bool,
) -> list[dict[str, Result]]:
    rounds: list[dict[str, Result]] = []
    for n in range(args.rounds):
        results: dict[str, Result] = {}
        for c in candidates:
            print(f"round {n + 1}/{args.rounds}: {c.key}...", flush=True)
            results[c.key] = await run_candidate(c, target, args, app_pid, pinned)
        rounds.append(results)
    return rounds


# --- report ---------------------------------------------------------------------------------


def sniffio_line() -> str:
    spec = importlib.util.find_spec("sniffio")
    state = f"installed ({package_version('sniffio')})" if spec else "NOT installed"
    return (
        f"sniffio: {state}; httpcore 1.0.x imports it on every request "
        "(encode/httpcore#1103): without it, each failed import searches sys.path"
    )


def report(
    args: argparse.Namespace,
    candidates: Sequence[Candidate],
    rounds: Sequence[dict[str, Result]],
    target: Target,
    pinned: bool,
) -> None:
    best: dict[str, Result] = {}
    for results in rounds:
        for key, r in results.items():
            if r.failure is not None:
                best.setdefault(key, r)
            elif key not in best or best[key].failure or r.client_cpu_us < best[key].client_cpu_us:
                best[key] = r
    measured = [r.client_cpu_us for r in best.values() if r.failure is None and r.requests]
    cheapest = min(measured) if measured else 0.0

    print()
    print(machine_line())
    print(versions_line(VERSIONS))
    print(sniffio_line())
    where = (
        f"client on core {LOAD_CORE} (uvloop), app on core {SERVER_CORE}"
        if pinned
        else "not pinned (fewer than 2 cores or no taskset)"
    )
    print(
        f"load: closed loop of {args.concurrency} asyncio tasks per candidate; {args.warmup:g} s "
        f"warm-up + {args.duration:g} s measured; {where}; body {len(target.body)} B "
        f"(Twilio voice form) with {len(target.headers)} provider headers; app: "
        "bench/ingress.py make_downstream_app under uvicorn (uvloop + httptools)"
    )
    if len(rounds) > 1:
        print(f"{len(rounds)} rounds: each candidate's round with the least client CPU per request")
    print()
    head = (
        f"{'candidate':<44}{'req/s':>7}{'p50 ms':>8}{'p99 ms':>8}{'client µs/req':>15}"
        f"{'× cheapest':>11}{'app µs/req':>11}{'errors':>7}{'other c0/c1':>13}"
    )
    if len(rounds) > 1:
        head += "  client µs/req by round"
    print(head)
    print("-" * len(head))
    for c in candidates:
        r = best[c.key]
        label = f"{CANDIDATES.index(c) + 1}. {c.label}"
        if r.failure is not None:
            print(f"{label:<44}{r.failure}")
            continue
        ratio = r.client_cpu_us / cheapest if cheapest else 0.0
        other = "-" if r.other is None else f"{r.other[0]:.0%}/{r.other[1]:.0%}"
        line = (
            f"{label:<44}{r.rps:>7,.0f}{r.percentile_ms(0.50):>8.2f}{r.percentile_ms(0.99):>8.2f}"
            f"{r.client_cpu_us:>15,.0f}{ratio:>11.2f}{r.app_cpu_us:>11,.0f}{r.errors:>7}"
            f"{other:>13}"
        )
        if len(rounds) > 1:
            line += "  " + " ".join(
                f"{x[c.key].client_cpu_us:,.0f}" for x in rounds if x[c.key].failure is None
            )
        print(line)
    print()
    print(
        "client µs/req: CPU time of this process per request (what the gateway pays per "
        "forward); app µs/req: the downstream app's; other: share of core 0 / core 1 used "
        "by other processes meanwhile (0% = undisturbed)"
    )
    if cheapest and len(measured) > 1:
        print(
            f"median client CPU of the candidates: {statistics.median(measured):,.0f} µs/req; "
            f"cheapest {cheapest:,.0f}"
        )


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--concurrency", type=int, default=32, help="concurrent tasks (and pool size)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per candidate")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per candidate")
    p.add_argument("--rounds", type=int, default=1, help="repeat; keep the least client CPU")
    keys = ",".join(c.key for c in CANDIDATES)
    p.add_argument("--only", default=keys, help=f"comma-separated names or numbers 1-6 of {keys}")
    return p.parse_args(argv)


def pick(only: str) -> list[Candidate]:
    chosen: list[Candidate] = []
    for item in (x.strip() for x in only.split(",")):
        if not item:
            continue
        if item.isdigit() and 1 <= int(item) <= len(CANDIDATES):
            chosen.append(CANDIDATES[int(item) - 1])
            continue
        found = [c for c in CANDIDATES if c.key == item]
        if not found:
            names = ", ".join(c.key for c in CANDIDATES)
            sys.exit(f"unknown candidate {item!r}; choose from {names}")
        chosen.append(found[0])
    return list(dict.fromkeys(chosen))


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    candidates = pick(args.only)
    pinned = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    if pinned:
        os.sched_setaffinity(0, {LOAD_CORE})
    else:
        print("fewer than 2 cores or no taskset: nothing is pinned", file=sys.stderr)

    params = voice_params("CA" + "c" * 32, ALLOWED)
    body = urlencode(params, quote_via=quote).encode()
    workdir = Path(tempfile.mkdtemp(prefix="sendergate-clients-"))
    procs = Processes(workdir)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        port, app_pid = serve_app(procs, SERVER_CORE if pinned else None, "make_downstream_app")
        url = f"http://127.0.0.1:{port}{APP_PATH}"
        target = Target(
            url, body, provider_headers(twilio_signature(url, params)), args.concurrency
        )
        print(
            f"{len(candidates)} candidates, {args.rounds} round(s), "
            f"{args.warmup:g} + {args.duration:g} s each...",
            flush=True,
        )
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            rounds = runner.run(run_rounds(candidates, target, args, app_pid, pinned))
        report(args, candidates, rounds, target, pinned)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        procs.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
