"""Domain errors with an HTTP status, and the one JSON shape they are rendered in."""

from __future__ import annotations

from typing import Any


class NanoNetError(Exception):
    """Base of every error a user can cause; carries a status, a code and a message."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 details: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details = details

    def to_body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}


class NotFound(NanoNetError):
    status = 404
    code = "not_found"


class Unauthorized(NanoNetError):
    status = 401
    code = "unauthorized"


class Conflict(NanoNetError):
    status = 409
    code = "conflict"


class QuotaExceeded(Conflict):
    """A count limit of the account or model (a setting) would be passed."""

    code = "quota_exceeded"


class InvalidInput(NanoNetError):
    status = 422
    code = "invalid_input"


class PayloadTooLarge(NanoNetError):
    status = 413
    code = "payload_too_large"


class Unavailable(NanoNetError):
    status = 503
    code = "unavailable"


class InsufficientStorage(NanoNetError):
    status = 507
    code = "insufficient_storage"


class RateLimited(NanoNetError):
    """Too many requests; `retry_after` seconds until the next one is allowed (Retry-After)."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)},
                         details={"retry_after": retry_after})


class Busy(Unavailable):
    """Every slot of a bounded resource stayed taken; retry after `retry_after` seconds."""

    code = "busy"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})
