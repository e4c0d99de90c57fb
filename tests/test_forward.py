"""The forwarder against real servers on 127.0.0.1: a recording uvicorn app, a stopped
port, and raw TCP servers that misbehave. No mocked transport."""

from __future__ import annotations

import asyncio
import gc
import gzip
import json
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from gateway.forward import Forwarder, ForwardResult
from tests.servers import RecordingApp, Reply, UvicornThread, running

SECRET = "whsec_c2VuZGVyZ2F0ZS1mb3J3YXJkLXRlc3Qtc2VjcmV0ISE="
TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response><Dial>+14155550100</Dial></Response>'


@pytest.fixture
def downstream() -> RecordingApp:
    return RecordingApp()


@pytest.fixture
def server(downstream: RecordingApp) -> Iterator[UvicornThread]:
    with running(downstream) as srv:
        yield srv


@pytest.fixture
async def forwarder() -> AsyncIterator[Forwarder]:
    async with Forwarder(SECRET) as fwd:
        yield fwd


async def relay(fwd: Forwarder, url: str, **overrides: Any) -> ForwardResult:
    """forward() with plausible defaults for everything a test does not care about."""
    args: dict[str, Any] = {
        "method": "POST",
        "query": "",
        "headers": [("Content-Type", "application/x-www-form-urlencoded")],
        "body": b"From=%2B14155550123&To=%2B14155550100",
        "event_id": "CA0123456789abcdef",
        "verdict": "deliver",
        "rule": None,
        "sender": "+14155550123",
        "timeout_s": 5.0,
    }
    args.update(overrides)
    return await fwd.forward(url, **args)


async def test_binary_body_arrives_byte_for_byte(
    forwarder: Forwarder, server: UvicornThread, downstream: RecordingApp
) -> None:
    """A body that is not UTF-8 reaches the app with the same bytes, method and type."""
    body = bytes(range(256)) + b"\xff\xfe\r\n\x00tail"
    result = await relay(
        forwarder,
        f"{server.url}/hook",
        headers=[("Content-Type", "application/octet-stream")],
        body=body,
    )
    assert result.ok
    seen = downstream.last
    assert (seen.method, seen.path, seen.body) == ("POST", "/hook", body)
    assert seen.header("content-type") == "application/octet-stream"
    assert seen.header("content-length") == str(len(body))


async def test_multipart_body_and_boundary_arrive_unchanged(
    forwarder: Forwarder, server: UvicornThread, downstream: RecordingApp
) -> None:
    """A multipart email post (with a binary attachment) keeps its bytes and boundary."""
    boundary = "----sgBoundary7MA4YWxkTrZu0gW"
    body = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="sender"\r\n\r\n'
            "alice@example.com\r\n"
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="attachment-1"; filename="a.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + b"\x89PNG\r\n\x1a\n\x00\xff"
        + f"\r\n--{boundary}--\r\n".encode()
    )
    content_type = f"multipart/form-data; boundary={boundary}"
    result = await relay(
        forwarder, f"{server.url}/mail", headers=[("Content-Type", content_type)], body=body
    )
    assert result.ok
    assert downstream.last.body == body
    assert downstream.last.header("content-type") == content_type


async def test_get_with_query_is_relayed_as_get(
    forwarder: Forwarder, server: UvicornThread, downstream: RecordingApp
) -> None:
    """A GET webhook keeps its method and raw query, and sends no body or length."""
    query = "From=%2B14155550123&To=%2B14155550100&CallSid=CA1"
    result = await relay(
        forwarder, f"{server.url}/voice", method="GET", query=query, headers=[], body=b""
    )
    assert result.ok
    seen = downstream.last
    assert (seen.method, seen.path, seen.query, seen.body) == ("GET", "/voice", query, b"")
    assert not seen.has_header("content-length")
    assert not seen.has_header("content-type")


async def test_query_is_merged_with_the_forward_urls_own_query(
    forwarder: Forwarder, server: UvicornThread, downstream: RecordingApp
) -> None:
    """The provider's query is appended to a forward URL that has one, with '&'."""
    await relay(forwarder, f"{server.url}/hook?tenant=a#frag", query="b=2&c=%20")
    assert downstream.last.query == "tenant=a&b=2&c=%20"


