"""A private, real ``redis-server`` for tests (no fakes: SPEC §5).

``RedisServer(directory)`` runs ``redis-server --port <free> --save "" --appendonly no`` on
127.0.0.1 with its files in ``directory``. ``stop()`` shuts it down (by default saving its
data first, so that ``start()`` on the same port comes back with the same keys, as a
persistent production Redis would), ``kill()`` is a crash (SIGKILL: nothing saved), and
``start()`` after either listens on the same port again.

``require_redis_server()`` answers the binary's path, or skips the test with a reason when
there is none, except under ``CI=true`` where a missing binary fails the test: CI must run
the Redis tests, never skip them.

Commands go over a plain socket in RESP, so the helper needs no event loop and no client
library, and works from any thread.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

_CANDIDATES = ("/usr/bin/redis-server", "/usr/local/bin/redis-server")


def find_redis_server() -> str | None:
    """The redis-server binary: on PATH, else a usual install location, else None."""
    found = shutil.which("redis-server")
    if found:
        return found
    return next((path for path in _CANDIDATES if os.access(path, os.X_OK)), None)


def require_redis_server() -> str:
    """The redis-server path; skip the test without one (fail it when ``CI=true``)."""
    binary = find_redis_server()
    if binary is None:
        reason = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must run the Redis tests", pytrace=False)
        pytest.skip(reason)
    return binary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _encode(*args: str | bytes) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


class RedisServer:
    """One redis-server process on ``127.0.0.1:port`` (see the module docstring)."""

    def __init__(self, directory: Path, *, port: int = 0, binary: str | None = None) -> None:
        self.directory = directory
        self.binary = binary or require_redis_server()
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and return once it answers PING."""
        if self.running:
            raise RuntimeError("redis-server already running")
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - the process owns it
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                self.host,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--dbfilename",
                "dump.rdb",
                "--daemonize",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self.command("PING") == b"+PONG":
                    return
            except OSError:
                pass
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._reap()
                tail = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{tail}")
            time.sleep(0.02)

    def stop(self, *, save: bool = True, timeout_s: float = 10.0) -> None:
        """Shut the server down (idempotent). ``save`` writes its data to disk first, so
        that ``start()`` restores it."""
        if not self.running:
            self._reap()
            return
        with contextlib.suppress(OSError):  # the connection closes as the server exits
            self.command("SHUTDOWN", "SAVE" if save else "NOSAVE")
        self._reap(timeout_s)

    def kill(self) -> None:
        """Crash the server (SIGKILL): what was not saved is lost."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self._reap()

    def _reap(self, timeout_s: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def command(self, *args: str | bytes, timeout_s: float = 2.0) -> bytes:
        """Send one command; answer the first line of the reply (e.g. ``b"+PONG"``,
        ``b":42"``) or, for a bulk string, its value."""
        with socket.create_connection((self.host, self.port), timeout=timeout_s) as sock:
            sock.sendall(_encode(*args))
            reader = sock.makefile("rb")
            line = reader.readline().rstrip(b"\r\n")
            if line.startswith(b"$") and line != b"$-1":
                return reader.read(int(line[1:]) + 2)[:-2]
            return line

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop(save=False)
