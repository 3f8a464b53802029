"""The domain's exceptions. Each maps to one HTTP status in the gateway."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from .echo import echo_errors

__all__ = [
    "STORAGE_FULL_RETRY_AFTER_S",
    "BadCursor",
    "Conflict",
    "Fenced",
    "InvalidInput",
    "NotFound",
    "PayloadTooLarge",
    "RunFinished",
    "StorageFull",
    "TidingsError",
]

# How long a client is told to wait when Redis is full: memory comes back as finished runs
# expire or are pruned, not within a second.
STORAGE_FULL_RETRY_AFTER_S = 30


class TidingsError(Exception):
    """Base of every error Tidings raises on purpose."""

    code = "error"
    status = 500
    headers: Mapping[str, str] | None = None  # sent with the error response
    details: Any = None  # the body's `details` (InvalidInput: its field errors)


class NotFound(TidingsError):
    code = "not_found"
    status = 404


class BadCursor(TidingsError):
    """A `Last-Event-ID` / `?after=` value that is not a stream ID."""

    code = "bad_cursor"
    status = 400


class InvalidInput(TidingsError):
    code = "invalid_input"
    status = 422

    def __init__(self, message: str, errors: Iterable[Mapping[str, Any]] | None = None) -> None:
        super().__init__(message)
        # The values echoed back are cut short and always encodable (`tidings.echo`).
        self.errors = echo_errors(errors or ())

    @classmethod
    def from_validation(cls, message: str, exc: ValidationError) -> InvalidInput:
        """pydantic's field errors as `details`, without documentation links."""
        return cls(message, errors=exc.errors(include_url=False))


class PayloadTooLarge(TidingsError):
    """A run input, signal payload or event over its configured size."""

    code = "payload_too_large"
    status = 413


class Conflict(TidingsError):
    """A transition the run's state does not allow (resume a running run, signal a finished one)."""

    code = "conflict"
    status = 409


class Fenced(TidingsError):
    """The caller's attempt number is stale: another worker owns the run now."""

    code = "fenced"
    status = 409


class RunFinished(Conflict):
    """The run already published its terminal event; its log is closed."""

    code = "run_finished"


class StorageFull(TidingsError):
    """Redis refused a write: it is at its memory cap (`maxmemory` with `noeviction`)."""

    code = "storage_full"
    status = 503
    headers = {"Retry-After": str(STORAGE_FULL_RETRY_AFTER_S)}