async def test_query_is_not_requoted(
    forwarder: Forwarder, server: UvicornThread, downstream: RecordingApp
) -> None:
    """Escapes a URL library would normalise (%7E, %2b, '+') go out exactly as they came."""
    query = "a=%7E&b=%2b&c=x+y&d=%E2%82%AC&e=&f"
    await relay(forwarder, f"{server.url}/hook", query=query)
    assert downstream.last.query == query


async def test_unsafe_query_characters_are_percent_encoded(
    forwarder: Forwarder, server: UvicornThread, downstream: RecordingApp
) -> None:
    """Raw spaces, '#' and non-ASCII in a query are escaped rather than breaking the URL."""
    await relay(forwarder, f"{server.url}/hook", query="a=b c&d=#e&f=\xe9")
    assert downstream.last.query == "a=b%20c&d=%23e&f=%E9"


async def test_hop_by_hop_host_and_length_are_removed(
    forwarder: Forwarder, server: UvicornThread, downstream: RecordingApp
) -> None:
    """Hop-by-hop headers, those named in Connection, Host and Content-Length are dropped."""
    headers = [
        ("Host", "gateway.example.com"),
        ("Connection", "keep-alive, X-Hop-Custom"),
        ("X-Hop-Custom", "secret"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "h2c"),
        ("Content-Length", "99999"),
        ("Expect", "100-continue"),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ]
    body = b"a=1"
    result = await relay(forwarder, f"{server.url}/hook", headers=headers, body=body)
    assert result.ok
    seen = downstream.last
    for name in (
        "connection",
        "x-hop-custom",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    ):
        assert not seen.has_header(name), name
    assert seen.header_all("host") == [f"127.0.0.1:{server.port}"]
    assert seen.header_all("content-length") == ["3"]
    assert seen.body == body


async def test_provider_headers_kept_and_gateway_headers_added(
    forwarder: Forwarder, server: UvicornThread, downstream: RecordingApp
) -> None:
    """Signature headers and repeated headers survive; X-SenderGate-* describe the decision."""
    headers = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("X-Twilio-Signature", "0Gl7Vjq1KqNp0Wb2uA9VfZBp0ys="),
        ("I-Twilio-Idempotency-Token", "a1b2c3"),
        ("User-Agent", "TwilioProxy/1.1"),
        ("X-Multi", "one"),
        ("X-Multi", "two"),
    ]
    result = await relay(
        forwarder,
        f"{server.url}/sms",
        headers=headers,
        verdict="deliver",
        rule=42,
        sender="+14155550123",
        event_id="SM0001",
        request_id="req-7",
    )
    assert result.ok
    seen = downstream.last
    assert seen.header("x-twilio-signature") == "0Gl7Vjq1KqNp0Wb2uA9VfZBp0ys="
    assert seen.header("i-twilio-idempotency-token") == "a1b2c3"
    assert seen.header("user-agent") == "TwilioProxy/1.1"
    assert seen.header_all("x-multi") == ["one", "two"]
    assert seen.header("x-sendergate-verdict") == "deliver"
    assert seen.header("x-sendergate-rule") == "42"
    assert seen.header("x-sendergate-sender") == "+14155550123"
    assert seen.header("x-sendergate-event-id") == "SM0001"
    assert seen.header("x-request-id") == "req-7"


async def test_rule_header_says_none_without_a_rule(
    forwarder: Forwarder, server: UvicornThread, downstream: RecordingApp
) -> None:
    """When no rule decided (a default verdict) X-SenderGate-Rule is the word 'none'."""
    await relay(forwarder, f"{server.url}/hook", rule=None)
    assert downstream.last.header("x-sendergate-rule") == "none"


