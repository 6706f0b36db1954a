from __future__ import annotations

from datetime import UTC, datetime

import pytest
from flowyard import codec
from flowyard.domain.definition import parse_definition
from flowyard.domain.run import Attempt, TaskStatus, TriggerInfo, TriggerKind
from flowyard.errors import DecodeError
from flowyard.v1 import run_pb2

T0 = datetime(2026, 1, 1, tzinfo=UTC)

DOC = {
    "name": "wf",
    "type": "ops",
    "context": {"limit": 3},
    "nodes": [
        {"id": "start", "type": "trigger"},
        {
            "id": "a",
            "type": "code",
            "stage": "s1",
            "config": {"source": "result = 1"},
            "retry": {"max_attempts": 3},
            "cancellable": False,
            "timeout_seconds": 5,
        },
    ],
    "edges": [{"from": "start", "to": "a"}],
}


def test_json_values_keep_integers_and_nesting() -> None:
    value = {"n": 3, "f": 2.5, "list": [1, "a", None, True], "nested": {"k": -7}}
    assert codec.value_to_json(codec.json_to_value(value)) == value


def test_definitions_survive_the_wire() -> None:
    definition = parse_definition(DOC)
    assert codec.definition_from_proto(codec.definition_to_proto(definition)) == definition


def test_run_view_carries_attempt_input_and_durations() -> None:
    from dataclasses import replace

    from flowyard.domain import engine

    definition = parse_definition(DOC)
    run = engine.new_run("r", "w", 2, definition, TriggerInfo(TriggerKind.API, {"x": 1}), T0)
    run = engine.start(run, definition, T0).run
    finished = replace(
        run.task("a"),
        status=TaskStatus.SUCCEEDED,
        started_at=T0,
        finished_at=T0.replace(second=2),
        output={"ok": 1},
    )
    run = replace(run, tasks={**run.tasks, "a": finished})
    attempt = Attempt(
        "r",
        "a",
        1,
        TaskStatus.SUCCEEDED,
        input={"in": 1},
        output={"ok": 1},
        started_at=T0,
        finished_at=T0.replace(second=2),
    )
    view = codec.run_to_proto(run, definition, {"a": [attempt]})
    task = view.tasks[1]
    assert task.status == run_pb2.TASK_STATUS_SUCCEEDED and task.stage == "s1"
    assert codec.value_to_json(task.input) == {"in": 1}
    assert task.duration.seconds == 2 and len(task.attempts) == 1
    assert view.trigger.kind == "api" and view.workflow_version == 2


@pytest.mark.parametrize("data", [b"", b"\xff\xfe garbage", b"\x0a\x00"])
def test_undecodable_messages_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        codec.decode_envelope(data)
