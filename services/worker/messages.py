"""How the engine words a step's and a task's events, and an error, as the seed's log shows them.

Its own module so the run's side (`run`, `steps`, `fanout`) and the task's side (`tasks`) share
the words without importing each other.
"""

from __future__ import annotations

__all__ = [
    "completed_message",
    "describe_error",
    "failed_message",
    "retrying_message",
    "started_message",
]


def describe_error(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def started_message(name: str) -> str:
    return f"Starting task: {name}"


def completed_message(name: str) -> str:
    return f"Completed: {name}"


def failed_message(name: str, error: str) -> str:
    return f"Task failed: {name} - {error}"


def retrying_message(name: str, next_try: int, tries: int, error: str) -> str:
    """`next_try` and `tries` count from 1: the first retry is try 2 of `retries + 1`."""
    return f"Retrying {name} (try {next_try} of {tries}): {error}"
