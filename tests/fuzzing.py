"""Hypothesis strategies for hostile protobuf input, built from message descriptors.

:func:`messages` draws a message of any type from its descriptor (every field kind, nested
messages to a small depth, repeated fields, maps, open enums with unknown numbers,
``Struct``/``Value`` as JSON-like data, timestamps out of range); :func:`payloads` draws
what a hostile client sends: such a message serialised, the same bytes damaged (cut,
flipped, with junk appended), or plain random bytes. ``hints`` are strings (ids, names)
that string fields use now and then, so the input also reaches code past "not found".

Settings for fuzz tests: :data:`FUZZ` (reproducible: derandomized, no example database,
no deadline; each test bounds its own example count).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)

MAX_DEPTH = 3

# Strings that have broken parsers, queries and templates elsewhere.
NASTY_STRINGS = (
    "",
    " ",
    "\x00",
    "$where",
    "$gt",
    "a.b",
    "{{ trigger }}",
    "{{",
    "../../etc/passwd",
    "%s%s%n",
    "' OR 1=1 --",
    "\ud7ff\ue000\U0010ffff",
    "x" * 5000,
    "-1",
    "9" * 40,
    "2024-13-45T99:99:99Z",
    "*/1 * * * *",
    "NaN",
)

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def flowyard_modules() -> list[ModuleType]:
    """Every generated ``*_pb2`` module of the flowyard.v1 package (new ones included)."""
    package = importlib.import_module("flowyard.v1")
    return [
        importlib.import_module(f"flowyard.v1.{info.name}")
        for info in pkgutil.iter_modules(package.__path__)
        if info.name.endswith("_pb2")
    ]


def flowyard_files() -> list[FileDescriptor]:
    return [module.DESCRIPTOR for module in flowyard_modules()]


def _integers(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = [value for value in (0, 1, -1, lo, hi, 2**31 - 1, 2**53) if lo <= value <= hi]
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


def _strings(hints: Sequence[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=30),
        st.sampled_from(NASTY_STRINGS),
        *([st.sampled_from(list(hints))] if hints else []),
    )


def json_values(hints: Sequence[str] = ()) -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.floats(),  # NaN and the infinities too: not JSON, but a Value can carry them
        st.integers(-(2**53), 2**53),
        _strings(hints),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(_strings(hints), inner, max_size=4),
        ),
        max_leaves=12,
    )


def _scalar(field: FieldDescriptor, hints: Sequence[str]) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in _INT_RANGES:
        return _integers(*_INT_RANGES[kind])
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        width = 32 if kind == FieldDescriptor.TYPE_FLOAT else 64
        return st.floats(width=width)  # NaN and the infinities too
    if kind == FieldDescriptor.TYPE_STRING:
        return _strings(hints)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.TYPE_ENUM:
        known = [value.number for value in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-5, 1000))  # open enums
    raise AssertionError(f"no strategy for field type {kind} of {field.full_name}")


def _struct_value(hints: Sequence[str]) -> st.SearchStrategy[struct_pb2.Value]:
    def to_value(data: Any) -> struct_pb2.Value:
        value = struct_pb2.Value()
        value.struct_value.update({"v": data})
        return value.struct_value.fields["v"]

    return json_values(hints).map(to_value)


def messages(
    descriptor: Descriptor, hints: Sequence[str] = (), depth: int = 0
) -> st.SearchStrategy[Message]:
    """Messages of ``descriptor``'s type with fields drawn at random (any may be unset)."""
    cls = GetMessageClass(descriptor)
    if descriptor.full_name == "google.protobuf.Struct":
        return st.dictionaries(_strings(hints), json_values(hints), max_size=5).map(
            lambda data: _struct(cls, data)
        )
    if descriptor.full_name == "google.protobuf.Value":
        return _struct_value(hints)
    if descriptor.full_name == "google.protobuf.ListValue":
        return st.lists(json_values(hints), max_size=4).map(lambda items: _list(cls, items))
    fields = list(descriptor.fields)
    if depth >= MAX_DEPTH:
        fields = [field for field in fields if field.type != FieldDescriptor.TYPE_MESSAGE]
    if not fields:
        return st.just(cls())
    return st.fixed_dictionaries(
        {},
        optional={field.name: _field(field, hints, depth) for field in fields},
    ).map(lambda values: _build(cls, descriptor, values))


def _struct(cls: Any, data: dict[str, Any]) -> Message:
    message = cls()
    message.update(data)
    return message  # type: ignore[no-any-return]


def _list(cls: Any, items: list[Any]) -> Message:
    message = cls()
    message.extend(items)
    return message  # type: ignore[no-any-return]


