"""Query strings as the seeds' stream routes take their input: text, typed by the schema.

`GET /monty/stream?min_sleep_s=2` carries only text; the workflow's input schema (from the
catalog) says which of its top-level properties are numbers or booleans.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["coerce_query"]


def _types(prop: Mapping[str, Any]) -> set[str]:
    found = prop.get("type")
    kinds = set(found) if isinstance(found, list) else {found} if isinstance(found, str) else set()
    for alt in prop.get("anyOf", ()) or ():
        if isinstance(alt, Mapping):
            kinds |= _types(alt)
    return kinds


def _from_text(text: str, kinds: set[str]) -> Any:
    if "integer" in kinds:
        try:
            return int(text)
        except ValueError:
            pass
    if "number" in kinds:
        try:
            value = float(text)
            if value == value and value not in (float("inf"), float("-inf")):
                return value
        except ValueError:
            pass
    if "boolean" in kinds and text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def coerce_query(schema: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """Query-string values (always text) as the numbers or booleans the schema's top-level
    properties take: `?min_sleep_s=2` → 2. Text that does not parse stays text, for the schema
    to refuse. JSON bodies are never coerced: they carry their own types."""
    props = schema.get("properties") or {}
    out: dict[str, Any] = {}
    for key, value in params.items():
        prop = props.get(key)
        if isinstance(value, str) and isinstance(prop, Mapping):
            kinds = _types(prop)
            out[key] = value if "string" in kinds else _from_text(value, kinds)
        else:
            out[key] = value
    return out
