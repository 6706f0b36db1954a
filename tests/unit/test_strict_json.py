"""JSON from outside is parsed strictly: what Python's json accepts beyond JSON (NaN,
Infinity, numbers a float cannot hold) is refused where it comes in, not deep inside a run
(a protobuf Value cannot carry it as JSON between the services)."""

from __future__ import annotations

import json
import math

import pytest
from flowyard import codec
from flowyard.domain.json import MAX_DEPTH, JsonValue, loads, problem
from flowyard.errors import DecodeError
from flowyard_executor.executor import OUTPUT_NOT_JSON, deliverable
from flowyard_executor.nodes import NodeOutcome
from google.protobuf import struct_pb2


@pytest.mark.parametrize(
    "text",
    ["NaN", "[Infinity]", '{"a": -Infinity}', "1e999", "-1e400", "1" * 400, "{not json", "\xff"],
)
def test_what_is_not_json_is_refused(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - json.JSONDecodeError is one too
        loads(text)


def test_json_is_read_as_usual() -> None:
    assert loads('{"a": [1, 2.5, -0.0, 1e308, true, null, "x"], "$where": {"a.b": 9}}') == {
        "a": [1, 2.5, -0.0, 1e308, True, None, "x"],
        "$where": {"a.b": 9},
    }
    assert loads(b"12345678901234567890") == 12345678901234567890
    assert math.isclose(loads("1E-400"), 0.0)  # type: ignore[arg-type]


def test_a_value_holding_a_number_json_cannot_represent_is_a_decode_error() -> None:
    value = struct_pb2.Value()
    value.struct_value.update({"x": float("nan")})
    with pytest.raises(DecodeError, match="not JSON"):
        codec.value_to_json(value)
    with pytest.raises(DecodeError, match="not JSON"):
        codec.struct_to_json(value.struct_value)
    assert codec.value_to_json(codec.json_to_value({"x": [1, "y"]})) == {"x": [1, "y"]}


def nested(levels: int) -> JsonValue:
    value: JsonValue = 1
    for index in range(levels):
        value = {"a": value} if index % 2 else [value]
    return value


def test_data_nested_deeper_than_the_services_can_pass_on_is_refused() -> None:
    assert problem(nested(MAX_DEPTH)) == ""
    assert "nested deeper than 24 levels" in problem(nested(MAX_DEPTH + 1))
    assert loads(json.dumps(nested(MAX_DEPTH))) == nested(MAX_DEPTH)
    with pytest.raises(ValueError, match="nested deeper"):
        loads(json.dumps(nested(MAX_DEPTH + 1)))
    with pytest.raises(ValueError, match="nested deeper"):
        loads("[" * 100_000)  # past the parser's own recursion limit
    too_deep = codec.json_to_value(nested(MAX_DEPTH + 1))
    with pytest.raises(DecodeError, match="nested deeper"):
        codec.value_to_run_data(too_deep)
    assert codec.value_to_run_data(codec.json_to_value(nested(MAX_DEPTH))) == nested(MAX_DEPTH)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (float("nan"), "nan"),
        ({"a": [1, float("-inf")]}, "-inf"),
        (10**400, "too large"),
        ({1: "x"}, "key is a int"),
        ({"when": object()}, "object"),
    ],
)
def test_what_json_cannot_carry_is_named(value: object, says: str) -> None:
    assert says in problem(value)


def test_deeply_nested_data_survives_the_trip_through_the_services() -> None:
    """MAX_DEPTH leaves room for the wrapping on the way: an output of MAX_DEPTH levels in
    a node's input (under upstream.<node>) inside a dispatch envelope parses back."""
    envelope = codec.new_envelope("run-1")
    envelope.dispatch_task.node_id = "next"
    envelope.dispatch_task.input.CopyFrom(
        codec.json_to_value({"trigger": nested(MAX_DEPTH), "upstream": {"a": nested(MAX_DEPTH)}})
    )
    parsed = codec.decode_envelope(envelope.SerializeToString())
    assert codec.value_to_json(parsed.dispatch_task.input) == {
        "trigger": nested(MAX_DEPTH),
        "upstream": {"a": nested(MAX_DEPTH)},
    }


def test_the_executor_fails_a_task_whose_output_it_cannot_pass_on() -> None:
    fine = NodeOutcome(output={"a": [1, 2]}, warnings=("w",))
    assert deliverable(fine) is fine
    for output in (float("nan"), nested(MAX_DEPTH + 1)):
        failed = deliverable(NodeOutcome(output=output, warnings=("w",)))
        assert failed.error is not None
        assert failed.error.code == OUTPUT_NOT_JSON
        assert failed.output is None
        assert failed.warnings == ("w",)
