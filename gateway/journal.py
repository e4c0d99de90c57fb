"""The quarantine journal: a dropped event is stored by one append to a local file.

SPEC §4 wants a dropped event stored before its answer. On SQLite that used to mean
waiting for a commit, and a commit now and then runs a WAL checkpoint that takes 5 to
15 ms (docs/performance.md, "Latency at half load"): every drop waiting for it waits too.
With the journal, the drop waits for one ``write`` of its record to this process's
journal file instead; the recorder then moves journaled records into the store in
batches, in the background, and tells the journal how far it got.

Durability: a ``write`` that returned is in the kernel's page cache, so the record
survives the process (a crash, ``kill -9``, the OOM killer) but not the machine losing
power: the same promise as the SQLite store itself, which runs WAL with
``synchronous = NORMAL``. Nothing here calls ``fsync``.

Files: one directory per store (``<database>.quarantine/``), one *segment* file per
process at a time, named ``<pid>-<random>.jnl``, each held under an exclusive ``flock``
for as long as its process lives. A segment is a sequence of frames, one per record (see
``encode``). When every record a process appended is in the store, its segment is
truncated to nothing; when a segment grows past ``segment_bytes`` under continuous load,
the process starts a new one and deletes the old one once the store has all of it. So a
journal holds, at any moment, little more than the records not yet committed.

Recovery: at start-up a process lists the directory and takes the lock of every segment
it can. A segment whose lock is free belongs to a process that is gone; its records are
written to the store (an upsert by event id, and the store never replaces a delivered
record with an undelivered one, so replaying a record that was already committed, or
released since, changes nothing) and the file is deleted. Segments of running workers
(``serve --workers N``) are locked and left alone. A new segment is created under a
temporary name and renamed only once locked, so a recovering process cannot take a
segment that its owner has not locked yet.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import marshal
import os
import secrets
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.store.base import EventRecord, Store

log = logging.getLogger("sendergate.journal")

SUFFIX = ".jnl"
FORMAT = 1  # a frame of another version is skipped (and counted as unreadable)


def journal_dir(database: str | os.PathLike[str]) -> Path:
    """Where the journal of the SQLite database at ``database`` lives."""
    return Path(f"{os.fspath(database)}.quarantine")


# --- one record, one frame --------------------------------------------------------------------

# A frame: magic, payload length and CRC-32 (12 bytes), then the payload: ``marshal`` of
# (FORMAT, the record's fields in _V1_FIELDS order), the time as an ISO 8601 string.
# marshal, not JSON: 6 µs a record against 24 (docs/performance.md), and the frames only
# ever come back to this program. Like the database beside it, the directory must be
# writable by the service alone (segments are created 0600): marshal is not meant to read
# data an attacker made.
# _V1_FIELDS repeats the field list on purpose rather than sharing the SQLite store's
# column list or dataclasses.fields(): it is a file format, frozen with FORMAT, that a
# newer version must still read after an upgrade (a test pins it to EventRecord today).
MAGIC = b"SGJ1"
_HEAD = struct.Struct("<4sII")
_V1_FIELDS = (
    "id",
    "source",
    "provider",
    "channel",
    "provider_event_id",
    "sender",
    "envelope_sender",
    "recipient",
    "verdict",
    "rule",
    "reason",
    "mode",
    "would_drop",
    "unauthenticated_allow",
    "outcome",
    "received_at",
    "method",
    "path",
    "query",
    "content_type",
    "headers",
    "body",
    "forward_url",
    "forward_status",
    "response_status",
    "response_content_type",
    "response_body",
    "extra",
)
_AT = _V1_FIELDS.index("received_at")
_EXTRA = _V1_FIELDS.index("extra")


def encode(event: EventRecord) -> bytes:
    """One journal frame of ``event``."""
    values: list[Any] = [getattr(event, name) for name in _V1_FIELDS]
    values[_AT] = event.received_at.isoformat()
    values[_EXTRA] = dict(event.extra)
    try:
        payload = marshal.dumps((FORMAT, *values), 4)
    except ValueError:
        # marshal takes exact types only: a str or int subclass (an enum member in
        # ``extra``, say) is refused. Keep what the store keeps of it, its JSON value.
        values = [v if v is None or isinstance(v, bytes) else _plain(v) for v in values]
        payload = marshal.dumps((FORMAT, *values), 4)
    return _HEAD.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


def decode(payload: bytes) -> EventRecord:
    """The record of one frame's payload; ``ValueError`` when it is not one."""
    try:
        # Only frames that this program wrote, into a directory that only the service
        # may write (see encode), and whose checksum matched.
        values = marshal.loads(payload)  # noqa: S302
        if not isinstance(values, tuple) or values[:1] != (FORMAT,):
            raise ValueError(f"not a version {FORMAT} journal record")
        d = dict(zip(_V1_FIELDS, values[1:], strict=True))
        d["received_at"] = datetime.fromisoformat(d["received_at"])
        d["headers"] = tuple((str(k), str(v)) for k, v in d["headers"])
        return EventRecord(**d)
    except (TypeError, EOFError, IndexError) as exc:
        raise ValueError(f"not a journal record: {exc}") from exc


