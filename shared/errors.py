"""The domain's exceptions. Each maps to one HTTP status in the gateway."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from .echo import echo_errors

__all__ = [
    "BadCursor",
    "Conflict",
    "Fenced",
    "InvalidInput",
    "NotFound",
    "RunFinished",
    "TidingsError",
]


class TidingsError(Exception):
    """Base of every error Tidings raises on purpose."""

    code = "error"
    status = 500
    headers: Mapping[str, str] | None = None  # sent with the error response


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
        # The values echoed back are cut short and always encodable (`shared.echo`).
        self.errors = echo_errors(errors or ())

    @classmethod
    def from_validation(cls, message: str, exc: ValidationError) -> InvalidInput:
        """pydantic's field errors as `details`, without documentation links."""
        return cls(message, errors=exc.errors(include_url=False))


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
