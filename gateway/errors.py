"""One exception tree. Each class knows its HTTP status and problem type; the app turns
any ``GatewayError`` into an RFC 9457 ``application/problem+json`` answer in one place
(``gateway.http.problems``). Library errors are translated at the boundary into these.
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Base of every error SenderGate raises on purpose."""

    status: int = 500
    title: str = "Internal error"
    type_slug: str = "internal"

    def __init__(self, detail: str, **extensions: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extensions = extensions

    def problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"https://sendergate.dev/problems/{self.type_slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        body.update(self.extensions)
        return body


class ConfigError(GatewayError):
    """A bad config.toml. ``key`` names the offending key (dotted path)."""

    title = "Invalid configuration"
    type_slug = "config"

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"{key}: {detail}", key=key)
        self.key = key


class BadRequest(GatewayError):
    status = 400
    title = "Bad request"
    type_slug = "bad-request"


class Unauthorized(GatewayError):
    status = 401
    title = "Unauthorized"
    type_slug = "unauthorized"


class Forbidden(GatewayError):
    status = 403
    title = "Forbidden"
    type_slug = "forbidden"


class NotFound(GatewayError):
    status = 404
    title = "Not found"
    type_slug = "not-found"


class MethodNotAllowed(GatewayError):
    status = 405
    title = "Method not allowed"
    type_slug = "method-not-allowed"


class Conflict(GatewayError):
    status = 409
    title = "Conflict"
    type_slug = "conflict"


class DuplicateRule(Conflict):
    """A non-deleted rule with the same (match_type, match_target) exists in the scope."""

    title = "Duplicate rule"
    type_slug = "duplicate-rule"

    def __init__(self, existing_rule_id: int) -> None:
        super().__init__(
            "a rule with this match_type and match_target already exists in this scope",
            existing_rule_id=existing_rule_id,
        )
        self.existing_rule_id = existing_rule_id


class RequestTimeout(GatewayError):
    status = 408
    title = "Request timeout"
    type_slug = "request-timeout"


class PayloadTooLarge(GatewayError):
    status = 413
    title = "Payload too large"
    type_slug = "payload-too-large"


class UnsupportedMediaType(GatewayError):
    status = 415
    title = "Unsupported media type"
    type_slug = "unsupported-media-type"


class Unprocessable(GatewayError):
    """The request is well formed but a value is not acceptable (e.g. a target that
    does not normalise). ``errors`` lists ``{"field": ..., "message": ...}``."""

    status = 422
    title = "Unprocessable content"
    type_slug = "validation"


class InvalidSignature(Unauthorized):
    title = "Invalid signature"
    type_slug = "invalid-signature"


class StoreUnavailable(GatewayError):
    """The store cannot be reached. Admin writes answer 503; webhooks keep deciding."""

    status = 503
    title = "Store unavailable"
    type_slug = "store-unavailable"


class UpstreamError(GatewayError):
    """The application behind the gateway failed; the provider should retry."""

    status = 502
    title = "Bad gateway"
    type_slug = "forward-failed"
