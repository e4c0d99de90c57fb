"""Hostile input against a running ``sendergate serve``: no 5xx, no crash.

Raw HTTP/1.1 over sockets, so that every byte is ours: fuzzed bodies (random bytes, and
well-authenticated but malformed ones, which get past the signature check into the
parsers), fuzzed headers (random names, invalid UTF-8, oversized, conflicting lengths),
fuzzed signatures, bodies over ``max_body_bytes`` (declared, and streamed chunked),
slow requests (headers and body trickled over about two seconds), invalid UTF-8 and odd
paths, random methods, clients that hang up halfway. Signed webhooks from real senders
flow at the same time and must be answered as usual.

Afterwards: not one answer was 5xx (the application stays up, so no 502/503/504 is
expected either), the process is alive, ``/healthz`` and ``/readyz`` answer 200, and the
log holds no traceback. A table of the answers by category is printed (``pytest -s``) and
attached to the report. Everything is bounded: a fixed number of cases, 10 s per
exchange, a seeded generator (``SEED``) so that a failure can be replayed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from gateway.providers.mailgun import mailgun_signature
from gateway.signing import hmac_sha256
from tests import providers_support as ps
from tests.redis_support import free_port
from tests.reliability.support import (
    ADMIN,
    GENERIC_SECRET,
    MAILBOX,
    MAILGUN_KEY,
    NUMBER,
    POSTMARK_AUTH,
    PUBLIC_URL,
    TWILIO_TOKEN,
    TWIML,
    Event,
    EventFactory,
    ServeProcess,
    gateway_config,
)
from tests.servers import RecordingApp, Reply, UvicornThread

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

SEED = 20240607
MAX_BODY = 65536
EXCHANGE_TIMEOUT_S = 10.0
Headers = Sequence[tuple[bytes, bytes]]


@dataclass
class Case:
    category: str
    what: str
    data: bytes  # the whole request, or its head when ``chunks`` are given
    chunks: Sequence[bytes] = ()
    pause_s: float = 0.0  # between chunks
    hang_up: bool = False  # close without reading an answer


def request(
    method: str | bytes,
    path: str | bytes,
    headers: Headers = (),
    body: bytes = b"",
    *,
    length: bool = True,
) -> bytes:
    method_b = method.encode() if isinstance(method, str) else method
    path_b = path.encode() if isinstance(path, str) else path
    lines = [method_b + b" " + path_b + b" HTTP/1.1", b"Host: hooks.acme.example"]
    lines += [k + b": " + v for k, v in headers]
    if length:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def signed_case(category: str, what: str, event: Event) -> Case:
    headers = [(k.encode(), v.encode()) for k, v in event.headers.items()]
    return Case(category, what, request("POST", event.path, headers, event.body))


class Fuzz:
    def __init__(self, seed: int, keys: ps.Ed25519Keys) -> None:
        self.rng = random.Random(seed)
        self.keys = keys

    def junk(self, n: int | None = None) -> bytes:
        n = self.rng.randint(0, 2048) if n is None else n
        return self.rng.randbytes(n)

    def text(self) -> str:
        alphabet = "aZ09 +-_.@%&=;:/\\\"'<>{}[]\t\u00e9\u4e2d\U0001f600\u202e\x00\x7f"
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(0, 40)))

    def value(self, depth: int = 0) -> object:
        choice = self.rng.randint(0, 9 if depth < 3 else 5)
        if choice == 0:
            return None
        if choice == 1:
            return self.rng.choice([True, False])
        if choice == 2:
            return self.rng.choice([0, -1, 2**70, 1e308, -0.0])
        if choice in (3, 4, 5):
            return self.text()
        if choice in (6, 7):
            return [self.value(depth + 1) for _ in range(self.rng.randint(0, 4))]
        return {self.text(): self.value(depth + 1) for _ in range(self.rng.randint(0, 4))}

    def mutate(self, doc: object, depth: int = 0) -> object:
        """A JSON document with some of its values swapped for random ones."""
        if isinstance(doc, dict):
            return {
                k: (self.value() if self.rng.random() < 0.3 else self.mutate(v, depth + 1))
                for k, v in doc.items()
                if self.rng.random() > 0.1
            }
        if isinstance(doc, list):
            return [self.mutate(v, depth + 1) for v in doc]
        return doc

    def body_cases(self) -> list[Case]:
        out: list[Case] = []
        for source, ctype in (
            ("twilio", ps.FORM),
            ("telnyx", ps.JSON),
            ("mailgun", ps.FORM),
            ("postmark", ps.JSON),
            ("generic", ps.JSON),
        ):
            for _ in range(6):  # unauthenticated junk
                body = self.junk()
                headers = [(b"Content-Type", ctype.encode())]
                out.append(
                    Case("fuzzed body", source, request("POST", f"/hooks/{source}", headers, body))
                )
        for _ in range(12):  # Twilio: signed, random parameters
            params = [(self.text(), self.text()) for _ in range(self.rng.randint(0, 6))]
            if self.rng.random() < 0.5:
                params += [("From", self.text()), ("To", self.rng.choice([NUMBER, self.text()]))]
            signed = ps.twilio_request(TWILIO_TOKEN, f"{PUBLIC_URL}/hooks/twilio", params)
            out.append(signed_case("signed, malformed", "twilio", _as_event(signed)))
        for _ in range(12):  # Telnyx: signed, mutated message
            doc = self.mutate(json.loads(ps.telnyx_message_received("+14155550001", NUMBER)))
            raw = json.dumps(doc).encode() if self.rng.random() < 0.8 else self.junk()
            signed = ps.telnyx_request(
                self.keys, f"{PUBLIC_URL}/hooks/telnyx", raw, int(time.time())
            )
            out.append(signed_case("signed, malformed", "telnyx", _as_event(signed)))
        for _ in range(12):  # Mailgun: a valid signature, any other fields
            token = secrets.token_hex(25)
            ts = str(int(time.time()))
            fields = [(self.text(), self.text()) for _ in range(self.rng.randint(0, 5))]
            fields += [
                ("recipient", self.rng.choice([MAILBOX, self.text(), ""])),
                ("from", self.text()),
                ("message-headers", self.rng.choice([self.text(), json.dumps(self.value())])),
                ("timestamp", ts),
                ("token", token),
                ("signature", mailgun_signature(MAILGUN_KEY, ts, token)),
            ]
            body = urlencode(fields).encode()
            headers = [(b"Content-Type", ps.FORM.encode())]
            out.append(
                Case(
                    "signed, malformed", "mailgun", request("POST", "/hooks/mailgun", headers, body)
                )
            )
        for _ in range(12):  # Postmark: Basic auth is all there is, so any body gets in
            doc = self.mutate(ps.postmark_payload())
            raw = json.dumps(doc).encode() if self.rng.random() < 0.8 else self.junk()
            signed = ps.postmark_request(POSTMARK_AUTH, f"{PUBLIC_URL}/hooks/postmark", {})
            out.append(
                signed_case("signed, malformed", "postmark", _as_event(signed.with_body(raw)))
            )
        for _ in range(12):  # generic: HMAC over whatever the body is
            doc_text = json.dumps(self.mutate({"id": self.text(), "from": "+1415", "to": NUMBER}))
            body = doc_text.encode() if self.rng.random() < 0.7 else self.junk()
            signed = ps.generic_hmac_request(GENERIC_SECRET, f"{PUBLIC_URL}/hooks/generic", body)
            out.append(signed_case("signed, malformed", "generic", _as_event(signed)))
        # Invalid UTF-8 inside otherwise valid, authenticated requests.
        bad = b"\xff\xfe\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x28\x8c\xbc"
        pm = ps.postmark_request(POSTMARK_AUTH, f"{PUBLIC_URL}/hooks/postmark", {})
        body = json.dumps(ps.postmark_payload()).encode().replace(b"Hello", bad)
        out.append(signed_case("invalid UTF-8", "postmark body", _as_event(pm.with_body(body))))
        sig = hmac_sha256(GENERIC_SECRET.encode(), b'{"id":"' + bad + b'"}').hex()
        out.append(
            Case(
                "invalid UTF-8",
                "generic body",
                request(
                    "POST",
                    "/hooks/generic",
                    [(b"Content-Type", b"application/json"), (b"X-Signature", sig.encode())],
                    b'{"id":"' + bad + b'"}',
                ),
            )
        )
        form = b"From=%2B1415555" + bad + b"&To=" + NUMBER.encode() + b"&CallSid=CA" + bad
        out.append(
            Case(
                "invalid UTF-8",
                "twilio form",
                request(
                    "POST",
                    "/hooks/twilio",
                    [(b"Content-Type", ps.FORM.encode()), (b"X-Twilio-Signature", b"x")],
                    form,
                ),
            )
        )
        # Multipart with a broken boundary, and a content type that lies.
        for bad_type in (
            b"multipart/form-data; boundary=",
            b"multipart/form-data; boundary=zz",
            b"multipart/form-data",
            b"application/json; charset=utf-7",
            b"text/plain; charset=\xff",
        ):
            multipart = b'--zz\r\nContent-Disposition: form-data; name="a"\r\n\r\n' + self.junk(64)
            for source in ("mailgun", "postmark", "generic"):
                auth = [
                    (b"Content-Type", bad_type),
                    (b"Authorization", ps.basic_auth(POSTMARK_AUTH).encode()),
                ]
                out.append(
                    Case(
                        "fuzzed body",
                        f"{source} {bad_type[:30]!r}",
                        request("POST", f"/hooks/{source}", auth, multipart),
                    )
                )
        return out

    def header_cases(self) -> list[Case]:
        out: list[Case] = []
        token_chars = (
            b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
        )
        for _ in range(30):
            headers: list[tuple[bytes, bytes]] = []
            for _ in range(self.rng.randint(1, 12)):
                name = bytes(self.rng.choice(token_chars) for _ in range(self.rng.randint(1, 30)))
                value = bytes(
                    self.rng.choice(list(range(0x20, 0x7F)) + list(range(0x80, 0x100)))
                    for _ in range(self.rng.randint(0, 200))
                )
                headers.append((name, value))
            path = self.rng.choice(
                ["/hooks/twilio", "/hooks/postmark", "/hooks/generic", "/v1/mailboxes", "/healthz"]
            )
            out.append(
                Case(
                    "fuzzed headers", "random names, values", request("POST", path, headers, b"{}")
                )
            )
        fixed: list[tuple[str, Headers, bool]] = [
            ("value with 0xff", [(b"X-Twilio-Signature", b"\xff\xfe\xfd")], True),
            (
                "content-type invalid UTF-8",
                [(b"Content-Type", b"application/x-www-form-urlencoded\xc3\x28")],
                True,
            ),
            ("32 KiB header value", [(b"X-Big", b"a" * 32768)], True),
            ("300 headers", [(f"X-H{i}".encode(), b"v") for i in range(300)], True),
            (
                "two content types",
                [(b"Content-Type", ps.FORM.encode()), (b"Content-Type", ps.JSON.encode())],
                True,
            ),
            ("Content-Length abc", [(b"Content-Length", b"abc")], False),
            ("Content-Length -1", [(b"Content-Length", b"-1")], False),
            ("two Content-Lengths", [(b"Content-Length", b"2"), (b"Content-Length", b"3")], False),
            (
                "length and chunked",
                [(b"Content-Length", b"2"), (b"Transfer-Encoding", b"chunked")],
                False,
            ),
            ("Transfer-Encoding gzip", [(b"Transfer-Encoding", b"gzip")], False),
            ("Expect 100-continue", [(b"Expect", b"100-continue")], True),
            (
                "X-SenderGate spoofing",
                [(b"X-SenderGate-Verdict", b"deliver"), (b"webhook-id", b"x")],
                True,
            ),
            ("obs-fold", [(b"X-Folded", b"a\r\n b")], True),
            ("NUL in value", [(b"X-Nul", b"a\x00b")], True),
            ("space before colon", [(b"X-Odd ", b"v")], True),
        ]
        for what, odd, length in fixed:
            for path in ("/hooks/twilio", "/hooks/postmark"):
                out.append(
                    Case("fuzzed headers", what, request("POST", path, odd, b"ab", length=length))
                )
        return out

    def signature_cases(self, factory: EventFactory) -> list[Case]:
        out: list[Case] = []
        junk_values = [
            b"",
            b"=",
            b"!!!!",
            base64.b64encode(self.junk(64)),
            base64.b64encode(self.junk(3)),
            b"A" * 5000,
            b"\xff\xfe",
            "\u00e9\u4e2d".encode(),
            b"Bearer",
            b"Basic " + base64.b64encode(b"inbound:wrong"),
            b"Basic " + base64.b64encode(b"\xff:\xfe"),
            b"Basic !!!",
            b"Basic " + base64.b64encode(b"no-colon"),
        ]
        templates = {
            "twilio": (factory.make("twilio-sms", True), b"x-twilio-signature"),
            "telnyx": (factory.make("telnyx-sms", True), b"telnyx-signature-ed25519"),
            "telnyx-ts": (factory.make("telnyx-sms", True), b"telnyx-timestamp"),
            "postmark": (factory.make("postmark", True), b"authorization"),
            "generic": (_generic_event(), b"x-signature"),
        }
        for name, (event, header) in templates.items():
            for value in junk_values:
                headers = [
                    (k.encode(), v.encode())
                    for k, v in event.headers.items()
                    if k.encode() != header
                ]
                headers.append((header, value))
                out.append(
                    Case(
                        "fuzzed signatures", name, request("POST", event.path, headers, event.body)
                    )
                )
        # Mailgun: the signature lives in the form.
        for sig_value in ("", "zz", "0" * 64, "\u00e9" * 64):
            ts = str(int(time.time()))
            body = urlencode(
                [
                    ("recipient", MAILBOX),
                    ("timestamp", ts),
                    ("token", "t" * 50),
                    ("signature", sig_value),
                ]
            ).encode()
            out.append(
                Case(
                    "fuzzed signatures",
                    "mailgun",
                    request("POST", "/hooks/mailgun", [(b"Content-Type", ps.FORM.encode())], body),
                )
            )
        # A stale timestamp, correctly signed.
        old = ps.telnyx_request(
            self.keys,
            f"{PUBLIC_URL}/hooks/telnyx",
            ps.telnyx_message_received(),
            int(time.time()) - 86400,
        )
        out.append(signed_case("fuzzed signatures", "telnyx stale", _as_event(old)))
        return out

    def huge_cases(self) -> list[Case]:
        form = [(b"Content-Type", ps.FORM.encode())]
        declared = request(
            "POST", "/hooks/twilio", [*form, (b"Content-Length", b"10000000")], length=False
        )
        chunked_head = request(
            "POST",
            "/hooks/postmark",
            [
                (b"Content-Type", b"application/json"),
                (b"Transfer-Encoding", b"chunked"),
                (b"Authorization", ps.basic_auth(POSTMARK_AUTH).encode()),
            ],
            length=False,
        )
        piece = b"a" * 8192
        chunk = hex(len(piece))[2:].encode() + b"\r\n" + piece + b"\r\n"
        return [
            Case("huge body", "Content-Length 10 MB", declared, [b"x" * 65536]),
            Case(
                "huge body",
                "max_body_bytes + 1",
                request("POST", "/hooks/twilio", form, b"a" * (MAX_BODY + 1)),
            ),
            Case("huge body", "chunked, 128 KiB", chunked_head, [chunk] * 16 + [b"0\r\n\r\n"]),
            Case(
                "huge body",
                "admin API, 2 MiB",
                request(
                    "POST",
                    "/v1/mailboxes",
                    [*ADMIN_HEADERS, (b"Content-Type", b"application/json")],
                    b"[" * (2 * 1024 * 1024),
                ),
            ),
            Case(
                "huge body",
                "Content-Length 10^30",
                request(
                    "POST", "/hooks/postmark", [(b"Content-Length", b"1" + b"0" * 30)], length=False
                ),
            ),
        ]

    def slow_cases(self, factory: EventFactory) -> list[Case]:
        out: list[Case] = []
        for kind in ("twilio-voice", "postmark"):
            event = factory.make(kind, True)
            headers = [(k.encode(), v.encode()) for k, v in event.headers.items()]
            headers.append((b"Content-Length", str(len(event.body)).encode()))
            head = request("POST", event.path, headers, length=False)  # then the body, slowly
            body = event.body
            step = max(1, len(body) // 20)
            chunks = [body[i : i + step] for i in range(0, len(body), step)]
            out.append(
                Case(
                    "slow request",
                    f"{kind}, body over 2 s",
                    head,
                    chunks,
                    pause_s=2.0 / len(chunks),
                )
            )
        # The head itself trickled, a few bytes at a time.
        event = factory.make("twilio-sms", True)
        whole = signed_case("slow request", "", event).data
        pieces = [whole[i : i + 40] for i in range(0, len(whole), 40)]
        out.append(
            Case(
                "slow request",
                "twilio-sms, head and body over 2 s",
                b"",
                pieces,
                pause_s=2.0 / len(pieces),
            )
        )
        # Hung up halfway: the gateway must just forget the request.
        half = request(
            "POST",
            "/hooks/postmark",
            [
                (b"Content-Type", b"application/json"),
                (b"Content-Length", b"1000"),
                (b"Authorization", ps.basic_auth(POSTMARK_AUTH).encode()),
            ],
            length=False,
        )
        out.append(
            Case(
                "hang-up",
                "postmark, 10 of 1000 bytes",
                half,
                [b"{" * 10],
                pause_s=0.2,
                hang_up=True,
            )
        )
        tw = request("POST", "/hooks/twilio", [(b"Content-Length", b"500")], length=False)
        out.append(Case("hang-up", "twilio, head only", tw, [], hang_up=True))
        admin = request(
            "POST",
            "/v1/mailboxes",
            [*ADMIN_HEADERS, (b"Content-Type", b"application/json"), (b"Content-Length", b"900")],
            length=False,
        )
        out.append(Case("hang-up", "admin API, 5 of 900 bytes", admin, [b'{"a":'], hang_up=True))
        return out

    def path_and_method_cases(self) -> list[Case]:
        out: list[Case] = []
        paths = [
            b"/hooks/twilio/extra",
            b"/hooks/",
            b"/hooks/%00",
            b"/hooks/%ff%fe",
            b"/hooks/tw\xffilio",
            b"/hooks/twilio?%zz=%&a=\xff",
            b"/hooks/../v1/mailboxes",
            b"/" + b"a" * 8000,
            b"/v1/mailboxes/%ff",
            b"/v1/events?limit=-1&cursor=%ff",
            b"/v1/events?since=\xff",
            b"*",
            b"http://evil.example/hooks/twilio",
        ]
        for path in paths:
            out.append(
                Case(
                    "odd path",
                    repr(path[:40]),
                    request("POST", path, [(b"Content-Type", ps.FORM.encode())], b"From=x"),
                )
            )
            out.append(Case("odd path", repr(path[:40]), request("GET", path, ADMIN_HEADERS)))
        methods = [
            b"PUT",
            b"DELETE",
            b"PATCH",
            b"OPTIONS",
            b"HEAD",
            b"TRACE",
            b"FOO",
            b"G3T",
            b"post",
            b"PROPFIND",
            b"M" * 100,
        ]
        for method in methods:
            for path in (
                b"/hooks/twilio",
                b"/hooks/nope",
                b"/v1/mailboxes",
                b"/metrics",
                b"/healthz",
                b"/openapi.json",
            ):
                out.append(
                    Case(
                        "random method",
                        f"{method[:10]!r} {path.decode()}",
                        request(method, path, ADMIN_HEADERS, b"{}"),
                    )
                )
        out.append(
            Case(
                "random method",
                "CONNECT",
                b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: 127.0.0.1:80\r\n\r\n",
            )
        )
        out.append(Case("random method", "HTTP/0.9", b"GET /healthz\r\n\r\n"))
        out.append(Case("random method", "HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
        out.append(Case("random method", "not HTTP", self.junk(300)))
        # Admin API: random JSON to every writer, with the admin key.
        for path in (
            b"/v1/mailboxes",
            b"/v1/numbers",
            b"/v1/org/phone/contact-rules",
            b"/v1/contact-rules/batch",
        ):
            for _ in range(4):
                body = json.dumps(self.value()).encode()
                out.append(
                    Case(
                        "admin API",
                        path.decode(),
                        request(
                            "POST",
                            path,
                            [*ADMIN_HEADERS, (b"Content-Type", b"application/json")],
                            body,
                        ),
                    )
                )
        return out


ADMIN_HEADERS: Headers = [(b"Authorization", ADMIN["Authorization"].encode())]


def _as_event(signed: ps.SignedRequest) -> Event:
    return Event(
        "hostile",
        "",
        False,
        "",
        signed.url[len(PUBLIC_URL) :],
        dict(signed.headers),
        signed.body,
        0,
        b"",
    )


def _generic_event() -> Event:
    body = json.dumps({"id": secrets.token_hex(8), "from": "+14155550199", "to": NUMBER}).encode()
    return _as_event(ps.generic_hmac_request(GENERIC_SECRET, f"{PUBLIC_URL}/hooks/generic", body))


async def exchange(port: int, case: Case) -> str:
    """Send the case; the answer's status code as text, or what happened instead."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(EXCHANGE_TIMEOUT_S):
            try:
                writer.write(case.data)
                await writer.drain()
                for chunk in case.chunks:
                    if case.pause_s:
                        await asyncio.sleep(case.pause_s)
                    writer.write(chunk)
                    await writer.drain()
            except (ConnectionResetError, BrokenPipeError):
                pass  # answered (413 ...) and closed while we were still sending
            if case.hang_up:
                return "hung up"
            try:
                line = await reader.readline()
                while line.startswith(b"HTTP/1.1 100 "):  # Expect: 100-continue
                    while (await reader.readline()).strip():
                        pass
                    line = await reader.readline()
            except ConnectionResetError:
                return "reset"
    except TimeoutError:
        return "no answer in 10 s"
    finally:
        writer.close()
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            await writer.wait_closed()
    if not line:
        return "closed"
    parts = line.split(b" ", 2)
    return (
        parts[1].decode() if len(parts) > 1 and parts[0].startswith(b"HTTP/") else repr(line[:40])
    )


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[ServeProcess, RecordingApp, EventFactory]]:
    app = RecordingApp(routes={"/twilio": Reply(200, "text/xml", TWIML)})
    keys = ps.Ed25519Keys()
    with UvicornThread(app) as downstream:
        port = free_port()
        config = tmp_path / "config.toml"
        config.write_text(
            gateway_config(
                port=port,
                store_url=f"sqlite:///{tmp_path / 'sg.db'}",
                app_url=downstream.url,
                telnyx_public_key=keys.public_b64,
                max_body_bytes=MAX_BODY,
            )
        )
        serve = ServeProcess("gateway", config, port, tmp_path / "serve.log")
        serve.start()
        try:
            serve.wait_ready()
            yield serve, app, EventFactory(keys, SEED)
        finally:
            serve.stop()


