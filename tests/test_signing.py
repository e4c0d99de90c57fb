"""Signature primitives (``gateway.signing``) and the providers' published test vectors.

The vectors of PROVIDERS.md §4 (Twilio, Plivo V2, Vonage md5hash) are checked here
against the provider modules' signing helpers. Ed25519, RSA and Standard Webhooks use
keys made by the tests; Standard Webhooks is cross-checked with the ``standardwebhooks``
library in both directions.
"""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from standardwebhooks.webhooks import Webhook

from gateway.errors import InvalidSignature
from gateway.providers.plivo import plivo_v2_signature
from gateway.providers.twilio import twilio_signature
from gateway.providers.vonage import vonage_sms_signature
from gateway.signing import (
    ReplayCache,
    any_signature_matches,
    b64decode_strict,
    check_timestamp,
    constant_time_equals,
    ed25519_verify,
    hmac_sha1,
    hmac_sha256,
    load_ed25519_public_key,
    parse_unix_timestamp,
    rsa_pkcs1v15_verify,
    rsa_public_key_from_pem,
    standard_webhooks_secret,
    standard_webhooks_sign,
    standard_webhooks_verify,
)
from tests.providers_support import SnsKeys

NOW = 1_700_000_000.0
WHSEC = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()

# --- published vectors (PROVIDERS.md §4) ---------------------------------------------------

TWILIO_PARAMS = [
    ("CallSid", "CA1234567890ABCDE"),
    ("Caller", "+14158675309"),
    ("Digits", "1234"),
    ("From", "+14158675309"),
    ("To", "+18005551212"),
]
TWILIO_JSON_URL = (
    "https://mycompany.com/myapp.php?foo=1&bar=2&bodySHA256="
    "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
)


@pytest.mark.parametrize(
    ("url", "params", "expected"),
    [
        (
            "https://mycompany.com/myapp.php?foo=1&bar=2",
            TWILIO_PARAMS,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
        ),
        (
            "https://mycompany.com:443/myapp.php?foo=1&bar=2",
            TWILIO_PARAMS,
            "kvajT1Ptam85bY51eRf/AJRuM3w=",
        ),
        (
            "http://mycompany.com:80/myapp.php?foo=1&bar=2",
            TWILIO_PARAMS,
            "0ZXoZLH/DfblKGATFgpif+LLRf4=",
        ),
        (
            "http://mycompany.com:1234/myapp.php?foo=1&bar=2",
            TWILIO_PARAMS,
            "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=",
        ),
        (
            "https://mycompany.com/myapp.php?foo=1&bar=2",
            [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234")],
            "IK+Dwps556ElfBT0I3Rgjkr1wJU=",
        ),
        (TWILIO_JSON_URL, [], "a9nBmqA0ju/hNViExpshrM61xv4="),
    ],
    ids=["plain", "port-443", "port-80", "port-1234", "duplicate-keys", "json-body-hash"],
)
def test_twilio_published_vectors(url: str, params: list[tuple[str, str]], expected: str) -> None:
    """Twilio's signature helper reproduces twilio-python's test vectors."""
    assert twilio_signature("12345", url, params) == expected


@pytest.mark.parametrize(
    ("url", "nonce", "expected"),
    [
        ("https://answer.url", "12345", "ehV3IKhLysWBxC1sy8INm0qGoQYdYsHwuoKjsX7FsXc="),
        (
            "https://answer.url:8000",
            "24725744043720739450",
            "LDphWoWimP4QM5AoWI1uwP6WmlWtt5ITPZjXIWYvCNU=",
        ),
    ],
)
def test_plivo_v2_published_vectors(url: str, nonce: str, expected: str) -> None:
    """The Plivo V2 helper reproduces plivo-python's and plivo-node's vectors."""
    assert plivo_v2_signature("my_auth_token", url, nonce) == expected


def test_vonage_md5hash_published_vector() -> None:
    """The Vonage SMS md5hash signature reproduces vonage-python-sdk's vector."""
    params = {"a": "1", "b": "2", "timestamp": "1461605396"}
    assert vonage_sms_signature(params, "secret") == "6af838ef94998832dbfc29020b564830"


# --- HMAC, comparison, base64 ----------------------------------------------------------------


def test_hmac_helpers_match_known_digests() -> None:
    """HMAC helpers give the RFC 4231 / RFC 2202 digests for key 'key'."""
    message = b"The quick brown fox jumps over the lazy dog"
    assert hmac_sha1(b"key", message).hex() == "de7c9b85b8b78aa6bc8a7a36f70a90701c9db4d9"
    assert (
        hmac_sha256(b"key", message).hex()
        == "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    )


def test_constant_time_equals_handles_text_and_bytes() -> None:
    """Equality works on str (any Unicode) and bytes, and unequal lengths are unequal."""
    assert constant_time_equals("abc", b"abc")
    assert constant_time_equals("é", "é")
    assert not constant_time_equals("abc", "abd")
    assert not constant_time_equals("abc", "abcd")


def test_any_signature_matches() -> None:
    """A match anywhere in the candidates counts; no candidates never match."""
    assert any_signature_matches(b"x", [b"a", b"x"])
    assert not any_signature_matches(b"x", [])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("aGVsbG8=", b"hello"),
        ("aGVsbG8", b"hello"),
        (" aGVsbG8= ", b"hello"),
        ("aGVs bG8=", None),
        ("aGVsbG8=!", None),
        ("a", None),
        ("é", None),
        ("", b""),
    ],
)
def test_b64decode_strict(value: str, expected: bytes | None) -> None:
    """Base64 with or without padding decodes; anything outside the alphabet is refused."""
    assert b64decode_strict(value) == expected


