"""JSON in and out. pydantic-core's encoder is Rust, compact, and UTF-8 without escapes."""

from __future__ import annotations

import json
from typing import Any

from pydantic_core import to_json

__all__ = ["dumps", "dumps_str", "loads"]


def dumps(obj: Any) -> bytes:
    return to_json(obj)


def dumps_str(obj: Any) -> str:
    return to_json(obj).decode()


def loads(raw: str | bytes | bytearray) -> Any:
    return json.loads(raw)
