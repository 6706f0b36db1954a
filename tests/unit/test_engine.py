from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from flowyard.domain import engine
from flowyard.domain.definition import WorkflowDefinition, parse_definition
from flowyard.domain.run import (
    RunState,
    RunStatus,
    TaskError,
    TaskStatus,
    TriggerInfo,
    TriggerKind,
    transition_run,
    transition_task,
)
from flowyard.errors import InvalidTransitionError

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def definition(retries: int = 1) -> WorkflowDefinition:
    return parse_definition(
        {
            "name": "wf",
            "context": {"k": 1},
            "nodes": [
                {"id": "start", "type": "trigger"},
                {"id": "a", "type": "code", "config": {"source": "result = 1"}},
                {"id": "b", "type": "code", "config": {"source": "result = 2"}},
                {
                    "id": "c",
                    "type": "code",
                    "config": {"source": "result = 3"},
                    "retry": {"max_attempts": retries, "initial_backoff_seconds": 2},
                },
                {"id": "join", "type": "code", "config": {"source": "result = 4"}},
            ],
            "edges": [
                {"from": "start", "to": "a"},
                {"from": "a", "to": "b"},
                {"from": "a", "to": "c"},
                {"from": "b", "to": "join"},
                {"from": "c", "to": "join"},
            ],
        }
    )


def started(d: WorkflowDefinition) -> engine.Decision:
    run = engine.new_run("r1", "w1", 1, d, TriggerInfo(TriggerKind.API, {"x": 5}), T0)
    return engine.start(run, d, T0)


def dispatched(decision: engine.Decision) -> list[str]:
    return [e.node.id for e in decision.effects if isinstance(e, engine.DispatchTask)]


def finish(
    run: RunState, d: WorkflowDefinition, node: str, output: object = None
) -> engine.Decision:
    run = engine.task_started(run, node, run.task(node).attempt, T0).run
    return engine.task_succeeded(run, d, node, run.task(node).attempt, output, T0)  # type: ignore[arg-type]


def test_start_completes_the_trigger_and_dispatches_its_children() -> None:
    d = definition()
    decision = started(d)
    assert decision.run.status is RunStatus.RUNNING
    assert decision.run.task("start").output == {"x": 5}
    assert dispatched(decision) == ["a"]
    dispatch = next(e for e in decision.effects if isinstance(e, engine.DispatchTask))
    assert dispatch.input == {
        "trigger": {"x": 5},
        "context": {"k": 1},
        "node_context": {},
        "upstream": {"start": {"x": 5}},
    }


def test_branches_run_in_parallel_and_the_join_waits_for_both() -> None:
    d = definition()
    run = started(d).run
    after_a = finish(run, d, "a", {"a": True})
    assert sorted(dispatched(after_a)) == ["b", "c"]
    after_b = finish(after_a.run, d, "b")
    assert dispatched(after_b) == []  # join still waits for c
    after_c = finish(after_b.run, d, "c")
    assert dispatched(after_c) == ["join"]
    done = finish(after_c.run, d, "join", 42)
    assert done.run.status is RunStatus.SUCCEEDED
    assert done.run.finished_at == T0
    assert engine.RunStatusChanged(RunStatus.RUNNING, RunStatus.SUCCEEDED) in done.effects


def test_a_failure_fails_the_run_once_nothing_else_is_running() -> None:
    d = definition()
    run = finish(started(d).run, d, "a").run
    error = TaskError("code.exception", "boom", "trace")
    failed_c = engine.task_failed(run, d, "c", 1, error, T0)
    assert failed_c.run.status is RunStatus.RUNNING  # b is still in flight
    done = finish(failed_c.run, d, "b")
    assert done.run.status is RunStatus.FAILED
    assert done.run.error == error and done.run.failed_node_id == "c"
    assert done.run.task("join").status is TaskStatus.PENDING
    assert dispatched(done) == []


def test_retries_dispatch_the_next_attempt_after_the_backoff() -> None:
    d = definition(retries=2)
    run = finish(started(d).run, d, "a").run
    retry = engine.task_failed(run, d, "c", 1, TaskError("x", "flaky"), T0)
    dispatch = next(e for e in retry.effects if isinstance(e, engine.DispatchTask))
    assert (dispatch.node.id, dispatch.attempt) == ("c", 2)
    assert dispatch.not_before == T0 + timedelta(seconds=2)
    assert retry.run.task("c").status is TaskStatus.PENDING


def test_duplicate_and_stale_events_change_nothing() -> None:
    d = definition()
    run = finish(started(d).run, d, "a").run
    assert not engine.task_succeeded(run, d, "a", 1, "again", T0).changed
    assert not engine.task_started(run, "b", 7, T0).changed
    assert not engine.start(run, d, T0).changed


def test_in_flight_dispatches_can_be_recovered_after_a_crash() -> None:
    d = definition()
    run = finish(started(d).run, d, "a").run
    again = engine.redispatch_in_flight(run, d)
    assert sorted(e.node.id for e in again if isinstance(e, engine.DispatchTask)) == ["b", "c"]


def test_transition_tables_forbid_leaving_final_states() -> None:
    d = definition()
    run = engine.new_run("r", "w", 1, d, TriggerInfo(TriggerKind.API), T0)
    done = transition_run(transition_run(run, RunStatus.RUNNING, T0), RunStatus.SUCCEEDED, T0)
    with pytest.raises(InvalidTransitionError):
        transition_run(done, RunStatus.RUNNING, T0)
    task = transition_task(run.task("a"), TaskStatus.RUNNING, T0)
    with pytest.raises(InvalidTransitionError):
        transition_task(transition_task(task, TaskStatus.SKIPPED, T0), TaskStatus.RUNNING, T0)
