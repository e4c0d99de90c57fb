"""Benchmark of the hot path: ``rules.compile_rules`` and ``rules.decide``.

    python bench/decide.py [--rules 1000000] [--targets 1000] [--calls 200000] [--seed 1]

Builds a synthetic rule set (about 50% exact_email/exact_number, 35% domain, 15%
number_prefix; 95% of the rules spread over ``--targets`` mailboxes and numbers, 5% in the
two org-wide lists; 5% with an expiry, half of them already past) and reports:

* compile time (rows already in memory, tracemalloc off);
* memory per rule: bytes still allocated (tracemalloc) after generating the rows,
  compiling them and dropping the rows, so it counts everything the RuleSet keeps
  alive, key strings included; the same for a bare ``dict`` of 40-character keys as a
  yardstick; and the process RSS growth over the compile, which excludes the key strings
  (they belong to the rows) but includes allocator overhead;
* decisions per second over the query mix, and the p50/p99 of one ``decide()`` timed
  with ``time.perf_counter_ns`` around each call (the timer's own cost is shown).

The query mix (warm, recipients chosen at random): exact email hits, domain hits through a
subdomain, exact number hits, prefix hits, and misses for mail and phone, a few to unknown
recipients and a few with an envelope sender.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gateway.models import ORG_MAIL, ORG_PHONE, Action, Family, MatchType, Sender, Target
from gateway.rules import RuleSet, compile_rules, decide
from gateway.store.base import SnapshotRule

NOW = 1_800_000_000.0
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
WORDS = (
    *("acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka", "tyrell"),
    *("cyberdyne", "soylent", "oscorp", "aperture", "monarch", "vandelay", "gringotts"),
    *("nakatomi", "massive", "dynamic", "blue", "sun"),
)
TLDS = ("com", "net", "org", "io", "example", "co.uk", "xyz", "de")
SAMPLES_PER_KIND = 4000


@dataclass
class Corpus:
    """Generated targets and rows, plus a few rows of each kind to build hits from."""

    targets: list[Target]
    rows: list[SnapshotRule]
    samples: dict[str, list[SnapshotRule]] = field(default_factory=dict)


def generate(n_rules: int, n_targets: int, seed: int) -> Corpus:
    """Deterministic synthetic targets and rule rows (unique per scope slot)."""
    rng = random.Random(seed)
    mailboxes = [f"agent{i:04d}@ours.example" for i in range(n_targets // 2)]
    numbers = [f"+1415555{i:04d}" for i in range(n_targets - n_targets // 2)]
    targets = [
        Target("mailbox", m, rng.choice(("blacklist", "whitelist")), True, EPOCH, EPOCH)
        for m in mailboxes
    ] + [
        Target("number", n, rng.choice(("blacklist", "whitelist")), True, EPOCH, EPOCH)
        for n in numbers
    ]
    rows: list[SnapshotRule] = []
    samples: dict[str, list[SnapshotRule]] = {
        k: [] for k in ("exact_email", "domain", "exact_number", "number_prefix")
    }
    seen_prefix: set[tuple[str, str]] = set()
    serial = 0
    actions: tuple[Action, ...] = ("block", "block", "block", "allow", "mute")
    while len(rows) < n_rules:
        serial += 1
        roll = rng.random()
        org = rng.random() < 0.05
        match_type: MatchType
        if roll < 0.25:
            match_type = "exact_email"
            scope = ORG_MAIL if org else rng.choice(mailboxes)
            w1, w2 = rng.choice(WORDS), rng.choice(WORDS)
            target = f"{w1}.{w2}{serial}@{rng.choice(WORDS)}{serial % 9973}.{rng.choice(TLDS)}"
        elif roll < 0.50:
            match_type = "exact_number"
            scope = ORG_PHONE if org else rng.choice(numbers)
            target = f"+{rng.choice((1, 33, 44, 49, 65, 91))}{10_000_000_000 + serial}"
        elif roll < 0.85:
            match_type = "domain"
            scope = ORG_MAIL if org else rng.choice(mailboxes)
            sub = "mail." if rng.random() < 0.2 else ""
            target = f"{sub}{rng.choice(WORDS)}{serial}.{rng.choice(TLDS)}"
        else:
            match_type = "number_prefix"
            scope = ORG_PHONE if org else rng.choice(numbers)
            digits = rng.randint(2, 7)
            target = f"+{rng.randrange(10 ** (digits - 1), 10**digits)}"
            if (scope, target) in seen_prefix:
                continue
            seen_prefix.add((scope, target))
        r = rng.random()
        expires = None if r >= 0.05 else (NOW - 3600 if r < 0.025 else NOW + 3600)
        row: SnapshotRule = (
            len(rows) + 1,
            scope,
            rng.choice(actions),
            match_type,
            target,
            rng.random() < 0.8,
            expires,
        )
        rows.append(row)
        bucket = samples[match_type]
        if len(bucket) < SAMPLES_PER_KIND:
            bucket.append(row)
        elif rng.random() < 0.01:
            bucket[rng.randrange(SAMPLES_PER_KIND)] = row
    return Corpus(targets, rows, samples)


Query = tuple[str, Sender, str, Family, Sender | None]  # (category, sender, recipient, ...)


def email(address: str) -> Sender:
    return Sender("email", address, address, domain=address.rpartition("@")[2])


def phone(e164: str) -> Sender:
    return Sender("phone", e164, e164)


def make_queries(corpus: Corpus, n: int, seed: int) -> list[Query]:
    """A realistic mix: about 45% hits and 55% misses (see the module docstring)."""
    rng = random.Random(seed + 1)
    mailboxes = [t.id for t in corpus.targets if t.kind == "mailbox"]
    numbers = [t.id for t in corpus.targets if t.kind == "number"]
    s = corpus.samples
    out: list[Query] = []

    def recipient_of(row: SnapshotRule, family: Family) -> str:
        if row[1] in (ORG_MAIL, ORG_PHONE):
            return rng.choice(mailboxes if family == "mail" else numbers)
        return row[1]

    for _ in range(n):
        r = rng.random()
        envelope = None
        if r < 0.15:
            row = rng.choice(s["exact_email"])
            out.append(("exact_email hit", email(row[4]), recipient_of(row, "mail"), "mail", None))
        elif r < 0.30:
            row = rng.choice(s["domain"])
            sender = email(f"someone@news.{row[4]}")
            out.append(("domain hit", sender, recipient_of(row, "mail"), "mail", None))
        elif r < 0.38:
            row = rng.choice(s["exact_number"])
            out.append(
                ("exact_number hit", phone(row[4]), recipient_of(row, "phone"), "phone", None)
            )
        elif r < 0.45:
            row = rng.choice(s["number_prefix"])
            value = (row[4] + "0123456789")[:12]
            out.append(("prefix hit", phone(value), recipient_of(row, "phone"), "phone", None))
        elif r < 0.75:
            a = f"{rng.choice(WORDS)}.{rng.randrange(10**6)}@news.mail{rng.randrange(10**6)}.com"
            to = rng.choice(mailboxes) if rng.random() < 0.95 else "unknown@ours.example"
            if rng.random() < 0.1:
                envelope = email(f"bounce-{rng.randrange(10**6)}@mailer.example")
            out.append(("mail miss", email(a), to, "mail", envelope))
        else:
            value = f"+{rng.choice((1, 33, 81))}{rng.randrange(10**9, 10**10)}"
            to = rng.choice(numbers) if rng.random() < 0.95 else "+19999999999"
            out.append(("phone miss", phone(value), to, "phone", None))
    return out


def percentile(sorted_ns: list[int], q: float) -> float:
    return float(sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))])


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def traced(build: Callable[[], object]) -> tuple[object, int]:
    """Run ``build`` under tracemalloc; return its result and the bytes it keeps alive."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    result = build()
    gc.collect()
    kept = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return result, kept