# --- timestamps ---------------------------------------------------------------------------


def test_timestamp_window() -> None:
    """A timestamp inside the window passes; stale or future ones say by how much."""
    check_timestamp(NOW - 299, NOW, 300)
    check_timestamp(NOW + 299, NOW, 300)
    with pytest.raises(InvalidSignature, match=r"stale timestamp: 301 s old"):
        check_timestamp(NOW - 301, NOW, 300)
    with pytest.raises(InvalidSignature, match=r"in the future"):
        check_timestamp(NOW + 61, NOW, 300, future_tolerance_s=60)


@pytest.mark.parametrize("value", [None, "", "  ", "abc", "nan", "inf", "1" * 40, "1e999"])
def test_parse_unix_timestamp_refuses_junk(value: str | None) -> None:
    """Missing, non-numeric, non-finite or absurd timestamps are signature errors."""
    with pytest.raises(InvalidSignature, match="telnyx-timestamp"):
        parse_unix_timestamp(value, what="telnyx-timestamp")


def test_parse_unix_timestamp_accepts_numbers() -> None:
    """Integer and fractional Unix seconds parse."""
    assert parse_unix_timestamp(" 1700000000 ", what="t") == NOW
    assert parse_unix_timestamp("1700000000.5", what="t") == NOW + 0.5


# --- ed25519 --------------------------------------------------------------------------------


def test_ed25519_verify_round_trip() -> None:
    """A signature made with our key pair verifies; any change to the message fails."""
    private = Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    key = load_ed25519_public_key(base64.b64encode(raw).decode())
    signature = private.sign(b"1700000000|{}")
    assert ed25519_verify(key, signature, b"1700000000|{}")
    assert not ed25519_verify(key, signature, b"1700000001|{}")
    assert not ed25519_verify(key, signature[:-1], b"1700000000|{}")
    assert not ed25519_verify(key, bytes(64), b"1700000000|{}")


@pytest.mark.parametrize("key", ["", "not base64!", base64.b64encode(b"short").decode()])
def test_load_ed25519_public_key_refuses_bad_keys(key: str) -> None:
    """Only 32-byte base64 keys load."""
    with pytest.raises(ValueError, match="32 bytes"):
        load_ed25519_public_key(key)


# --- RSA (SNS) ---------------------------------------------------------------------------------


@pytest.mark.parametrize("hash_name", ["sha1", "sha256"])
def test_rsa_pkcs1v15_verify_with_certificate(hash_name: str) -> None:
    """PKCS#1 v1.5 signatures verify against the key of a PEM certificate (our own
    self-signed certificate: AWS publishes no fixed SNS vectors)."""
    keys = SnsKeys()
    algorithm: hashes.HashAlgorithm = hashes.SHA1() if hash_name == "sha1" else hashes.SHA256()  # noqa: S303
    signature = keys.private.sign(b"message", padding.PKCS1v15(), algorithm)
    public = rsa_public_key_from_pem(keys.cert_pem)
    assert public is not None
    assert rsa_pkcs1v15_verify(public, signature, b"message", hash_name)  # type: ignore[arg-type]
    assert not rsa_pkcs1v15_verify(public, signature, b"messagE", hash_name)  # type: ignore[arg-type]
    other = "sha256" if hash_name == "sha1" else "sha1"
    assert not rsa_pkcs1v15_verify(public, signature, b"message", other)  # type: ignore[arg-type]
    assert not rsa_pkcs1v15_verify(public, b"short", b"message", hash_name)  # type: ignore[arg-type]


def test_rsa_public_key_from_pem_refuses_junk() -> None:
    """Anything that is not a PEM certificate gives None."""
    assert rsa_public_key_from_pem(b"not a certificate") is None
    assert rsa_public_key_from_pem(b"") is None


