"""Signature primitives: HMAC, ed25519, RSA (SNS), Standard Webhooks, timestamp windows.

Pure and I/O-free. Nothing here reads a clock: every check that needs the time takes
``now`` (epoch seconds) from its caller, so that tests pin it and the pipeline reads the
clock once per request. Comparisons of secrets and digests go through
``hmac.compare_digest``.

Checks that can fail for a reason worth telling the provider's operator raise
``InvalidSignature`` with that reason; the boolean ``*_verify`` helpers answer ``False``
for any malformed key, signature or message instead of raising.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Literal

from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.x509 import load_pem_x509_certificate

from gateway.errors import InvalidSignature

__all__ = [
    "ReplayCache",
    "any_signature_matches",
    "b64decode_strict",
    "check_timestamp",
    "constant_time_equals",
    "ed25519_verify",
    "hmac_sha1",
    "hmac_sha256",
    "load_ed25519_public_key",
    "parse_unix_timestamp",
    "rsa_pkcs1v15_verify",
    "rsa_public_key_from_pem",
    "standard_webhooks_secret",
    "standard_webhooks_sign",
    "standard_webhooks_verify",
]

HashName = Literal["sha1", "sha256"]


# --- HMAC and comparison ---------------------------------------------------------------


def hmac_sha1(key: bytes, message: bytes) -> bytes:
    """The raw HMAC-SHA1 digest of ``message`` under ``key``."""
    return hmac.new(key, message, hashlib.sha1).digest()


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    """The raw HMAC-SHA256 digest of ``message`` under ``key``."""
    return hmac.new(key, message, hashlib.sha256).digest()


def constant_time_equals(a: str | bytes, b: str | bytes) -> bool:
    """Whether ``a == b``, in time that does not depend on where they differ.

    ``str`` values are compared as UTF-8 (``hmac.compare_digest`` refuses non-ASCII
    ``str``, and a header can hold anything).
    """
    a_bytes = a.encode("utf-8", "surrogatepass") if isinstance(a, str) else a
    b_bytes = b.encode("utf-8", "surrogatepass") if isinstance(b, str) else b
    return hmac.compare_digest(a_bytes, b_bytes)


def b64decode_strict(value: str | bytes) -> bytes | None:
    """Standard base64 (with or without padding) → bytes, or ``None`` if it is not base64.

    Surrounding whitespace is ignored; any other character outside the alphabet makes
    the value invalid (``base64.b64decode`` would otherwise skip it silently).
    """
    try:
        text = value if isinstance(value, bytes) else value.encode("ascii")
        text = text.strip().rstrip(b"=")
        if len(text) % 4 == 1:
            return None
        return base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except (ValueError, binascii.Error):
        return None


# --- timestamps ---------------------------------------------------------------------------


def parse_unix_timestamp(value: str | None, *, what: str) -> float:
    """A provider's Unix-seconds timestamp (``"1700000000"``, ``"1700000000.5"``).

    Raises ``InvalidSignature`` naming ``what`` (e.g. ``"telnyx-timestamp header"``) when
    it is missing, not a finite number, or absurdly long.
    """
    if value is None or not value.strip():
        raise InvalidSignature(f"missing {what}")
    text = value.strip()
    if len(text) > 32:
        raise InvalidSignature(f"{what} is not a Unix timestamp")
    try:
        ts = float(text)
    except ValueError:
        raise InvalidSignature(f"{what} is not a Unix timestamp: {text!r}") from None
    if not math.isfinite(ts):
        raise InvalidSignature(f"{what} is not a Unix timestamp: {text!r}")
    return ts


def check_timestamp(
    ts: float,
    now: float,
    tolerance_s: float,
    *,
    future_tolerance_s: float | None = None,
    what: str = "timestamp",
) -> None:
    """Refuse a signed timestamp older than ``tolerance_s`` or newer than
    ``future_tolerance_s`` (default: the same) relative to ``now``.

    Raises ``InvalidSignature`` saying how far off it is, so that a clock problem on
    either side is easy to spot in the logs.
    """
    ahead = tolerance_s if future_tolerance_s is None else future_tolerance_s
    age = now - ts
    if age > tolerance_s:
        raise InvalidSignature(
            f"stale {what}: {age:.0f} s old, more than the {tolerance_s:.0f} s tolerance"
        )
    if -age > ahead:
        raise InvalidSignature(
            f"{what} is {-age:.0f} s in the future, more than the {ahead:.0f} s tolerance"
        )


# --- ed25519 (Telnyx) ---------------------------------------------------------------------


def load_ed25519_public_key(key: str | bytes) -> Ed25519PublicKey:
    """A base64 (``str``) or raw 32-byte (``bytes``) ed25519 public key.

    Raises ``ValueError`` when it is not one; callers turn that into a ``ConfigError``
    naming the setting.
    """
    raw = b64decode_strict(key) if isinstance(key, str) else key
    if raw is None or len(raw) != 32:
        raise ValueError("an ed25519 public key is 32 bytes, written in base64")
    return Ed25519PublicKey.from_public_bytes(raw)


def ed25519_verify(public_key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is a valid ed25519 signature of ``message``."""
    if len(signature) != 64:
        return False
    try:
        public_key.verify(signature, message)
    except _CryptoInvalidSignature:
        return False
    return True


