"""JSON-compatible values, the only data that crosses node boundaries."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from typing import NoReturn, TypeAlias, cast

JsonValue: TypeAlias = "bool | int | float | str | list[JsonValue] | dict[str, JsonValue] | None"
JsonObject: TypeAlias = "dict[str, JsonValue]"


def freeze_object(value: Mapping[str, JsonValue] | None) -> JsonObject:
    """A defensive copy, so a caller's later edits never leak into domain objects."""
    return {} if value is None else dict(value)


MAX_DEPTH = 24
"""How deeply the data a run carries (trigger data, node outputs) may nest. The services
pass it inside protobuf messages, whose parsers stop at 100 levels of messages; each level
of JSON objects costs three, and a node's input wraps its upstream outputs in two more."""


def problem(value: object, max_depth: int = MAX_DEPTH) -> str:
    """Why ``value`` cannot travel as a run's data ("" when it can): a number JSON cannot
    represent (NaN, an infinity, an integer beyond a float's range), nesting deeper than
    ``max_depth`` levels of objects and arrays, a key that is not a string, a value of a
    type JSON does not have."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list | tuple):
            if level >= max_depth:
                return f"it is nested deeper than {max_depth} levels of objects and arrays"
            if isinstance(item, dict):
                for key, member in item.items():
                    if not isinstance(key, str):
                        return f"an object key is a {type(key).__name__}, not a string"
                    stack.append((member, level + 1))
            else:
                stack.extend((member, level + 1) for member in item)
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"it contains {item!r}, which is not a JSON number"
        elif isinstance(item, bool) or item is None or isinstance(item, str):
            continue
        elif isinstance(item, int):
            if abs(item) > sys.float_info.max:
                return "it contains an integer too large for a 64-bit float"
        else:
            return f"it contains a {type(item).__name__}, which JSON does not have"
    return ""


def _not_a_number(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def loads(text: str | bytes) -> JsonValue:
    """Parse JSON from outside (webhook bodies, events, HTTP responses) strictly.

    Python's ``json`` also accepts ``NaN``, ``Infinity`` and numbers that overflow a float
    (``1e999``, read as infinity); none of them is JSON, and protobuf's ``Value``, which
    carries data between the services, cannot represent them as JSON either, so a run
    would fail far from where the value came in. They raise ``ValueError`` here, as does
    data nested deeper than :data:`MAX_DEPTH` and anything that is not JSON
    (``json.JSONDecodeError`` and ``UnicodeDecodeError`` are ``ValueError`` s)."""
    try:
        value = json.loads(text, parse_constant=_not_a_number)
    except RecursionError:
        raise ValueError(f"it is nested deeper than {MAX_DEPTH} levels") from None
    found = problem(value)
    if found:
        raise ValueError(found)
    return cast(JsonValue, value)