# --- Standard Webhooks --------------------------------------------------------------------------


def test_standard_webhooks_sign_is_verified_by_the_library() -> None:
    """What the forwarder signs, the standardwebhooks library accepts (and vice versa)."""
    body = b'{"type":"event","n":1}'
    ts = int(dt.datetime.now(dt.UTC).timestamp())
    signature = standard_webhooks_sign(WHSEC, "msg_1", ts, body)
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(ts), "webhook-signature": signature}
    assert Webhook(WHSEC).verify(body, headers) == {"type": "event", "n": 1}
    theirs = Webhook(WHSEC).sign("msg_2", dt.datetime.fromtimestamp(ts, dt.UTC), body.decode())
    headers = {"webhook-id": "msg_2", "webhook-timestamp": str(ts), "webhook-signature": theirs}
    assert standard_webhooks_verify(WHSEC, headers, body, float(ts)) == "msg_2"


def test_standard_webhooks_accepts_any_of_several_signatures() -> None:
    """Space-separated signatures (key rotation) pass when one is valid; other versions
    and junk entries are skipped."""
    body = b"{}"
    good = standard_webhooks_sign(WHSEC, "m", int(NOW), body)
    header = f"v1,{base64.b64encode(bytes(32)).decode()} v2,abc junk {good}"
    headers = {"webhook-id": "m", "webhook-timestamp": str(int(NOW)), "webhook-signature": header}
    assert standard_webhooks_verify(WHSEC, headers, body, NOW) == "m"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"webhook-id": None}, "missing webhook-id"),
        ({"webhook-signature": None}, "missing webhook-signature"),
        ({"webhook-timestamp": None}, "missing webhook-timestamp"),
        ({"webhook-timestamp": str(int(NOW) - 301)}, "stale webhook-timestamp"),
        ({"webhook-signature": "v1,AAAA"}, "does not match"),
    ],
)
def test_standard_webhooks_verify_says_what_is_wrong(
    change: dict[str, str | None], message: str
) -> None:
    """Each failure names its cause."""
    body = b"{}"
    headers = {
        "webhook-id": "m",
        "webhook-timestamp": str(int(NOW)),
        "webhook-signature": standard_webhooks_sign(WHSEC, "m", int(NOW), body),
    }
    for key, value in change.items():
        if value is None:
            headers.pop(key)
        else:
            headers[key] = value
    with pytest.raises(InvalidSignature, match=message):
        standard_webhooks_verify(WHSEC, headers, body, NOW)


def test_standard_webhooks_secret_forms() -> None:
    """The whsec_ prefix is optional and padding may be missing; junk is a ValueError."""
    assert standard_webhooks_secret(WHSEC) == b"0123456789abcdef0123456789abcdef"
    assert standard_webhooks_secret(WHSEC.removeprefix("whsec_").rstrip("=")) == (
        b"0123456789abcdef0123456789abcdef"
    )
    with pytest.raises(ValueError, match="whsec_"):
        standard_webhooks_secret("whsec_!!!")
    with pytest.raises(ValueError, match="whsec_"):
        standard_webhooks_secret("whsec_")


# --- replay cache ---------------------------------------------------------------------------


def test_replay_cache_marks_and_expires() -> None:
    """A key is new once, seen until its TTL passes, then new again."""
    cache = ReplayCache(ttl_s=10)
    assert not cache.seen("a", NOW)
    assert cache.seen("a", NOW + 9.9)
    assert not cache.seen("a", NOW + 10)
    assert cache.seen("a", NOW + 11)


def test_replay_cache_evicts_oldest_past_max_size() -> None:
    """Past max_size the oldest insertions are dropped first."""
    cache = ReplayCache(ttl_s=100, max_size=3)
    for i, key in enumerate("abcd"):
        assert not cache.seen(key, NOW + i)
    assert len(cache) == 3
    assert "a" not in cache
    assert cache.seen("d", NOW + 5)


def test_replay_cache_forget_and_purge() -> None:
    """forget() unmarks a key; expired keys are purged as time moves on."""
    cache = ReplayCache(ttl_s=5)
    cache.seen("a", NOW)
    cache.forget("a")
    cache.forget("never-seen")
    assert not cache.seen("a", NOW)
    cache.seen("b", NOW + 1)
    cache.seen("c", NOW + 100)
    assert len(cache) == 1


def test_replay_cache_refuses_bad_sizes() -> None:
    """A non-positive TTL or size is a programming error."""
    with pytest.raises(ValueError, match="positive"):
        ReplayCache(ttl_s=0)
    with pytest.raises(ValueError, match="positive"):
        ReplayCache(ttl_s=1, max_size=0)