# --- RSA PKCS#1 v1.5 (Amazon SNS) ---------------------------------------------------------


def rsa_public_key_from_pem(cert_pem: bytes) -> RSAPublicKey | None:
    """The RSA public key of a PEM X.509 certificate, or ``None`` if it is not one."""
    try:
        key = load_pem_x509_certificate(cert_pem).public_key()
    except ValueError:
        return None
    return key if isinstance(key, RSAPublicKey) else None


def rsa_pkcs1v15_verify(
    public_key: RSAPublicKey, signature: bytes, message: bytes, hash_name: HashName
) -> bool:
    """Whether ``signature`` is a PKCS#1 v1.5 signature of ``message`` with SHA-1 or SHA-256
    (SNS ``SignatureVersion`` 1 and 2)."""
    # SHA-1 is what SNS SignatureVersion 1 uses; the sender chooses, not us.
    algorithm: hashes.HashAlgorithm = (
        hashes.SHA1() if hash_name == "sha1" else hashes.SHA256()  # noqa: S303
    )
    try:
        public_key.verify(signature, message, padding.PKCS1v15(), algorithm)
    except (_CryptoInvalidSignature, ValueError):
        return False
    return True


# --- Standard Webhooks (forwarder signing; generic provider) ------------------------------

_WHSEC_PREFIX = "whsec_"


def standard_webhooks_secret(secret: str) -> bytes:
    """The key bytes of a Standard Webhooks secret (``whsec_`` + base64).

    Raises ``ValueError`` for an empty or non-base64 secret.
    """
    text = secret.removeprefix(_WHSEC_PREFIX)
    key = b64decode_strict(text)
    if not key:
        raise ValueError("a Standard Webhooks secret is 'whsec_' followed by base64 bytes")
    return key


def _standard_webhooks_digest(key: bytes, msg_id: str, ts: int, body: bytes) -> bytes:
    return hmac_sha256(key, f"{msg_id}.{ts}.".encode() + body)


def standard_webhooks_sign(secret: str | bytes, msg_id: str, ts: int, body: bytes) -> str:
    """The ``webhook-signature`` value ``v1,<base64 HMAC-SHA256(key, "id.ts.body")>``.

    ``secret`` is the ``whsec_…`` string or its decoded key bytes; ``ts`` is Unix seconds
    (the ``webhook-timestamp`` header sent alongside).
    """
    key = standard_webhooks_secret(secret) if isinstance(secret, str) else secret
    digest = _standard_webhooks_digest(key, msg_id, ts, body)
    return "v1," + base64.b64encode(digest).decode("ascii")