def _field(field: FieldDescriptor, hints: Sequence[str], depth: int) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        entry = field.message_type
        if entry.GetOptions().map_entry:
            key = _scalar(entry.fields_by_name["key"], hints)
            value_field = entry.fields_by_name["value"]
            value = (
                messages(value_field.message_type, hints, depth + 1)
                if value_field.type == FieldDescriptor.TYPE_MESSAGE
                else _scalar(value_field, hints)
            )
            return st.dictionaries(key, value, max_size=3)
        single: st.SearchStrategy[Any] = messages(entry, hints, depth + 1)
    else:
        single = _scalar(field, hints)
    if field.is_repeated:
        return st.lists(single, max_size=3)
    return single


def _build(cls: Any, descriptor: Descriptor, values: dict[str, Any]) -> Message:
    message = cls()
    for name, value in values.items():
        field = descriptor.fields_by_name[name]
        target = getattr(message, name)
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if isinstance(item, Message):
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif field.is_repeated:
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                for item in value:
                    target.add().CopyFrom(item)
            else:
                target.extend(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message  # type: ignore[no-any-return]


def _damage(data: bytes, cut: int, flips: list[tuple[int, int]], junk: bytes) -> bytes:
    damaged = bytearray(data[: max(0, len(data) - cut)] if cut else data)
    for position, value in flips:
        if damaged:
            damaged[position % len(damaged)] = value
    return bytes(damaged) + junk


def payloads(descriptor: Descriptor, hints: Sequence[str] = ()) -> st.SearchStrategy[bytes]:
    """What a hostile client sends for a ``descriptor`` request: a valid message with
    random content, the same damaged, or random bytes."""
    valid = messages(descriptor, hints).map(lambda message: message.SerializeToString())
    damaged = st.builds(
        _damage,
        valid,
        st.integers(0, 8),
        st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3),
        st.binary(max_size=8),
    )
    return st.one_of(valid, valid, damaged, st.binary(max_size=256))


def draw(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """``count`` examples of ``strategy``, the same on every run (generation only)."""
    drawn: list[Any] = []

    @settings(FUZZ, max_examples=count, phases=[Phase.generate])
    @given(strategy)
    def collect(value: Any) -> None:
        drawn.append(value)

    collect()
    return drawn


def cloud_events(hints: Sequence[str] = ()) -> st.SearchStrategy[bytes]:
    """What a hostile producer puts on ``events.ingest``: JSON objects shaped like
    CloudEvents with random attributes and data, other JSON, and bytes that are not JSON."""
    attribute = st.one_of(_strings(hints), json_values(hints))
    event = st.fixed_dictionaries(
        {},
        optional={
            "specversion": attribute,
            "id": attribute,
            "type": attribute,
            "source": attribute,
            "time": attribute,
            "subject": attribute,
            "data": json_values(hints),
        },
    )
    as_json = st.one_of(event, json_values(hints)).map(
        lambda value: json.dumps(value).encode("utf-8")
    )
    return st.one_of(as_json, as_json, st.binary(max_size=128))


@st.composite
def _envelope(draw: st.DrawFn, hints: Sequence[str], kinds: Sequence[str]) -> bytes:
    from flowyard.v1 import events_pb2

    descriptor = events_pb2.Envelope.DESCRIPTOR
    every_kind = [field.name for field in descriptor.oneofs_by_name["payload"].fields]
    envelope = events_pb2.Envelope(
        event_id=draw(st.one_of(st.uuids().map(str), _strings(hints).filter(bool))),
        run_id=draw(_strings(hints)),
        workflow_id=draw(_strings(hints)),
        workflow_version=draw(_integers(-(2**31), 2**31 - 1)),
    )
    if draw(st.booleans()):
        envelope.time.seconds = draw(st.integers(0, 253402300799))  # years 1970-9999
    preferred = st.sampled_from(list(kinds)) if kinds else st.nothing()
    kind = draw(st.one_of(preferred, preferred, st.sampled_from(every_kind)))
    payload = getattr(envelope, kind)
    payload.CopyFrom(draw(messages(descriptor.fields_by_name[kind].message_type, hints)))
    payload.SetInParent()
    return envelope.SerializeToString()


def envelopes(hints: Sequence[str] = (), kinds: Sequence[str] = ()) -> st.SearchStrategy[bytes]:
    """What a hostile producer puts on an envelope topic: mostly well-formed envelopes
    (an event id, a payload, preferably of one of ``kinds``) with random content, so they
    get past decoding into the handlers; the rest damaged or random bytes."""
    from flowyard.v1 import events_pb2

    well_formed = _envelope(hints, kinds)
    return st.one_of(
        well_formed, well_formed, well_formed, payloads(events_pb2.Envelope.DESCRIPTOR, hints)
    )
