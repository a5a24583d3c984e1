"""Errors raised by the client.

Every error the server reports has the shape
``{"error": {"code": ..., "message": ..., "field": ...}}`` and an HTTP status that says its
kind; :func:`error_from_response` turns it into the matching subclass of
:class:`NexaForgeError`, keeping the status, the code, the message and the field.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

__all__ = [
    "NexaForgeError",
    "ValidationError",
    "AuthenticationError",
    "NotFoundError",
    "ConflictError",
    "ServerUnavailableError",
    "WaitTimeoutError",
    "IntegrityError",
    "error_from_response",
]


class NexaForgeError(Exception):
    """Base of every error this package raises.

    Attributes:
        status: the HTTP status of the answer, or ``None`` when there was no answer.
        code: the server's error code (``validation_error``, ``not_found``, ...), or ``None``.
        message: what went wrong, for people.
        field: the request field at fault (e.g. ``params.num_samples``), or ``None``.
        body: the decoded error body, when the server sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: Optional[int] = None,
        code: Optional[str] = None,
        field: Optional[str] = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.field = field
        self.body = body

    def __str__(self) -> str:
        if self.status is None:
            return self.message
        kind = f"{self.status} {self.code}" if self.code else str(self.status)
        return f"{self.message} (HTTP {kind})"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(message={self.message!r}, status={self.status!r}, "
            f"code={self.code!r}, field={self.field!r})"
        )


class ValidationError(NexaForgeError):
    """The request was malformed (400) or held an invalid value (422); ``field`` names it."""


class AuthenticationError(NexaForgeError):
    """A token is needed and was missing or unknown (401), or it may only read (403)."""


class NotFoundError(NexaForgeError):
    """No such job, worker or path (404)."""


class ConflictError(NexaForgeError):
    """An illegal transition, such as cancelling a finished job, or an idempotency key
    reused with another spec (409)."""


class ServerUnavailableError(NexaForgeError):
    """The server could not be reached, did not answer in time, or its store failed (503)."""


class WaitTimeoutError(NexaForgeError, TimeoutError):
    """:meth:`NexaForgeClient.wait` gave up before the job finished.

    ``job`` is the job as last seen; the job itself goes on running.
    """

    def __init__(self, message: str, *, job_id: str, job: Any = None) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.job = job


class IntegrityError(NexaForgeError):
    """A downloaded artifact's content does not have the SHA-256 that names it (code
    ``digest_mismatch``). Nothing is left at the destination.

    ``expected`` is the digest asked for, ``actual`` the digest of what arrived.
    """

    def __init__(self, message: str, *, expected: str, actual: str) -> None:
        super().__init__(message, code="digest_mismatch")
        self.expected = expected
        self.actual = actual


_BY_STATUS = {
    400: ValidationError,
    422: ValidationError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    503: ServerUnavailableError,
}


def error_from_response(status: int, body: Any, fallback_text: str = "") -> NexaForgeError:
    """The error for an answer with HTTP ``status`` and decoded JSON ``body`` (or ``None``).

    A body without the documented shape (a proxy's error page, say) still gives an error of
    the right class, with its text as the message.
    """
    code: Optional[str] = None
    field: Optional[str] = None
    message = ""
    err = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(err, Mapping):
        code = _str_or_none(err.get("code"))
        field = _str_or_none(err.get("field"))
        message = _str_or_none(err.get("message")) or ""
    elif isinstance(err, str):
        message = err
    if not message:
        text = fallback_text.strip()
        message = text[:500] if text else f"the server answered HTTP {status}"
    cls = _BY_STATUS.get(status, NexaForgeError)
    return cls(message, status=status, code=code, field=field, body=body)


def _str_or_none(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None