def test_hostile_input_gets_no_5xx_and_the_gateway_stays_up(
    gateway: tuple[ServeProcess, RecordingApp, EventFactory],
    record_property: Callable[[str, object], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    serve, app, factory = gateway
    fuzz = Fuzz(SEED, factory.keys)
    cases = [
        *fuzz.body_cases(),
        *fuzz.header_cases(),
        *fuzz.signature_cases(factory),
        *fuzz.huge_cases(),
        *fuzz.slow_cases(factory),
        *fuzz.path_and_method_cases(),
    ]
    fuzz.rng.shuffle(cases)
    legit = factory.mix(40)

    async def run() -> tuple[list[str], list[httpx.Response]]:
        gate = asyncio.Semaphore(16)

        async def one(case: Case) -> str:
            async with gate:
                return await exchange(serve.port, case)

        async with httpx.AsyncClient(timeout=15) as client:

            async def real(event: Event) -> httpx.Response:
                await asyncio.sleep(fuzz.rng.random() * 2)
                return await client.post(
                    serve.url + event.path, headers=event.headers, content=event.body
                )

            hostile = asyncio.gather(*(one(c) for c in cases))
            answers, real_answers = await asyncio.gather(
                hostile, asyncio.gather(*(real(e) for e in legit))
            )
        return list(answers), list(real_answers)

    began = time.monotonic()
    answers, real_answers = asyncio.run(run())
    took = time.monotonic() - began

    by_category: dict[str, Counter[str]] = defaultdict(Counter)
    for case, answer in zip(cases, answers, strict=True):
        by_category[case.category][answer] += 1
    width = max(len(c) for c in by_category)
    report = "\n".join(
        [
            f"hostile input: {len(cases)} requests in {took:.1f} s (seed {SEED}), "
            f"{len(legit)} signed webhooks alongside",
            *(
                f"  {category.ljust(width)}  {sum(counts.values()):4d}  "
                + ", ".join(f"{k} ×{v}" for k, v in sorted(counts.items()))
                for category, counts in sorted(by_category.items())
            ),
        ]
    )
    record_property("hostile", report)
    with capsys.disabled():
        print("\n" + report)

    server_errors = [
        (c.category, c.what, a)
        for c, a in zip(cases, answers, strict=True)
        if a.isdigit() and int(a) >= 500
    ]
    assert server_errors == []
    stuck = [
        (c.category, c.what)
        for c, a in zip(cases, answers, strict=True)
        if a == "no answer in 10 s"
    ]
    assert stuck == []
    # The slow requests were answered like fast ones.
    slow = [a for c, a in zip(cases, answers, strict=True) if c.category == "slow request"]
    assert slow == ["200"] * len(slow), slow
    # Real webhooks were answered as usual meanwhile.
    for event, r in zip(legit, real_answers, strict=True):
        assert r.status_code == event.final_status, (event.kind, r.status_code, r.text)
    delivered = {r.header("x-sendergate-event-id") for r in app.requests}
    assert {e.eid for e in legit if e.allowed} <= delivered

    assert serve.alive
    assert httpx.get(f"{serve.url}/healthz", timeout=5).status_code == 200
    assert httpx.get(f"{serve.url}/readyz", timeout=5).status_code == 200
    after = factory.make("twilio-voice", True)
    r = httpx.post(serve.url + after.path, headers=after.headers, content=after.body, timeout=10)
    assert r.status_code == 200 and r.content == TWIML
    text = serve.text()
    assert "Traceback" not in text and "Exception in ASGI application" not in text, text[-3000:]