async def test_spoofed_gateway_headers_are_replaced(
    forwarder: Forwarder, server: UvicornThread, downstream: RecordingApp
) -> None:
    """A caller cannot smuggle its own X-SenderGate-*, webhook-* or X-Request-Id values."""
    spoofed = [
        ("X-SenderGate-Verdict", "deliver"),
        ("x-sendergate-rule", "1"),
        ("X-SenderGate-Trusted", "yes"),
        ("webhook-id", "msg_forged"),
        ("webhook-timestamp", "1"),
        ("webhook-signature", "v1,Zm9yZ2Vk"),
        ("X-Request-Id", "forged"),
    ]
    await relay(
        forwarder,
        f"{server.url}/hook",
        headers=spoofed,
        verdict="mute",
        rule=None,
        event_id="evt-1",
        request_id="req-1",
    )
    seen = downstream.last
    assert seen.header_all("x-sendergate-verdict") == ["mute"]
    assert seen.header_all("x-sendergate-rule") == ["none"]
    assert not seen.has_header("x-sendergate-trusted")
    assert seen.header_all("webhook-id") == ["evt-1"]
    assert len(seen.header_all("webhook-signature")) == 1
    assert seen.header_all("x-request-id") == ["req-1"]


async def test_standard_webhooks_signature_verifies(
    forwarder: Forwarder, server: UvicornThread, downstream: RecordingApp
) -> None:
    """The app can verify the gateway with the standardwebhooks library over the body."""
    body = json.dumps({"data": {"event_type": "message.received", "id": "abc"}}).encode()
    await relay(
        forwarder,
        f"{server.url}/hook",
        headers=[("Content-Type", "application/json")],
        body=body,
        event_id="msg_2b1c",
    )
    seen = downstream.last
    assert Webhook(SECRET).verify(seen.body, seen.header_dict) == json.loads(body)
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(SECRET).verify(seen.body + b" ", seen.header_dict)


async def test_webhook_headers_use_event_id_and_injected_clock(
    server: UvicornThread, downstream: RecordingApp
) -> None:
    """webhook-id is the event id and webhook-timestamp the clock's whole seconds."""
    async with Forwarder(SECRET, clock=lambda: 1_700_000_000.9) as fwd:
        await relay(fwd, f"{server.url}/hook", event_id="evt_42")
    seen = downstream.last
    assert seen.header("webhook-id") == "evt_42"
    assert seen.header("webhook-timestamp") == "1700000000"
    assert (seen.header("webhook-signature") or "").startswith("v1,")


async def test_without_secret_no_signature_and_provider_webhook_headers_pass(
    server: UvicornThread, downstream: RecordingApp
) -> None:
    """Without a signing secret the gateway adds no webhook-* but relays a provider's own."""
    async with Forwarder(None) as fwd:
        assert not fwd.signs
        await relay(fwd, f"{server.url}/hook")
        plain = downstream.last
        provider = [
            ("webhook-id", "msg_p"),
            ("webhook-timestamp", "5"),
            ("webhook-signature", "v1,x"),
        ]
        await relay(fwd, f"{server.url}/hook", headers=provider)
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        assert not plain.has_header(name)
    assert downstream.last.header("webhook-id") == "msg_p"
    assert downstream.last.header("webhook-signature") == "v1,x"


async def test_the_client_adds_no_headers_of_its_own(
    forwarder: Forwarder, server: UvicornThread, downstream: RecordingApp
) -> None:
    """No User-Agent, Accept or Content-Type is invented; Accept-Encoding asks for identity."""
    await relay(
        forwarder,
        f"{server.url}/hook",
        headers=[("Accept-Encoding", "gzip, br")],
        body=b"x",
        event_id="e",
    )
    seen = downstream.last
    assert not seen.has_header("user-agent")
    assert not seen.has_header("accept")
    assert not seen.has_header("content-type")
    assert seen.header_all("accept-encoding") == ["identity"]


async def test_app_answer_is_relayed_unchanged(
    forwarder: Forwarder, server: UvicornThread, downstream: RecordingApp
) -> None:
    """The app's status, full content type and body (TwiML) come back as they were."""
    downstream.reply = Reply(status=200, content_type="text/xml; charset=utf-8", body=TWIML)
    result = await relay(forwarder, f"{server.url}/voice")
    assert (result.status, result.ok, result.error) == (200, True, None)
    assert result.content_type == "text/xml; charset=utf-8"
    assert result.body == TWIML
    assert result.headers == (("Content-Type", "text/xml; charset=utf-8"),)
    assert result.upstream_status == 200 and result.success
    assert result.elapsed_ms > 0