def measure_memory(n_rules: int, n_targets: int, seed: int) -> tuple[int, int, int]:
    """(bytes per rule kept by a RuleSet, its rule count, bytes per entry of a bare dict)."""

    def build_ruleset() -> RuleSet:
        corpus = generate(n_rules, n_targets, seed)
        rs = compile_rules(corpus.targets, corpus.rows)
        del corpus  # the rows go; only what the RuleSet keeps stays traced
        return rs

    rs, kept = traced(build_ruleset)
    assert isinstance(rs, RuleSet)
    count = rs.rule_count
    del rs

    def build_dict() -> dict[str, int]:
        return {f"{i:040d}": 0 for i in range(n_rules)}

    d, dict_kept = traced(build_dict)
    del d
    return kept // count, count, dict_kept // n_rules


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rules", type=int, default=1_000_000)
    ap.add_argument("--targets", type=int, default=1000)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skip-memory", action="store_true", help="skip the tracemalloc pass")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    corpus = generate(args.rules, args.targets, args.seed)
    gen_s = time.perf_counter() - t0
    gc.collect()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    rs = compile_rules(corpus.targets, corpus.rows, version=1)
    compile_s = time.perf_counter() - t0
    gc.collect()
    rss_delta = rss_bytes() - rss0
    queries = make_queries(corpus, args.calls, args.seed)
    corpus.rows.clear()
    gc.collect()

    # Warm up, then throughput without per-call timers.
    for _cat, sender, to, family, env in queries:
        decide(rs, sender, to, family, now=NOW, envelope=env)
    t0 = time.perf_counter_ns()
    for _cat, sender, to, family, env in queries:
        decide(rs, sender, to, family, now=NOW, envelope=env)
    loop_ns = time.perf_counter_ns() - t0
    per_second = len(queries) / (loop_ns / 1e9)

    # Latency of one call.
    clock = time.perf_counter_ns
    by_cat: dict[str, list[int]] = {}
    all_ns: list[int] = []
    verdicts: dict[str, int] = {}
    for cat, sender, to, family, env in queries:
        a = clock()
        d = decide(rs, sender, to, family, now=NOW, envelope=env)
        b = clock()
        all_ns.append(b - a)
        by_cat.setdefault(cat, []).append(b - a)
        key = d.reason if d.reason == "mode_default" else f"rule:{d.verdict}"
        verdicts[key] = verdicts.get(key, 0) + 1
    overhead = statistics.median(-(clock() - clock()) for _ in range(100_000))
    all_ns.sort()

    mem_line = "skipped (--skip-memory)"
    if not args.skip_memory:
        del queries, corpus
        per_rule, count, per_dict = measure_memory(args.rules, args.targets, args.seed)
        mem_line = (
            f"{per_rule} B/rule (tracemalloc, {count:,} rules, key strings included); "
            f"bare dict of 40-char keys: {per_dict} B/entry"
        )

    print("SenderGate decide() benchmark")
    print(f"  machine     {platform.platform()} · {cpu_model()} · {os.cpu_count()} CPUs")
    print(f"  python      {sys.version.split()[0]} ({platform.python_implementation()})")
    print(f"  rules       {rs.rule_count:,} in {len(rs._scopes):,} scopes, {args.targets} targets")
    print(f"  generate    {gen_s:.2f} s (synthetic rows)")
    print(f"  compile     {compile_s:.2f} s ({rs.rule_count / compile_s:,.0f} rules/s)")
    print(f"  memory      {mem_line}")
    print(f"              RSS growth over compile: {rss_delta / rs.rule_count:.0f} B/rule")
    print(f"  throughput  {per_second:,.0f} decisions/s ({loop_ns / len(all_ns):.0f} ns/call)")
    print(f"  timer       {overhead:.0f} ns per perf_counter_ns pair (included below)")
    print()
    print(f"  {'category':<18}{'calls':>9}{'p50 ns':>9}{'p99 ns':>9}")
    for cat in sorted(by_cat):
        ns = sorted(by_cat[cat])
        print(f"  {cat:<18}{len(ns):>9,}{percentile(ns, 0.5):>9.0f}{percentile(ns, 0.99):>9.0f}")
    p50, p99 = percentile(all_ns, 0.5), percentile(all_ns, 0.99)
    print(f"  {'all':<18}{len(all_ns):>9,}{p50:>9.0f}{p99:>9.0f}")
    print(f"  outcomes    {dict(sorted(verdicts.items()))}")


if __name__ == "__main__":
    main()
