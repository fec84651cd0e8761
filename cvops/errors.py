"""One exception hierarchy for all of cvops.

Every error a user can cause is a :class:`CvopsError` subclass carrying an HTTP status and a stable
machine-readable ``code``.  The gateway maps them once, in middleware, to
``{"error": {"code", "message", "details"}}``.  Pure cores (``ml``, events, GA, bench) raise these
too; they import nothing but this module.
"""

from __future__ import annotations

from typing import Any, ClassVar


class CvopsError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}

    def __reduce__(self) -> tuple[Any, ...]:  # survive pickling across Ray
        return (_rebuild, (type(self), self.message, self.details))


def _rebuild(cls: type[CvopsError], message: str, details: dict[str, Any]) -> CvopsError:
    err = cls.__new__(cls)
    CvopsError.__init__(err, message, details)
    return err


class BadRequest(CvopsError):
    status = 400
    code = "bad_request"


class Unauthorized(CvopsError):
    status = 401
    code = "unauthorized"


class Forbidden(CvopsError):
    status = 403
    code = "forbidden"


class NotFound(CvopsError):
    status = 404
    code = "not_found"


class Conflict(CvopsError):
    status = 409
    code = "conflict"


class ConcurrencyError(Conflict):
    """An append stated an expected stream version that is not the current one."""

    code = "version_conflict"


class PayloadTooLarge(CvopsError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(CvopsError):
    status = 415
    code = "unsupported_media_type"


class ValidationFailed(CvopsError):
    """Well-formed input that is semantically wrong (bad field, bad model, bad dataset)."""

    status = 422
    code = "validation_failed"


class TooManyRequests(CvopsError):
    status = 429
    code = "too_many_requests"

    def __init__(self, message: str, details: dict[str, Any] | None = None, retry_after: float = 1.0) -> None:
        super().__init__(message, {**(details or {}), "retry_after": retry_after})
        self.retry_after = retry_after


class Unavailable(CvopsError):
    status = 503
    code = "unavailable"


class GatewayTimeout(CvopsError):
    status = 504
    code = "timeout"


class EngineUnavailable(CvopsError):
    """An inference engine cannot run on this machine; ``message`` says why."""

    status = 422
    code = "engine_unavailable"


class StartupFailed(CvopsError):
    """``cvops serve`` cannot start; ``message`` is the one line it prints: the cause and the setting to
    change (never an HTTP answer)."""

    code = "startup_failed"
