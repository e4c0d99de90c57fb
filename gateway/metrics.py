"""Prometheus metrics, one registry per app (no module-level state).

With ``sendergate serve --workers N`` each worker is its own process: prometheus-client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, a fresh directory the CLI makes before
the workers start and removes at exit) writes every worker's values to files, and a scrape
of any worker aggregates them all: counters and histograms are summed over the workers
(a worker that died and was replaced keeps its counts), per-process gauges are combined
over the live workers (snapshot age and rules: the largest; buffered items: the sum;
the quarantine size, a store-wide figure every worker reads: the most recent reading).
Because a scrape is answered by one worker, each worker refreshes its own gauges every
second (``run``) rather than only when it happens to be scraped, and the live gauges of
workers that are gone are removed before each scrape. The quarantine size comes from the
store, so it is set by its own periodic task in the app's lifespan, not by a scrape hook.

Children of labelled metrics are cached per label tuple: ``labels()`` costs a lock and a
dict lookup, and the hot path should pay it once per distinct label set, not per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.requests import Request
from starlette.responses import Response

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    15.0,
)
_DECIDE_BUCKETS = (
    0.000_002,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.001,
    0.005,
)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def _forget_dead_workers(directory: str) -> None:
    """Remove the live gauges of processes that no longer exist (a worker that crashed or
    was replaced), so that its last buffered count or snapshot age stops showing."""
    with contextlib.suppress(OSError):
        pids = {int(m[1]) for name in os.listdir(directory) if (m := _LIVE_GAUGE_FILE.match(name))}
        for pid in pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
            except PermissionError:  # alive, another user's
                pass


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events = Counter(
            "sendergate_events",
            "Webhook events decided, by source, channel and verdict",
            ["source", "channel", "verdict"],
            registry=r,
        )
        self.refused = Counter(
            "sendergate_refused",
            "Webhooks refused before a decision (4xx), by source and status",
            ["source", "status"],
            registry=r,
        )
        self.decision_seconds = Histogram(
            "sendergate_decision_seconds",
            "Time to normalise and decide one event",
            buckets=_DECIDE_BUCKETS,
            registry=r,
        )
        self.forward_seconds = Histogram(
            "sendergate_forward_seconds",
            "Time the application took to answer a forward",
            ["source"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.forward_failures = Counter(
            "sendergate_forward_failures",
            "Forwards that failed, by kind (connect, timeout, status_5xx, invalid_response)",
            ["source", "kind"],
            registry=r,
        )
        self.snapshot_reloads = Counter(
            "sendergate_snapshot_reloads", "Rule snapshots compiled and swapped in", registry=r
        )
        self.snapshot_age = Gauge(
            "sendergate_snapshot_age_seconds",
            "Seconds since this process loaded its rules",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.snapshot_rules = Gauge(
            "sendergate_snapshot_rules",
            "Active rules in this process's snapshot",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.store_errors = Counter(
            "sendergate_store_errors", "Store operations that failed", ["operation"], registry=r
        )
        self.buffered = Gauge(
            "sendergate_buffered_items",
            "Events and counters waiting to be written",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.store_deferring = Gauge(
            "sendergate_store_deferring",
            "1 while this process's last write to the store failed (it buffers and retries)",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.journaled = Gauge(
            "sendergate_journaled_events",
            "Quarantine records in the local journal, not yet in the store",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.buffer_overflow = Gauge(
            "sendergate_buffer_overflow",
            "Records dropped because the write buffer was full",
            multiprocess_mode="sum",
            registry=r,
        )
        self.quarantined = Counter(
            "sendergate_quarantined", "Events written to quarantine", ["source"], registry=r
        )
        # Every worker counts the same store, so summing would multiply the figure by the
        # workers; of their readings the most recent is the freshest (after a release,
        # "max" would show a worker's stale count until its next read). "live": the file
        # of a worker that is gone is removed, like the other live gauges.
        self.quarantine_events = Gauge(
            "sendergate_quarantine_events",
            "Events held in quarantine in the store (outcome quarantined), counted every"
            " few seconds",
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self._children: dict[tuple[Any, ...], Any] = {}
        self._scrape_hooks: list[Callable[[], None]] = []

    def event(self, source: str, channel: str, verdict: str) -> None:
        key = ("e", source, channel, verdict)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.events.labels(source, channel, verdict)
        child.inc()

    def forward(self, source: str, seconds: float, failure: str | None) -> None:
        key = ("f", source)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.forward_seconds.labels(source)
        child.observe(seconds)
        if failure is not None:
            self.forward_failures.labels(source, failure).inc()

    def on_scrape(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` before each scrape (to refresh gauges such as snapshot age)."""
        self._scrape_hooks.append(hook)

    def refresh(self) -> None:
        """Run the scrape hooks: bring this process's gauges up to date."""
        for hook in self._scrape_hooks:
            hook()

    async def run(self, interval_s: float = 1.0) -> None:
        """In multiprocess mode, refresh this worker's gauges every ``interval_s`` (a
        scrape is answered by one worker and refreshes only that one's); otherwise
        return at once (the scrape refreshes them)."""
        if multiprocess_dir() is None:
            return
        while True:
            self.refresh()
            await asyncio.sleep(interval_s)

    def render(self) -> bytes:
        self.refresh()
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry)
        _forget_dead_workers(directory)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=directory)  # type: ignore[no-untyped-call]
        return generate_latest(merged)


def metrics_endpoint(metrics: Metrics) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return endpoint