def read_segment(data: bytes) -> tuple[list[EventRecord], int]:
    """The records of a segment's bytes, and how many frames were not records. A frame
    torn by a crash in the middle of a write can only be the last one; after a frame
    that does not start with the magic nothing can be trusted, and the rest counts as
    one bad frame."""
    records: list[EventRecord] = []
    bad = 0
    at = 0
    while at < len(data):
        if len(data) - at < _HEAD.size:
            return records, bad + 1
        magic, size, crc = _HEAD.unpack_from(data, at)
        payload = data[at + _HEAD.size : at + _HEAD.size + size]
        if magic != MAGIC or len(payload) < size:
            return records, bad + 1
        at += _HEAD.size + size
        try:
            if zlib.crc32(payload) != crc:
                raise ValueError("checksum mismatch")
            records.append(decode(payload))
        except ValueError:
            bad += 1
    return records, bad


# --- this process's segments ---------------------------------------------------------------


@dataclass(slots=True)
class _Segment:
    path: Path
    fd: int
    end: int = 0  # records appended before this segment was sealed (a sequence number)


@dataclass(slots=True)
class Recovered:
    """A dead process's segment: its records, and the lock that keeps others off it
    until ``Journal.discard`` deletes it (or the process exits, and it is replayed again)."""

    path: Path
    fd: int
    records: list[EventRecord]
    unreadable: int


