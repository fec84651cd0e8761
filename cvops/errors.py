"""One exception hierarchy for all of cvops.

Every error a user can cause is a :class:`CvopsError` subclass carrying an HTTP status and a stable
machine-readable ``code``.  The gateway maps them once, in middleware, to
``{"error": {"code", "message", "details"}}``.  Pure cores (``ml``, events, GA, bench) raise these
too; they import nothing but this module.
"""

from __future__ import annotations

from collections.abc import Mapping
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


# ---------------------------------------------------------------- the one map between codes and classes

# every class, base before subclass: the first class of a status is that status's class
_CLASSES: tuple[type[CvopsError], ...] = (
    CvopsError,
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    ConcurrencyError,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
    TooManyRequests,
    Unavailable,
    GatewayTimeout,
    EngineUnavailable,
    StartupFailed,
)
BY_CODE: Mapping[str, type[CvopsError]] = {cls.code: cls for cls in _CLASSES}
BY_STATUS: Mapping[int, type[CvopsError]] = {cls.status: cls for cls in reversed(_CLASSES)}


def class_for(code: str | None, status: int | None = None) -> type[CvopsError]:
    """The class of an error ``code``; an unknown code falls back to the class of the HTTP ``status``
    (codes the server invents without a class of their own, e.g. ``model_rejected``, 422), then to
    :class:`CvopsError`."""
    found = BY_CODE.get(code or "")
    if found is None and status is not None:
        found = BY_STATUS.get(status)
    return found or CvopsError


def code_for_status(status: int) -> str:
    """The ``code`` of an answer that aiohttp itself raised (a 4xx ``HTTPException``): the code of the
    status's class; ``method_not_allowed`` for 405, which has none; ``http_error`` for any other."""
    if status == 405:
        return "method_not_allowed"
    cls = BY_STATUS.get(status)
    return cls.code if cls is not None and status < 500 else "http_error"


def from_dict(payload: Mapping[str, Any], status: int | None = None) -> CvopsError:
    """Rebuild the exception that an error dict describes: ``{"code", "message", "details"}`` or
    :meth:`CvopsError.to_dict`'s ``{"error": {...}}``.  ``status`` (or the dict's own ``"status"``)
    picks the class when the code is unknown; a :class:`TooManyRequests` gets its ``retry_after`` back
    from ``details``."""
    inner = payload.get("error")
    err: Mapping[str, Any] = inner if isinstance(inner, Mapping) else payload
    code = str(err.get("code") or "")
    raw_status = err.get("status", status)
    cls = class_for(code, raw_status if isinstance(raw_status, int) else status)
    message = str(err.get("message") or "") or code or "error"
    raw_details = err.get("details")
    details = dict(raw_details) if isinstance(raw_details, Mapping) else {}
    if issubclass(cls, TooManyRequests):
        wait = details.pop("retry_after", None)
        try:
            seconds = float(wait) if wait else 1.0
        except (TypeError, ValueError):
            seconds = 1.0
        return cls(message, details, retry_after=seconds)
    return cls(message, details)