async def test_app_5xx_becomes_503_without_its_body(
    forwarder: Forwarder, server: UvicornThread, downstream: RecordingApp
) -> None:
    """An app 500 is answered 503 (so the provider retries), relaying nothing of it."""
    downstream.reply = Reply(status=500, body=b"Traceback (most recent call last): ...")
    result = await relay(forwarder, f"{server.url}/hook")
    assert (result.status, result.ok, result.error) == (503, False, "status_5xx")
    assert (result.body, result.content_type, result.headers) == (b"", None, ())
    assert result.upstream_status == 500


async def test_app_4xx_is_relayed_as_its_answer(
    forwarder: Forwarder, server: UvicornThread, downstream: RecordingApp
) -> None:
    """An app 404 is the app's answer: relayed as 404 with ok True."""
    downstream.reply = Reply(status=404, content_type="text/plain", body=b"no such number")
    result = await relay(forwarder, f"{server.url}/hook")
    assert (result.status, result.ok, result.error, result.body) == (
        404,
        True,
        None,
        b"no such number",
    )
    assert not result.success


async def test_redirect_is_relayed_not_followed(
    forwarder: Forwarder, server: UvicornThread, downstream: RecordingApp
) -> None:
    """A 3xx from the app is relayed as is; the gateway does not follow it."""
    downstream.reply = Reply(status=302, body=b"", headers=(("Location", "/elsewhere"),))
    result = await relay(forwarder, f"{server.url}/hook")
    assert (result.status, result.ok) == (302, True)
    assert [r.path for r in downstream.requests] == ["/hook"]


async def test_compressed_answer_keeps_its_content_encoding(
    forwarder: Forwarder, server: UvicornThread, downstream: RecordingApp
) -> None:
    """An app that compresses anyway is relayed raw, with Content-Encoding to match."""
    packed = gzip.compress(TWIML)
    downstream.reply = Reply(
        content_type="text/xml", body=packed, headers=(("Content-Encoding", "gzip"),)
    )
    result = await relay(forwarder, f"{server.url}/hook")
    assert result.body == packed
    assert result.headers == (("Content-Type", "text/xml"), ("Content-Encoding", "gzip"))


async def test_stopped_app_gives_502_connect(
    forwarder: Forwarder, downstream: RecordingApp
) -> None:
    """Once the app's port is closed (even after a pooled keep-alive) the result is 502."""
    srv = UvicornThread(downstream)
    with srv:
        assert (await relay(forwarder, f"{srv.url}/hook")).ok
    result = await relay(forwarder, f"{srv.url}/hook")
    assert (result.status, result.ok, result.error) == (502, False, "connect")
    assert result.upstream_status is None and result.detail


async def test_slow_app_gives_504_within_the_timeout(
    forwarder: Forwarder, server: UvicornThread, downstream: RecordingApp
) -> None:
    """An app slower than timeout_s yields 504, and forward() returns soon after it."""
    downstream.reply = Reply(delay_s=10.0)
    started = time.monotonic()
    result = await relay(forwarder, f"{server.url}/hook", timeout_s=0.3)
    assert time.monotonic() - started < 3.0
    assert (result.status, result.ok, result.error) == (504, False, "timeout")