class Journal:
    """This process's quarantine journal (see the module docstring).

    ``append`` runs on the event loop: one ``write`` per call. ``committed(n)`` tells the
    journal that the next ``n`` records appended (in append order) are in the store.
    """

    def __init__(self, directory: Path, *, segment_bytes: int = 4 << 20) -> None:
        self.directory = directory
        self._segment_bytes = segment_bytes
        self._current: _Segment | None = None
        self._sealed: list[_Segment] = []
        self._size = 0  # bytes in the current segment
        self.appended = 0  # records appended since open (a sequence number)
        self.committed_count = 0  # of those, records the store has

    @property
    def uncommitted(self) -> int:
        return self.appended - self.committed_count

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._current = self._new_segment()
        self._size = 0

    def _new_segment(self) -> _Segment:
        for _ in range(8):
            name = f"{os.getpid()}-{secrets.token_hex(6)}"
            tmp = self.directory / f".{name}.tmp"
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600
            )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a recovering process is clearing it away: another name
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            final = self.directory / f"{name}{SUFFIX}"
            os.rename(tmp, final)
            return _Segment(final, fd)
        raise OSError(f"could not create a journal segment in {self.directory}")

    def append(self, events: Sequence[EventRecord]) -> None:
        """Make ``events`` durable (see the module docstring); ``OSError`` if they are not
        (disk full, say): then nothing of them is in the journal."""
        current = self._current
        if current is None:
            raise OSError("the quarantine journal is not open")
        data = b"".join([encode(e) for e in events])
        if self._size >= self._segment_bytes:
            current = self._rotate(current)
        try:
            view = memoryview(data)
            while view:  # a regular file takes it all at once, short of a full disk
                view = view[os.write(current.fd, view) :]
        except OSError:
            # Cut off what part of it was written, so that the next frame follows a whole one.
            with contextlib.suppress(OSError):
                os.ftruncate(current.fd, self._size)
            raise
        self._size += len(data)
        self.appended += len(events)

    def _rotate(self, current: _Segment) -> _Segment:
        fresh = self._new_segment()
        current.end = self.appended
        self._sealed.append(current)
        self._current = fresh
        self._size = 0
        return fresh

    def committed(self, count: int) -> None:
        """The next ``count`` records, in append order, are in the store now."""
        self.committed_count += count
        while self._sealed and self._sealed[0].end <= self.committed_count:
            _remove(self._sealed.pop(0))
        current = self._current
        if current is not None and self._size and self.committed_count >= self.appended:
            # All of it is in the store: start the segment again (O_APPEND writes at the
            # new end). One syscall, and the file stays as small as what is pending.
            os.ftruncate(current.fd, 0)
            self._size = 0

    def close(self) -> None:
        """Release the segments: deleted when the store has everything, else kept (and
        unlocked) for the next start to replay."""
        segments = [*self._sealed, *([self._current] if self._current else [])]
        self._sealed, self._current = [], None
        keep = self.committed_count < self.appended
        for segment in segments:
            if keep:
                os.close(segment.fd)
            else:
                _remove(segment)
        if keep:
            log.error(
                "%d quarantine records are not in the store yet; they stay in %s and are "
                "written to the store at the next start",
                self.uncommitted,
                self.directory,
            )

    # --- recovery ----------------------------------------------------------------------------

    def recover(self) -> list[Recovered]:
        """Lock and read every segment that no live process holds (see the module
        docstring). Call ``discard`` on each once its records are in the store."""
        found: list[Recovered] = []
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return found
        mine = {s.path.name for s in self._sealed} | (
            {self._current.path.name} if self._current else set()
        )
        for name in names:
            path = self.directory / name
            if name in mine or not (name.endswith(SUFFIX) or name.endswith(".tmp")):
                continue
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:  # another process recovered it meanwhile
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its process is alive
                os.close(fd)
                continue
            if name.endswith(".tmp") or not path.exists():
                # A segment never renamed (its process died within a few syscalls of
                # creating it: nothing was written), or one deleted while we waited.
                _remove(_Segment(path, fd))
                continue
            with open(fd, "rb", closefd=False) as f:
                data = f.read()
            records, bad = read_segment(data)
            found.append(Recovered(path, fd, records, bad))
        return found

    @staticmethod
    def discard(recovered: Recovered) -> None:
        _remove(_Segment(recovered.path, recovered.fd))

    @staticmethod
    def release(recovered: Recovered) -> None:
        """Give a recovered segment back untouched (its records could not be stored)."""
        os.close(recovered.fd)


def _remove(segment: _Segment) -> None:
    # Unlink first, then close (which drops the lock): nobody can lock a file that is gone.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(segment.path)
    os.close(segment.fd)


async def replay(journal: Journal, store: Store, *, batch: int = 500) -> int:
    """Write the records of dead processes' segments to ``store`` and delete the
    segments; return how many records were replayed. A segment the store does not take
    is left for the next start (and logged)."""
    replayed = 0
    for found in journal.recover():
        if found.unreadable:
            log.warning(
                "journal %s: %d frames were not records (a write torn by a crash) and are skipped",
                found.path,
                found.unreadable,
            )
        try:
            for start in range(0, len(found.records), batch):
                await store.put_events(found.records[start : start + batch])
        except Exception as exc:
            Journal.release(found)
            log.error("journal %s not replayed (kept for the next start): %s", found.path, exc)
            continue
        Journal.discard(found)
        replayed += len(found.records)
        if found.records:
            log.warning(
                "replayed %d quarantine records from %s, left by a process that stopped "
                "before they were in the store",
                len(found.records),
                found.path,
            )
    return replayed