def standard_webhooks_verify(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance_s: float = 300.0,
) -> str:
    """Verify ``webhook-id``/``webhook-timestamp``/``webhook-signature`` (lowercase names)
    over ``body``; answer the ``webhook-id``.

    The signature header may hold several space-separated ``v1,<base64>`` entries (key
    rotation); one match is enough, other versions are ignored. Raises
    ``InvalidSignature`` saying what is wrong.
    """
    key = standard_webhooks_secret(secret) if isinstance(secret, str) else secret
    msg_id = headers.get("webhook-id")
    raw_sig = headers.get("webhook-signature")
    if not msg_id:
        raise InvalidSignature("missing webhook-id header")
    if not raw_sig:
        raise InvalidSignature("missing webhook-signature header")
    ts = parse_unix_timestamp(headers.get("webhook-timestamp"), what="webhook-timestamp header")
    check_timestamp(ts, now, tolerance_s, what="webhook-timestamp")
    if ts != int(ts):
        raise InvalidSignature("webhook-timestamp must be whole seconds")
    expected = _standard_webhooks_digest(key, msg_id, int(ts), body)
    if any_signature_matches(expected, _v1_signatures(raw_sig)):
        return msg_id
    raise InvalidSignature("webhook-signature does not match the body (no valid v1 signature)")


def _v1_signatures(header: str) -> list[bytes]:
    found: list[bytes] = []
    for entry in header.split():
        version, sep, value = entry.partition(",")
        if sep and version == "v1":
            decoded = b64decode_strict(value)
            if decoded is not None:
                found.append(decoded)
    return found


def any_signature_matches(expected: bytes, candidates: Iterable[bytes]) -> bool:
    """Whether any candidate equals ``expected``; every candidate is compared in constant
    time (no early exit on the first match, so the position leaks nothing either)."""
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected, candidate)
    return matched


# --- replay cache -------------------------------------------------------------------------


class ReplayCache:
    """A bounded, TTL'd set of strings: Mailgun tokens, Plivo nonces, SNS MessageIds,
    Telnyx signatures, Vonage nonces/JWT ids.

    ``seen(key, now)`` marks ``key`` and answers whether it was already marked (and not
    expired). At most ``max_size`` keys are kept; past that the oldest insertions go
    first, so a flood of fresh keys can evict old ones (the timestamp window still
    refuses those once stale). Per process and not thread-safe: one event loop uses it.
    Several replicas each keep their own, so the store's event-id dedupe remains the
    cross-replica guard.
    """

    __slots__ = ("_entries", "max_size", "ttl_s")

    def __init__(self, ttl_s: float, max_size: int = 100_000) -> None:
        if ttl_s <= 0 or max_size <= 0:
            raise ValueError("ttl_s and max_size must be positive")
        self.ttl_s = ttl_s
        self.max_size = max_size
        self._entries: OrderedDict[str, float] = OrderedDict()  # key -> expiry

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def seen(self, key: str, now: float) -> bool:
        """Mark ``key``; ``True`` if it was already marked within the TTL."""
        self._purge(now)
        expiry = self._entries.get(key)
        if expiry is not None and expiry > now:
            return True
        if expiry is not None:
            del self._entries[key]
        self._entries[key] = now + self.ttl_s
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)
        return False

    def forget(self, key: str) -> None:
        """Unmark ``key`` (the event was not handled, so the provider's retry must pass)."""
        self._entries.pop(key, None)

    def _purge(self, now: float) -> None:
        # Insertion order is expiry order while the TTL is fixed and the clock moves
        # forward; a clock step backwards only delays purging, never loses a mark early.
        entries = self._entries
        while entries:
            key, expiry = next(iter(entries.items()))
            if expiry > now:
                break
            del entries[key]
