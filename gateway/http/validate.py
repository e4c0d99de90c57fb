"""Small declarative validation for admin JSON bodies and query strings.

One ``Field`` table per request shape drives both validation and the OpenAPI schema
(``gateway.http.openapi``), so the two cannot drift apart. Every failure becomes a 4xx
problem that names the field: 400 for bodies that are not JSON objects, 413 past the size
limit, 415 for a non-JSON content type, 422 for unknown fields, wrong types, unknown enum
values and values that do not normalise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from starlette.requests import Request

from gateway.errors import BadRequest, PayloadTooLarge, Unprocessable, UnsupportedMediaType

Kind = Literal["str", "bool", "int", "datetime", "url", "rate"]

RATE_RE = re.compile(r"^\s*([1-9][0-9]{0,8})\s*/\s*(second|minute|hour|day)\s*$")


@dataclass(frozen=True, slots=True)
class Field:
    kind: Kind
    required: bool = False
    choices: tuple[str, ...] | None = None
    nullable: bool = False
    minimum: int | None = None
    maximum: int | None = None
    max_length: int = 2048
    description: str = ""


def _fail(field: str, message: str) -> Unprocessable:
    return Unprocessable(f"{field}: {message}", errors=[{"field": field, "message": message}])


def parse_datetime(value: str) -> datetime:
    """RFC 3339 with an explicit offset (``Z`` or ``+hh:mm``), returned in UTC."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError("needs a UTC offset, e.g. 2026-12-31T23:59:00Z")
    return parsed.astimezone(UTC)


def _check_url(value: str) -> str:
    if not re.match(r"^https?://[^\s/?#]+[^\s]*$", value):
        raise ValueError("must be an http:// or https:// URL")
    return value


def _coerce(name: str, spec: Field, value: Any) -> Any:
    if value is None:
        if spec.nullable:
            return None
        raise _fail(name, "must not be null")
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise _fail(name, "must be true or false")
        return value
    if spec.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(name, "must be an integer")
        if spec.minimum is not None and value < spec.minimum:
            raise _fail(name, f"must be at least {spec.minimum}")
        if spec.maximum is not None and value > spec.maximum:
            raise _fail(name, f"must be at most {spec.maximum}")
        return value
    if not isinstance(value, str):
        raise _fail(name, "must be a string")
    if len(value) > spec.max_length:
        raise _fail(name, f"must be at most {spec.max_length} characters")
    if "\x00" in value:
        raise _fail(name, "must not contain NUL characters")
    if spec.choices is not None and value not in spec.choices:
        raise _fail(name, f"must be one of {', '.join(spec.choices)} (got {value!r})")
    try:
        if spec.kind == "datetime":
            return parse_datetime(value)
        if spec.kind == "url":
            return _check_url(value)
        if spec.kind == "rate":
            if not RATE_RE.match(value):
                raise ValueError("must look like N/second, N/minute, N/hour or N/day")
            return value.replace(" ", "")
    except ValueError as exc:
        raise _fail(name, str(exc) or "invalid value") from None
    return value


def validate_body(obj: Any, spec: Mapping[str, Field], *, where: str = "") -> dict[str, Any]:
    """Check a decoded JSON object against ``spec``; returns only the fields present."""
    if not isinstance(obj, dict):
        raise BadRequest(f"{where or 'body'} must be a JSON object")
    unknown = sorted(k for k in obj if k not in spec)
    if unknown:
        allowed = ", ".join(spec)
        raise _fail(where + unknown[0], f"unknown field (allowed: {allowed})")
    out: dict[str, Any] = {}
    for name, field in spec.items():
        if name not in obj:
            if field.required:
                raise _fail(where + name, "is required")
            continue
        out[name] = _coerce(where + name, field, obj[name])
    return out


def validate_query(params: Mapping[str, str], spec: Mapping[str, Field]) -> dict[str, Any]:
    """Query strings carry text: convert ints and booleans, then validate like a body."""
    unknown = sorted(k for k in params if k not in spec)
    if unknown:
        raise _fail(unknown[0], f"unknown query parameter (allowed: {', '.join(spec)})")
    out: dict[str, Any] = {}
    for name, field in spec.items():
        raw = params.get(name)
        if raw is None:
            if field.required:
                raise _fail(name, "is required")
            continue
        value: Any = raw
        if field.kind == "int":
            try:
                value = int(raw)
            except ValueError:
                raise _fail(name, "must be an integer") from None
        elif field.kind == "bool":
            lowered = raw.lower()
            if lowered not in ("true", "false", "1", "0"):
                raise _fail(name, "must be true or false")
            value = lowered in ("true", "1")
        out[name] = _coerce(name, field, value)
    return out


async def read_json(request: Request, max_bytes: int) -> Any:
    """Read a size-capped JSON body: 415 for another media type, 413 past the cap,
    400 for bytes that are not JSON."""
    ctype = request.headers.get("content-type", "")
    media = ctype.split(";", 1)[0].strip().lower()
    if media and media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType(f"expected application/json, got {media!r}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"body is larger than the {max_bytes}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"body is larger than the {max_bytes}-byte limit")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise BadRequest("body is empty; expected a JSON object")
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    return value


def _refuse_constant(name: str) -> float:
    # NaN and Infinity are not JSON; Python's json accepts them unless told not to.
    raise ValueError(f"{name} is not valid JSON")
