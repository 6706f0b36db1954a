"""JSON-compatible values, the only data that crosses node boundaries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

JsonValue: TypeAlias = "bool | int | float | str | list[JsonValue] | dict[str, JsonValue] | None"
JsonObject: TypeAlias = "dict[str, JsonValue]"


def freeze_object(value: Mapping[str, JsonValue] | None) -> JsonObject:
    """A defensive copy, so a caller's later edits never leak into domain objects."""
    return {} if value is None else dict(value)
