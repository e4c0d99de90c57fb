"""API-key authentication and the admin/member roles (SPEC §6).

Keys are configured by their SHA-256 hex digest, so config.toml never holds a usable
secret. A member key is limited to the targets listed on it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.requests import Request

from gateway.errors import Forbidden, Unauthorized
from gateway.settings import ApiKey


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: str
    targets: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def require_admin(self, what: str) -> None:
        if not self.is_admin:
            raise Forbidden(f"{what} needs an admin key; key {self.name!r} is a member key")

    def require_target(self, target_id: str) -> None:
        if not self.is_admin and target_id not in self.targets:
            raise Forbidden(f"key {self.name!r} may not access {target_id}")


class KeyRing:
    """Looks a presented key up by its digest. Digests are compared in constant time
    against every configured key so that timing says nothing about which prefix matched."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._keys = [(bytes.fromhex(k.sha256), k) for k in keys]

    def authenticate(self, request: Request) -> Principal:
        presented = _presented_key(request)
        if presented is None:
            raise Unauthorized(
                "missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
            )
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        found: ApiKey | None = None
        for want, key in self._keys:
            if hmac.compare_digest(want, digest):
                found = key
        if found is None:
            raise Unauthorized("invalid API key")
        return Principal(found.name, found.role, frozenset(found.targets))


def _presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = request.headers.get("x-api-key")
    if key and key.strip():
        return key.strip()
    return None