async def test_cancellation_propagates(
    forwarder: Forwarder, server: UvicornThread, downstream: RecordingApp
) -> None:
    """Cancelling a forward in flight raises CancelledError rather than a result."""
    downstream.reply = Reply(delay_s=10.0)
    task = asyncio.create_task(relay(forwarder, f"{server.url}/hook", timeout_s=8.0))
    await downstream.wait_for(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _raw_server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> asyncio.Server:
    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def _serve_raw(answer: bytes, fwd: Forwarder) -> ForwardResult:
    """Forward to a TCP server that reads the request head, writes ``answer`` and closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    srv = await _raw_server(handle)
    try:
        port = srv.sockets[0].getsockname()[1]
        return await relay(fwd, f"http://127.0.0.1:{port}/hook", body=b"", method="GET")
    finally:
        srv.close()
        await srv.wait_closed()


async def test_garbage_answer_gives_502_invalid_response(forwarder: Forwarder) -> None:
    """An answer that is not HTTP becomes 502 invalid_response."""
    result = await _serve_raw(b"SSH-2.0-OpenSSH_9.6\r\nnonsense\r\n\r\n", forwarder)
    assert (result.status, result.ok, result.error) == (502, False, "invalid_response")


async def test_closed_without_answer_gives_502_connect(forwarder: Forwarder) -> None:
    """A connection closed before any answer becomes 502 connect."""
    result = await _serve_raw(b"", forwarder)
    assert (result.status, result.ok, result.error) == (502, False, "connect")


async def test_header_injection_is_dropped(
    forwarder: Forwarder, server: UvicornThread, downstream: RecordingApp
) -> None:
    """Any header (relayed or ours) whose value holds CR/LF/NUL, or whose name is not a
    token, is dropped; the rest still arrive."""
    headers = [
        ("X-Evil", "a\r\nX-Injected: 1"),
        ("X-Nul", "a\x00b"),
        ("Bad Name", "v"),
        ("X-Fine", "ok"),
    ]
    result = await relay(
        forwarder, f"{server.url}/hook", headers=headers, sender="+1\r\nX-Injected: 2"
    )
    assert result.ok
    seen = downstream.last
    for name in ("x-evil", "x-nul", "bad name", "x-injected", "x-sendergate-sender"):
        assert not seen.has_header(name), name
    assert seen.header("x-fine") == "ok"
    assert seen.header("x-sendergate-verdict") == "deliver"


async def test_header_bytes_are_kept_when_utf8_and_dropped_otherwise(
    forwarder: Forwarder, server: UvicornThread, downstream: RecordingApp
) -> None:
    """Wire-decoded (latin-1) values go out as the same bytes if UTF-8, else are dropped."""
    utf8 = "café €".encode().decode("latin-1")
    await relay(
        forwarder, f"{server.url}/hook", headers=[("X-Utf8", utf8), ("X-Latin1", "caf\xe9")]
    )
    seen = downstream.last
    assert (seen.header("x-utf8") or "").encode("latin-1") == "café €".encode()
    assert not seen.has_header("x-latin1")


async def test_post_json_sends_bearer_and_json(
    server: UvicornThread, downstream: RecordingApp
) -> None:
    """post_json POSTs compact JSON with a bearer token and returns the answer."""
    downstream.reply = Reply(content_type="application/json", body=b'{"data":{"result":"ok"}}')
    async with Forwarder(None) as fwd:
        result = await fwd.post_json(
            f"{server.url}/v2/calls/v3:abc/actions/reject",
            json_body={"cause": "CALL_REJECTED"},
            bearer="KEY0123",
            timeout_s=2.0,
        )
    assert result.success and result.body == b'{"data":{"result":"ok"}}'
    seen = downstream.last
    assert (seen.method, seen.path) == ("POST", "/v2/calls/v3:abc/actions/reject")
    assert seen.header("authorization") == "Bearer KEY0123"
    assert seen.header("content-type") == "application/json"
    assert json.loads(seen.body) == {"cause": "CALL_REJECTED"}


async def test_fetch_gets_a_url(
    forwarder: Forwarder, server: UvicornThread, downstream: RecordingApp
) -> None:
    """fetch() GETs the URL with its query and returns status, type and body."""
    pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    downstream.routes["/cert.pem"] = Reply(content_type="application/x-pem-file", body=pem)
    result = await forwarder.fetch(
        f"{server.url}/cert.pem?Action=Confirm&Token=t%2B1", timeout_s=2.0
    )
    assert result.success and result.body == pem
    assert result.content_type == "application/x-pem-file"
    seen = downstream.last
    assert (seen.method, seen.path, seen.query, seen.body) == (
        "GET",
        "/cert.pem",
        "Action=Confirm&Token=t%2B1",
        b"",
    )


async def test_outbound_helpers_map_failures_too(forwarder: Forwarder) -> None:
    """fetch() and post_json() return a failed result for a closed port, never raise."""
    srv = UvicornThread(RecordingApp())  # never started: nothing listens on its port
    got = await forwarder.fetch(f"{srv.url}/x", timeout_s=1.0)
    posted = await forwarder.post_json(f"{srv.url}/x", json_body={}, bearer=None, timeout_s=1.0)
    assert (got.status, got.error) == (502, "connect")
    assert (posted.status, posted.error) == (502, "connect")


async def test_bad_forward_url_is_a_failed_result(forwarder: Forwarder) -> None:
    """A forward URL that cannot be used is reported as a 502, not raised."""
    result = await relay(forwarder, "ftp://example.invalid/hook")
    assert (result.status, result.ok, result.error) == (502, False, "connect")


async def test_lifecycle_misuse_and_bad_timeout_raise() -> None:
    """Use before start() or after aclose(), or a non-positive timeout, is a bug: it raises."""
    fwd = Forwarder(None)
    with pytest.raises(RuntimeError):
        await relay(fwd, "http://127.0.0.1:9/hook")
    async with fwd:
        with pytest.raises(ValueError):
            await relay(fwd, "http://127.0.0.1:9/hook", timeout_s=0)
    with pytest.raises(RuntimeError):
        await fwd.fetch("http://127.0.0.1:9/", timeout_s=1.0)


async def test_aclose_closes_cleanly_without_resource_warnings(
    server: UvicornThread, downstream: RecordingApp
) -> None:
    """After use, aclose() leaves no open session or socket behind (no ResourceWarning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fwd = Forwarder(SECRET)
        await fwd.start()
        results = await asyncio.gather(*(relay(fwd, f"{server.url}/hook") for _ in range(20)))
        assert all(r.ok for r in results)
        await fwd.aclose()
        await fwd.aclose()  # idempotent
        del fwd
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert len(downstream.requests) == 20


async def test_app_restart_between_events_costs_no_502(
    forwarder: Forwarder, downstream: RecordingApp
) -> None:
    """A pooled keep-alive connection that the app closed (here by restarting) is not
    reported as a failure: the next event goes out on a new connection."""
    srv = UvicornThread(downstream)
    with srv:
        assert (await relay(forwarder, f"{srv.url}/hook")).ok
    with srv:
        result = await relay(forwarder, f"{srv.url}/hook")
    assert (result.status, result.ok) == (200, True)
    assert len(downstream.requests) == 2


async def test_forward_url_credentials_are_sent_as_basic_auth(
    forwarder: Forwarder, server: UvicornThread, downstream: RecordingApp
) -> None:
    """user:password@ in the forward URL authenticates the gateway to the app (HTTP Basic),
    replacing the provider's own Authorization (meant for the gateway)."""
    url = f"http://gw:s%3Acret@127.0.0.1:{server.port}/hook"
    result = await relay(forwarder, url, headers=[("Authorization", "Basic cHJvdmlkZXI6eA==")])
    assert result.ok
    seen = downstream.last
    assert seen.header_all("authorization") == ["Basic Z3c6czpjcmV0"]  # gw:s:cret
    assert seen.header("host") == f"127.0.0.1:{server.port}"


async def test_own_calls_decompress_a_compressed_answer(
    forwarder: Forwarder, server: UvicornThread, downstream: RecordingApp
) -> None:
    """fetch() reads the body itself, so a gzip answer (sent although not asked for) is
    decompressed; a relay keeps it as it came (test above)."""
    pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    downstream.reply = Reply(
        content_type="application/x-pem-file",
        body=gzip.compress(pem),
        headers=(("Content-Encoding", "gzip"),),
    )
    result = await forwarder.fetch(f"{server.url}/cert.pem", timeout_s=2.0)
    assert result.success and result.body == pem
    assert result.headers == (("Content-Type", "application/x-pem-file"),)


async def test_unencodable_header_value_is_dropped_not_fatal(
    forwarder: Forwarder, server: UvicornThread, downstream: RecordingApp
) -> None:
    """A value holding a lone surrogate (JSON can carry one) cannot be sent as UTF-8: that
    header is dropped and the event is still relayed."""
    result = await relay(
        forwarder, f"{server.url}/hook", headers=[("X-Odd", "a\ud800b")], sender="\udcff@x"
    )
    assert result.ok
    assert not downstream.last.has_header("x-odd")
    assert not downstream.last.has_header("x-sendergate-sender")
