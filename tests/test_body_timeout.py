"""A webhook whose body never finishes (a slow-loris client) is answered 408 after
``[server] body_timeout_s``, through a real uvicorn server, and the gateway goes on
serving."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import ServerSettings
from tests import providers_support as ps
from tests.apptools import make_settings
from tests.servers import UvicornThread


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[UvicornThread]:
    settings = make_settings(
        tmp_path,
        sources={"twilio": ps.source("twilio", "token", forward_url="http://127.0.0.1:9/x")},
    )
    settings = replace(settings, server=ServerSettings(body_timeout_s=0.5))
    with UvicornThread(create_app(settings)) as server:
        yield server


def test_a_body_that_never_finishes_gets_408(gateway: UvicornThread) -> None:
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /hooks/twilio HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 100\r\n\r\nCallSid=CA1&From="  # and then nothing more
        )
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), head
    problem = json.loads(body)
    assert problem["status"] == 408 and "0.5 s" in problem["detail"]
    assert httpx.get(f"{gateway.url}/healthz", timeout=10).status_code == 200


def test_body_timeout_is_a_positive_number_in_config(tmp_path: Path) -> None:
    from gateway.errors import ConfigError
    from gateway.settings import load_settings

    path = tmp_path / "config.toml"
    path.write_text("[server]\nbody_timeout_s = 0\n")
    with pytest.raises(ConfigError, match=r"server\.body_timeout_s"):
        load_settings(str(path))
    path.write_text("[server]\nbody_timeout_s = 2.5\n")
    assert load_settings(str(path)).server.body_timeout_s == 2.5
