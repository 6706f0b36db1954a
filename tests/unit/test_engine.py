"""The pure engine: how a run advances from events, and which effects it asks for.

Every test builds a definition the way a user writes it (``parse_definition`` on a dict),
feeds events with explicit times and checks what a user would see: task and run statuses,
outputs, errors, and the effects the scheduler carries out.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from flowyard.domain import engine
from flowyard.domain.definition import RetryPolicy, WorkflowDefinition, parse_definition
from flowyard.domain.json import JsonValue
from flowyard.domain.run import (
    ParentLink,
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
TIMING = engine.Timing(lease=timedelta(seconds=30), deadline_grace=timedelta(seconds=5))
E = TypeVar("E")


# --- building definitions --------------------------------------------------------------


def workflow(
    nodes: list[dict[str, Any]], edges: list[dict[str, Any]], **extra: Any
) -> WorkflowDefinition:
    """A definition with a ``start`` trigger in front of ``nodes``."""
    document = {
        "name": "wf",
        "nodes": [{"id": "start", "type": "trigger"}, *nodes],
        "edges": edges,
        **extra,
    }
    return parse_definition(document)


def code(node_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "type": "code", "config": {"source": "result = 1"}, **extra}


def condition(node_id: str, expression: str) -> dict[str, Any]:
    return {"id": node_id, "type": "condition", "config": {"expression": expression}}


def edge(source: str, target: str, when: bool | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"from": source, "to": target}
    if when is not None:
        found["when"] = when
    return found


def chain(*ids: str) -> list[dict[str, Any]]:
    return [edge(a, b) for a, b in itertools.pairwise(ids)]


def retrying(node_id: str, **policy: Any) -> dict[str, Any]:
    return code(node_id, retry=policy)


# --- driving a run ---------------------------------------------------------------------


def begin(
    d: WorkflowDefinition,
    data: JsonValue = None,
    *,
    run_id: str = "r1",
    parent: ParentLink | None = None,
    now: datetime = T0,
) -> engine.Decision:
    trigger = TriggerInfo(TriggerKind.API, data)
    run = engine.new_run(run_id, "w1", 1, d, trigger, now, parent=parent)
    return engine.start(run, d, now)


def started(
    run: RunState,
    d: WorkflowDefinition,
    node_id: str,
    executor: str = "ex-1",
    now: datetime = T0,
) -> engine.Decision:
    return engine.task_started(run, d, node_id, run.task(node_id).attempt, executor, now, TIMING)


def succeed(
    run: RunState,
    d: WorkflowDefinition,
    node_id: str,
    output: JsonValue = None,
    now: datetime = T0,
    warnings: tuple[str, ...] = (),
) -> engine.Decision:
    run = started(run, d, node_id, now=now).run
    attempt = run.task(node_id).attempt
    return engine.task_succeeded(run, d, node_id, attempt, output, now, warnings)


def fail(
    run: RunState,
    d: WorkflowDefinition,
    node_id: str,
    error: TaskError | None = None,
    now: datetime = T0,
) -> engine.Decision:
    run = started(run, d, node_id, now=now).run
    error = error or TaskError("code.exception", f"{node_id} broke")
    return engine.task_failed(run, d, node_id, run.task(node_id).attempt, error, now)


def effects_of(decision: engine.Decision | tuple[engine.Effect, ...], kind: type[E]) -> list[E]:
    effects = decision.effects if isinstance(decision, engine.Decision) else decision
    return [e for e in effects if isinstance(e, kind)]


def dispatched(decision: engine.Decision | tuple[engine.Effect, ...]) -> list[str]:
    return [e.node.id for e in effects_of(decision, engine.DispatchTask)]


def timers(decision: engine.Decision | tuple[engine.Effect, ...]) -> list[engine.ScheduleTimer]:
    return effects_of(decision, engine.ScheduleTimer)


def status(run: RunState, node_id: str) -> TaskStatus:
    return run.task(node_id).status


# --- a linear run ----------------------------------------------------------------------


def linear() -> WorkflowDefinition:
    return workflow(
        [code("a", context={"team": "ops"}), code("b")],
        chain("start", "a", "b"),
        context={"region": "eu"},
    )


def test_start_moves_the_run_to_running_and_completes_the_trigger_with_its_data() -> None:
    decision = begin(linear(), {"order": 7})
    run = decision.run
    assert run.status is RunStatus.RUNNING
    assert run.started_at == T0
    assert status(run, "start") is TaskStatus.SUCCEEDED
    assert run.task("start").output == {"order": 7}
    assert engine.RunStatusChanged(RunStatus.QUEUED, RunStatus.RUNNING) in decision.effects
    assert engine.TaskStatusChanged("start", TaskStatus.SUCCEEDED, 1) in decision.effects


def test_start_dispatches_only_the_first_node_as_attempt_one() -> None:
    decision = begin(linear(), {"order": 7})
    (dispatch,) = effects_of(decision, engine.DispatchTask)
    assert (dispatch.node.id, dispatch.attempt) == ("a", 1)
    assert status(decision.run, "a") is TaskStatus.PENDING
    assert decision.run.task("a").dispatched
    assert status(decision.run, "b") is TaskStatus.PENDING
    assert decision.run.task("b").attempt == 0


def test_task_input_holds_trigger_both_contexts_and_upstream_outputs_by_node_id() -> None:
    d = linear()
    run = begin(d, {"order": 7}).run
    (dispatch_a,) = effects_of(begin(d, {"order": 7}), engine.DispatchTask)
    assert dispatch_a.input == {
        "trigger": {"order": 7},
        "context": {"region": "eu"},
        "node_context": {"team": "ops"},
        "upstream": {"start": {"order": 7}},
    }
    after_a = succeed(run, d, "a", {"price": 3})
    (dispatch_b,) = effects_of(after_a, engine.DispatchTask)
    assert dispatch_b.input == {
        "trigger": {"order": 7},
        "context": {"region": "eu"},
        "node_context": {},
        "upstream": {"start": {"order": 7}, "a": {"price": 3}},
    }
    assert engine.task_input(after_a.run, d, "b") == dispatch_b.input


def test_task_started_marks_the_task_running_on_its_executor() -> None:
    d = linear()
    run = begin(d).run
    decision = started(run, d, "a", executor="ex-9", now=T0 + timedelta(seconds=2))
    task = decision.run.task("a")
    assert task.status is TaskStatus.RUNNING
    assert task.executor_id == "ex-9"
    assert task.started_at == T0 + timedelta(seconds=2)
    assert engine.TaskStatusChanged("a", TaskStatus.RUNNING, 1) in decision.effects
    # No timer write for a task without a timeout: the first heartbeat makes the lease.
    assert timers(decision) == []


def test_a_linear_run_succeeds_when_its_last_task_succeeds() -> None:
    d = linear()
    run = succeed(begin(d).run, d, "a", 1).run
    done = succeed(run, d, "b", {"total": 2}, now=T0 + timedelta(minutes=1))
    assert done.run.status is RunStatus.SUCCEEDED
    assert done.run.finished_at == T0 + timedelta(minutes=1)
    assert done.run.error is None
    assert status(done.run, "b") is TaskStatus.SUCCEEDED
    assert done.run.task("b").output == {"total": 2}
    assert engine.RunStatusChanged(RunStatus.RUNNING, RunStatus.SUCCEEDED) in done.effects
    assert engine.CancelTimers() in done.effects
    assert engine.CancelTimers("b") not in done.effects  # it had no deadline to drop
    assert engine.run_output(done.run, d) == {"b": {"total": 2}}


def test_a_run_with_only_a_trigger_succeeds_at_once() -> None:
    d = workflow([], [])
    decision = begin(d, {"x": 1})
    assert decision.run.status is RunStatus.SUCCEEDED
    assert engine.run_output(decision.run, d) == {"start": {"x": 1}}


def test_a_task_failure_fails_the_run_with_that_error_and_blocks_its_children() -> None:
    d = linear()
    error = TaskError("code.exception", "ZeroDivisionError: division by zero", "trace")
    done = fail(begin(d).run, d, "a", error)
    assert status(done.run, "a") is TaskStatus.FAILED
    assert done.run.task("a").error == error
    assert done.run.status is RunStatus.FAILED
    assert done.run.error == error
    assert done.run.failed_node_id == "a"
    assert status(done.run, "b") is TaskStatus.PENDING
    assert dispatched(done) == []


# --- fan-out / fan-in ------------------------------------------------------------------


def diamond() -> WorkflowDefinition:
    return workflow(
        [code("a"), code("b"), code("c"), code("join")],
        [*chain("start", "a"), *chain("a", "b", "join"), *chain("a", "c", "join")],
    )


def test_parallel_branches_are_dispatched_together() -> None:
    d = diamond()
    after_a = succeed(begin(d).run, d, "a", {"n": 1})
    assert sorted(dispatched(after_a)) == ["b", "c"]
    assert after_a.run.task("b").dispatched and after_a.run.task("c").dispatched


def test_the_join_is_dispatched_only_after_both_parents_succeed() -> None:
    d = diamond()
    run = succeed(begin(d).run, d, "a").run
    after_b = succeed(run, d, "b", "from b")
    assert dispatched(after_b) == []
    assert after_b.run.task("join").attempt == 0
    after_c = succeed(after_b.run, d, "c", "from c")
    (join,) = effects_of(after_c, engine.DispatchTask)
    assert join.node.id == "join"
    assert join.input["upstream"] == {"start": None, "a": None, "b": "from b", "c": "from c"}


def test_a_failed_branch_fails_the_run_only_once_the_other_branch_is_done() -> None:
    d = diamond()
    run = succeed(begin(d).run, d, "a").run
    failed_c = fail(run, d, "c")
    assert failed_c.run.status is RunStatus.RUNNING
    done = succeed(failed_c.run, d, "b")
    assert done.run.status is RunStatus.FAILED
    assert done.run.failed_node_id == "c"
    assert status(done.run, "join") is TaskStatus.PENDING
    assert dispatched(done) == []


# --- conditions ------------------------------------------------------------------------


def branching() -> WorkflowDefinition:
    return workflow(
        [
            condition("big", "trigger.amount > 100"),
            code("review"),
            code("notify"),
            code("auto"),
            code("archive"),
            code("log"),
        ],
        [
            edge("start", "big"),
            edge("big", "review", when=True),
            edge("review", "notify"),
            edge("big", "auto", when=False),
            edge("auto", "archive"),
            edge("archive", "log"),
        ],
    )


def test_a_true_condition_takes_its_true_branch_and_skips_everything_behind_false() -> None:
    decision = begin(branching(), {"amount": 500})
    run = decision.run
    assert status(run, "big") is TaskStatus.SUCCEEDED
    assert dispatched(decision) == ["review"]
    for node_id in ("auto", "archive", "log"):
        assert status(run, node_id) is TaskStatus.SKIPPED, node_id
        assert engine.TaskStatusChanged(node_id, TaskStatus.SKIPPED, 0) in decision.effects
    assert status(run, "notify") is TaskStatus.PENDING


def test_a_false_condition_takes_its_false_branch_and_skips_everything_behind_true() -> None:
    decision = begin(branching(), {"amount": 5})
    assert dispatched(decision) == ["auto"]
    assert status(decision.run, "review") is TaskStatus.SKIPPED
    assert status(decision.run, "notify") is TaskStatus.SKIPPED


def test_a_run_with_a_skipped_branch_succeeds_and_outputs_only_succeeded_sinks() -> None:
    d = branching()
    run = succeed(begin(d, {"amount": 500}).run, d, "review").run
    done = succeed(run, d, "notify", {"sent": True})
    assert done.run.status is RunStatus.SUCCEEDED
    assert engine.run_output(done.run, d) == {"notify": {"sent": True}}


def test_the_condition_output_names_expression_result_and_branch() -> None:
    run = begin(branching(), {"amount": 500}).run
    assert run.task("big").output == {
        "expression": "trigger.amount > 100",
        "result": True,
        "branch": "true",
    }
    other = begin(branching(), {"amount": 1}).run
    assert other.task("big").output == {
        "expression": "trigger.amount > 100",
        "result": False,
        "branch": "false",
    }


def test_the_taken_branch_sees_the_condition_output_upstream() -> None:
    (dispatch,) = effects_of(begin(branching(), {"amount": 500}), engine.DispatchTask)
    assert dispatch.input["upstream"]["big"]["branch"] == "true"


def merge() -> WorkflowDefinition:
    return workflow(
        [condition("check", "trigger.ok"), code("yes"), code("no"), code("join")],
        [
            edge("start", "check"),
            edge("check", "yes", when=True),
            edge("check", "no", when=False),
            edge("yes", "join"),
            edge("no", "join"),
        ],
    )


def test_a_join_with_one_skipped_and_one_succeeded_parent_still_runs() -> None:
    d = merge()
    decision = begin(d, {"ok": True})
    assert status(decision.run, "no") is TaskStatus.SKIPPED
    assert dispatched(decision) == ["yes"]
    after_yes = succeed(decision.run, d, "yes", "y")
    assert dispatched(after_yes) == ["join"]
    done = succeed(after_yes.run, d, "join")
    assert done.run.status is RunStatus.SUCCEEDED


def test_a_join_whose_parents_are_all_skipped_is_skipped() -> None:
    d = workflow(
        [condition("check", "trigger.ok"), code("yes1"), code("yes2"), code("join"), code("no")],
        [
            edge("start", "check"),
            edge("check", "yes1", when=True),
            edge("check", "yes2", when=True),
            edge("check", "no", when=False),
            edge("yes1", "join"),
            edge("yes2", "join"),
        ],
    )
    decision = begin(d, {"ok": False})
    assert status(decision.run, "join") is TaskStatus.SKIPPED
    assert dispatched(decision) == ["no"]


def nested() -> WorkflowDefinition:
    return workflow(
        [
            condition("big", "trigger.amount > 100"),
            condition("vip", "trigger.vip"),
            code("concierge"),
            code("standard"),
            code("small"),
        ],
        [
            edge("start", "big"),
            edge("big", "vip", when=True),
            edge("vip", "concierge", when=True),
            edge("vip", "standard", when=False),
            edge("big", "small", when=False),
        ],
    )


def test_a_nested_condition_decides_inside_the_branch_that_was_taken() -> None:
    decision = begin(nested(), {"amount": 500, "vip": False})
    run = decision.run
    assert run.task("vip").output == {
        "expression": "trigger.vip",
        "result": False,
        "branch": "false",
    }
    assert dispatched(decision) == ["standard"]
    assert status(run, "concierge") is TaskStatus.SKIPPED
    assert status(run, "small") is TaskStatus.SKIPPED


def test_a_nested_condition_on_a_branch_not_taken_is_skipped_with_both_its_branches() -> None:
    decision = begin(nested(), {"amount": 5, "vip": True})
    run = decision.run
    assert dispatched(decision) == ["small"]
    for node_id in ("vip", "concierge", "standard"):
        assert status(run, node_id) is TaskStatus.SKIPPED, node_id
    assert run.task("vip").output is None


def test_a_condition_reading_a_missing_field_fails_its_task_and_the_run() -> None:
    d = workflow(
        [condition("check", "trigger.customer.tier == 'gold'"), code("gold")],
        [edge("start", "check"), edge("check", "gold", when=True)],
    )
    decision = begin(d, {"customer": {"name": "Ada"}})
    task = decision.run.task("check")
    assert task.status is TaskStatus.FAILED
    assert task.error is not None
    assert task.error.code == "expression.missing_field"
    assert "trigger.customer.tier" in task.error.message
    assert "name" in task.error.message  # the keys that do exist
    assert decision.run.status is RunStatus.FAILED
    assert decision.run.error == task.error
    assert decision.run.failed_node_id == "check"
    assert status(decision.run, "gold") is TaskStatus.PENDING
    assert dispatched(decision) == []


# --- transforms ------------------------------------------------------------------------


def pricing(total: str = "upstream.fetch.price * trigger.qty") -> WorkflowDefinition:
    output = {"total": total, "label": "'order ' + str(trigger.id)", "fixed": 3}
    return workflow(
        [code("fetch"), {"id": "price", "type": "transform", "config": {"output": output}}],
        chain("start", "fetch", "price"),
    )


def test_a_transform_computes_its_output_from_upstream_without_an_executor() -> None:
    d = pricing()
    run = begin(d, {"qty": 4, "id": 7}).run
    decision = succeed(run, d, "fetch", {"price": 2.5})
    assert dispatched(decision) == []
    assert status(decision.run, "price") is TaskStatus.SUCCEEDED
    assert decision.run.task("price").output == {"total": 10.0, "label": "order 7", "fixed": 3}
    assert engine.TaskStatusChanged("price", TaskStatus.SUCCEEDED, 1) in decision.effects
    assert decision.run.status is RunStatus.SUCCEEDED


def test_a_transform_reading_a_missing_field_fails_with_the_field_named() -> None:
    d = pricing(total="upstream.fetch.cost * trigger.qty")
    run = begin(d, {"qty": 4, "id": 7}).run
    decision = succeed(run, d, "fetch", {"price": 2.5})
    task = decision.run.task("price")
    assert task.status is TaskStatus.FAILED
    assert task.error is not None
    assert task.error.code == "expression.missing_field"
    assert "upstream.fetch.cost" in task.error.message
    assert "total" in task.error.message  # the output key that failed
    assert decision.run.status is RunStatus.FAILED


# --- waits -----------------------------------------------------------------------------


def delayed(**config: Any) -> WorkflowDefinition:
    config = config or {"seconds": 90}
    return workflow(
        [{"id": "pause", "type": "wait", "config": config}, code("after")],
        chain("start", "pause", "after"),
    )


def test_a_wait_node_waits_with_a_due_time_and_a_wait_timer() -> None:
    decision = begin(delayed(seconds=90))
    task = decision.run.task("pause")
    assert task.status is TaskStatus.WAITING
    assert task.due_at == T0 + timedelta(seconds=90)
    assert task.started_at == T0
    assert timers(decision) == [
        engine.ScheduleTimer("pause", 1, engine.TimerKind.WAIT, T0 + timedelta(seconds=90))
    ]
    assert dispatched(decision) == []


def test_a_run_is_waiting_when_only_a_wait_node_is_left() -> None:
    decision = begin(delayed(seconds=90))
    assert decision.run.status is RunStatus.WAITING
    assert engine.RunStatusChanged(RunStatus.RUNNING, RunStatus.WAITING) in decision.effects


def test_a_run_stays_running_while_a_wait_shares_the_run_with_a_task_in_flight() -> None:
    d = workflow(
        [{"id": "pause", "type": "wait", "config": {"minutes": 5}}, code("work")],
        [edge("start", "pause"), edge("start", "work")],
    )
    decision = begin(d)
    assert decision.run.status is RunStatus.RUNNING
    after_work = succeed(decision.run, d, "work")
    assert after_work.run.status is RunStatus.WAITING


def test_a_wait_until_a_time_is_due_at_that_time() -> None:
    decision = begin(delayed(until="2026-01-02T08:30:00+02:00"))
    assert decision.run.task("pause").due_at == datetime(2026, 1, 2, 6, 30, tzinfo=UTC)


def test_a_wait_duration_can_come_from_the_trigger() -> None:
    decision = begin(delayed(minutes="{{ trigger.delay }}"), {"delay": 2})
    assert decision.run.task("pause").due_at == T0 + timedelta(minutes=2)


def test_the_wait_timer_resumes_the_run_with_scheduled_and_actual_times() -> None:
    d = delayed(seconds=90)
    run = begin(d).run
    fired_at = T0 + timedelta(seconds=91)
    decision = engine.timer_fired(run, d, "pause", 1, engine.TimerKind.WAIT, fired_at)
    task = decision.run.task("pause")
    assert task.status is TaskStatus.SUCCEEDED
    assert isinstance(task.output, dict)
    assert task.output["scheduled_resume_at"] == (T0 + timedelta(seconds=90)).isoformat()
    assert task.output["resumed_at"] == fired_at.isoformat()
    assert dispatched(decision) == ["after"]
    assert decision.run.status is RunStatus.RUNNING
    assert engine.RunStatusChanged(RunStatus.WAITING, RunStatus.RUNNING) in decision.effects


def test_a_run_whose_last_node_is_a_wait_succeeds_when_the_timer_fires() -> None:
    d = workflow(
        [{"id": "pause", "type": "wait", "config": {"seconds": 10}}], chain("start", "pause")
    )
    run = begin(d).run
    assert run.status is RunStatus.WAITING
    later = T0 + timedelta(seconds=10)
    decision = engine.timer_fired(run, d, "pause", 1, engine.TimerKind.WAIT, later)
    assert status(decision.run, "pause") is TaskStatus.SUCCEEDED
    assert decision.run.status is RunStatus.SUCCEEDED


def test_a_stale_wait_timer_changes_nothing() -> None:
    d = delayed(seconds=90)
    run = begin(d).run
    late = T0 + timedelta(seconds=90)
    decision = engine.timer_fired(run, d, "pause", 2, engine.TimerKind.WAIT, late)
    assert not decision.changed
    assert decision.run == run


def test_a_wait_timer_for_a_node_already_resumed_changes_nothing() -> None:
    d = delayed(seconds=90)
    run = begin(d).run
    late = T0 + timedelta(seconds=90)
    once = engine.timer_fired(run, d, "pause", 1, engine.TimerKind.WAIT, late)
    twice = engine.timer_fired(once.run, d, "pause", 1, engine.TimerKind.WAIT, late)
    assert not twice.changed
    assert twice.run == once.run


# --- approvals -------------------------------------------------------------------------


def approval_flow(*after: str) -> WorkflowDefinition:
    approve = {"id": "approve", "type": "approval", "config": {"approvers": ["alice"]}}
    return workflow([approve, *(code(n) for n in after)], chain("start", "approve", *after))


def test_an_approval_waits_and_the_run_waits_with_it() -> None:
    decision = begin(approval_flow("ship"))
    assert status(decision.run, "approve") is TaskStatus.WAITING
    assert decision.run.task("approve").due_at is None
    assert decision.run.status is RunStatus.WAITING
    assert engine.TaskStatusChanged("approve", TaskStatus.WAITING, 1) in decision.effects
    assert timers(decision) == []
    assert dispatched(decision) == []


def test_an_approved_approval_succeeds_and_the_run_continues() -> None:
    d = approval_flow("ship")
    run = begin(d).run
    later = T0 + timedelta(hours=1)
    decision = engine.approval_decided(run, d, "approve", True, "alice", "looks good", later)
    task = decision.run.task("approve")
    assert task.status is TaskStatus.SUCCEEDED
    assert task.output == {
        "approved": True,
        "decided_by": "alice",
        "comment": "looks good",
        "decided_at": later.isoformat(),
    }
    assert dispatched(decision) == ["ship"]
    assert decision.run.status is RunStatus.RUNNING
    assert succeed(decision.run, d, "ship").run.status is RunStatus.SUCCEEDED


def test_a_run_whose_last_node_is_an_approval_succeeds_when_approved() -> None:
    d = approval_flow()
    run = begin(d).run
    decision = engine.approval_decided(run, d, "approve", True, "alice", "", T0)
    assert status(decision.run, "approve") is TaskStatus.SUCCEEDED
    assert decision.run.status is RunStatus.SUCCEEDED


def test_a_rejected_approval_fails_naming_the_decider_and_the_comment() -> None:
    d = approval_flow("ship")
    run = begin(d).run
    decision = engine.approval_decided(run, d, "approve", False, "bob", "budget frozen", T0)
    task = decision.run.task("approve")
    assert task.status is TaskStatus.FAILED
    assert task.error is not None
    assert task.error.code == "approval.rejected"
    assert "bob" in task.error.message
    assert "budget frozen" in task.error.message
    assert isinstance(task.output, dict) and task.output["approved"] is False
    assert decision.run.status is RunStatus.FAILED
    assert decision.run.error == task.error
    assert status(decision.run, "ship") is TaskStatus.PENDING


def test_an_approval_decision_on_a_node_that_is_not_waiting_changes_nothing() -> None:
    d = approval_flow("ship")
    run = begin(d).run
    assert not engine.approval_decided(run, d, "ship", True, "alice", "", T0).changed


# --- retries ---------------------------------------------------------------------------


def flaky(**policy: Any) -> WorkflowDefinition:
    policy = {"max_attempts": 3, "initial_backoff_seconds": 2, "backoff_multiplier": 3, **policy}
    return workflow([retrying("call", **policy), code("after")], chain("start", "call", "after"))


def test_a_failed_attempt_is_retried_later_as_the_next_attempt() -> None:
    d = flaky()
    error = TaskError("http.status", "503 from upstream")
    now = T0 + timedelta(seconds=10)
    decision = fail(begin(d).run, d, "call", error, now=now)
    task = decision.run.task("call")
    assert task.status is TaskStatus.PENDING
    assert task.attempt == 2
    assert task.due_at == now + timedelta(seconds=2)
    assert task.error == error
    assert task.retry_scheduled and not task.dispatched
    assert dispatched(decision) == []
    assert timers(decision) == [
        engine.ScheduleTimer("call", 2, engine.TimerKind.RETRY, now + timedelta(seconds=2))
    ]
    assert engine.TaskStatusChanged("call", TaskStatus.PENDING, 2) in decision.effects
    assert decision.run.status is RunStatus.RUNNING


def test_the_retry_timer_dispatches_the_next_attempt() -> None:
    d = flaky()
    run = fail(begin(d).run, d, "call").run
    due = T0 + timedelta(seconds=2)
    decision = engine.timer_fired(run, d, "call", 2, engine.TimerKind.RETRY, due)
    (dispatch,) = effects_of(decision, engine.DispatchTask)
    assert (dispatch.node.id, dispatch.attempt) == ("call", 2)
    assert dispatch.input == engine.task_input(run, d, "call")
    assert decision.run.task("call").dispatched
    assert decision.run.task("call").due_at is None


def test_a_retried_attempt_that_succeeds_continues_the_run() -> None:
    d = flaky()
    run = fail(begin(d).run, d, "call").run
    run = engine.timer_fired(run, d, "call", 2, engine.TimerKind.RETRY, T0).run
    decision = succeed(run, d, "call", {"ok": True})
    assert decision.run.task("call").attempt == 2
    assert decision.run.task("call").error is None
    assert dispatched(decision) == ["after"]


def test_a_stale_retry_timer_changes_nothing() -> None:
    d = flaky()
    run = fail(begin(d).run, d, "call").run
    assert not engine.timer_fired(run, d, "call", 1, engine.TimerKind.RETRY, T0).changed
    dispatched_run = engine.timer_fired(run, d, "call", 2, engine.TimerKind.RETRY, T0).run
    again = engine.timer_fired(dispatched_run, d, "call", 2, engine.TimerKind.RETRY, T0)
    assert not again.changed


def test_backoff_grows_by_the_multiplier_between_attempts() -> None:
    d = flaky()
    run = fail(begin(d).run, d, "call").run
    run = engine.timer_fired(run, d, "call", 2, engine.TimerKind.RETRY, T0).run
    decision = fail(run, d, "call", now=T0 + timedelta(seconds=100))
    assert decision.run.task("call").attempt == 3
    assert decision.run.task("call").due_at == T0 + timedelta(seconds=106)


def test_max_backoff_seconds_caps_the_delay() -> None:
    d = flaky(initial_backoff_seconds=10, backoff_multiplier=10, max_backoff_seconds=15)
    run = fail(begin(d).run, d, "call").run
    assert run.task("call").due_at == T0 + timedelta(seconds=10)
    run = engine.timer_fired(run, d, "call", 2, engine.TimerKind.RETRY, T0).run
    decision = fail(run, d, "call")
    assert decision.run.task("call").due_at == T0 + timedelta(seconds=15)  # not 100


def test_a_zero_backoff_retry_is_dispatched_at_once() -> None:
    d = flaky(initial_backoff_seconds=0)
    decision = fail(begin(d).run, d, "call")
    (dispatch,) = effects_of(decision, engine.DispatchTask)
    assert dispatch.attempt == 2
    assert timers(decision) == []
    assert decision.run.task("call").dispatched


def jittered_delay(run_id: str) -> float:
    d = flaky(initial_backoff_seconds=10, jitter=0.2)
    decision = fail(begin(d, run_id=run_id).run, d, "call")
    due = decision.run.task("call").due_at
    assert due is not None
    return (due - T0).total_seconds()


def test_jittered_backoff_is_the_same_for_the_same_run_and_node() -> None:
    assert jittered_delay("r-42") == jittered_delay("r-42")


def test_jittered_backoff_stays_within_plus_or_minus_jitter_and_varies_by_run() -> None:
    delays = [jittered_delay(f"r-{i}") for i in range(30)]
    assert all(8.0 <= delay <= 12.0 for delay in delays), delays
    assert len(set(delays)) > 1


def test_retry_policy_backoff_stays_within_jitter_for_every_attempt() -> None:
    policy = RetryPolicy(max_attempts=6, initial_backoff_seconds=1, jitter=0.5)
    for attempt in range(2, 7):
        base = 2.0 ** (attempt - 2)
        for salt in ("a", "b", "c", "run/node"):
            delay = policy.backoff_before(attempt, salt=salt)
            assert base * 0.5 <= delay <= base * 1.5
            assert delay == policy.backoff_before(attempt, salt=salt)
    assert policy.backoff_before(1, salt="a") == 0.0


def test_after_the_last_attempt_the_task_and_the_run_fail_with_its_error() -> None:
    d = flaky(max_attempts=2)
    run = fail(begin(d).run, d, "call").run
    run = engine.timer_fired(run, d, "call", 2, engine.TimerKind.RETRY, T0).run
    last = TaskError("http.status", "still 503")
    decision = fail(run, d, "call", last)
    task = decision.run.task("call")
    assert task.status is TaskStatus.FAILED
    assert task.attempt == 2
    assert task.error == last
    assert task.due_at is None
    assert timers(decision) == []
    assert decision.run.status is RunStatus.FAILED
    assert decision.run.error == last
    assert decision.run.failed_node_id == "call"


# --- leases, heartbeats and deadlines --------------------------------------------------


def test_a_lost_executor_gets_its_task_re_dispatched_as_the_next_attempt() -> None:
    d = flaky(max_attempts=1)
    run = started(begin(d).run, d, "call", executor="ex-1").run
    lapse = T0 + timedelta(seconds=30)
    decision = engine.timer_fired(run, d, "call", 1, engine.TimerKind.LEASE, lapse)
    task = decision.run.task("call")
    assert task.status is TaskStatus.PENDING
    assert task.attempt == 2
    assert task.lost_attempts == 1
    assert task.executor_id == ""
    assert task.error is not None and task.error.code == "executor.lost"
    assert "ex-1" in task.error.message
    (dispatch,) = effects_of(decision, engine.DispatchTask)
    assert (dispatch.node.id, dispatch.attempt) == ("call", 2)
    assert engine.CancelTimers("call") in decision.effects
    assert decision.run.status is RunStatus.RUNNING


def test_a_lost_attempt_does_not_use_the_retry_budget() -> None:
    d = flaky(max_attempts=2, initial_backoff_seconds=0)
    run = started(begin(d).run, d, "call").run
    run = engine.timer_fired(run, d, "call", 1, engine.TimerKind.LEASE, T0).run
    decision = fail(run, d, "call")  # attempt 2: the first real failure
    assert decision.run.task("call").status is TaskStatus.PENDING
    assert decision.run.task("call").attempt == 3
    assert dispatched(decision) == ["call"]
    final = fail(decision.run, d, "call")  # attempt 3: the second real failure
    assert final.run.task("call").status is TaskStatus.FAILED
    assert final.run.status is RunStatus.FAILED


def test_a_task_fails_with_executor_lost_after_max_lost_attempts() -> None:
    d = flaky(max_attempts=1)
    run = begin(d).run
    for _ in range(engine.MAX_LOST_ATTEMPTS):
        run = started(run, d, "call").run
        attempt = run.task("call").attempt
        run = engine.timer_fired(run, d, "call", attempt, engine.TimerKind.LEASE, T0).run
    task = run.task("call")
    assert task.status is TaskStatus.FAILED
    assert task.error is not None and task.error.code == "executor.lost"
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error.code == "executor.lost"


def test_a_lease_timer_for_a_task_no_longer_running_changes_nothing() -> None:
    d = flaky()
    run = begin(d).run
    assert not engine.timer_fired(run, d, "call", 1, engine.TimerKind.LEASE, T0).changed
    done = succeed(run, d, "call").run
    assert not engine.timer_fired(done, d, "call", 1, engine.TimerKind.LEASE, T0).changed


def test_another_executor_taking_over_a_running_attempt_becomes_its_executor() -> None:
    d = flaky()
    run = started(begin(d).run, d, "call", executor="ex-1").run
    later = T0 + timedelta(seconds=20)
    decision = engine.task_started(run, d, "call", 1, "ex-2", later, TIMING)
    task = decision.run.task("call")
    assert task.executor_id == "ex-2"
    assert task.status is TaskStatus.RUNNING
    assert task.attempt == 1
    assert task.started_at == T0
    assert timers(decision) == [
        engine.ScheduleTimer("call", 1, engine.TimerKind.LEASE, later + timedelta(seconds=30))
    ]


def timed(**policy: Any) -> WorkflowDefinition:
    policy = {"max_attempts": 1, "initial_backoff_seconds": 0, **policy}
    node = {**code("slow"), "timeout_seconds": 60, "retry": policy}
    return workflow([node], chain("start", "slow"))


def test_a_node_with_a_timeout_gets_a_deadline_timer_when_it_starts() -> None:
    d = timed()
    decision = started(begin(d).run, d, "slow", now=T0)
    deadline = engine.ScheduleTimer(
        "slow", 1, engine.TimerKind.DEADLINE, T0 + timedelta(seconds=65)
    )
    assert deadline in timers(decision)


def test_a_node_without_a_timeout_gets_no_deadline_timer() -> None:
    d = linear()
    decision = started(begin(d).run, d, "a")
    assert [t.kind for t in timers(decision)] == []


def test_the_deadline_timer_fails_the_attempt_with_task_timeout() -> None:
    d = timed()
    run = started(begin(d).run, d, "slow").run
    decision = engine.timer_fired(
        run, d, "slow", 1, engine.TimerKind.DEADLINE, T0 + timedelta(seconds=65)
    )
    task = decision.run.task("slow")
    assert task.status is TaskStatus.FAILED
    assert task.error is not None and task.error.code == "task.timeout"
    assert "60" in task.error.message
    assert decision.run.status is RunStatus.FAILED
    assert decision.run.error == task.error


def test_a_timed_out_attempt_is_retried_when_the_policy_allows() -> None:
    d = timed(max_attempts=2)
    run = started(begin(d).run, d, "slow").run
    decision = engine.timer_fired(run, d, "slow", 1, engine.TimerKind.DEADLINE, T0)
    task = decision.run.task("slow")
    assert task.status is TaskStatus.PENDING
    assert task.attempt == 2
    assert task.error is not None and task.error.code == "task.timeout"
    assert dispatched(decision) == ["slow"]
    assert decision.run.status is RunStatus.RUNNING


def test_a_deadline_for_an_earlier_attempt_changes_nothing() -> None:
    d = timed(max_attempts=2)
    run = started(begin(d).run, d, "slow").run
    run = engine.timer_fired(run, d, "slow", 1, engine.TimerKind.DEADLINE, T0).run
    run = started(run, d, "slow").run
    assert not engine.timer_fired(run, d, "slow", 1, engine.TimerKind.DEADLINE, T0).changed


# --- child workflows -------------------------------------------------------------------


def calling(wait: bool = True) -> WorkflowDefinition:
    config = {"workflow": "billing", "input": {"order": "{{ trigger.order }}"}, "wait": wait}
    return workflow(
        [{"id": "call", "type": "run_workflow", "config": config}], chain("start", "call")
    )


def test_run_workflow_starts_a_child_run_and_waits_for_it() -> None:
    decision = begin(calling(), {"order": 7})
    (start_child,) = effects_of(decision, engine.StartChildRun)
    assert start_child.child.workflow == "billing"
    assert start_child.child.input == {"order": 7}
    assert start_child.child.wait is True
    assert start_child.parent == ParentLink("r1", "call", 1, wait=True)
    task = decision.run.task("call")
    assert task.status is TaskStatus.RUNNING
    assert task.child_run_id == start_child.child.run_id
    assert decision.run.status is RunStatus.RUNNING
    assert dispatched(decision) == []


def test_the_child_run_id_is_derived_from_the_parent_run_and_node() -> None:
    first = effects_of(begin(calling(), {"order": 7}), engine.StartChildRun)[0].child.run_id
    again = effects_of(begin(calling(), {"order": 7}), engine.StartChildRun)[0].child.run_id
    other = effects_of(begin(calling(), {"order": 7}, run_id="r2"), engine.StartChildRun)
    assert first == again
    assert other[0].child.run_id != first


def test_a_succeeded_child_run_completes_the_task_with_its_output() -> None:
    d = calling()
    run = begin(d, {"order": 7}).run
    child_id = run.task("call").child_run_id
    decision = engine.child_run_finished(
        run, d, "call", 1, child_id, RunStatus.SUCCEEDED, {"invoice": "I-1"}, None, T0
    )
    task = decision.run.task("call")
    assert task.status is TaskStatus.SUCCEEDED
    assert task.output == {"run_id": child_id, "status": "succeeded", "output": {"invoice": "I-1"}}
    assert decision.run.status is RunStatus.SUCCEEDED


def test_a_failed_child_run_fails_the_task_with_workflow_child_failed() -> None:
    d = calling()
    run = begin(d, {"order": 7}).run
    child_id = run.task("call").child_run_id
    cause = TaskError("code.exception", "card declined")
    decision = engine.child_run_finished(
        run, d, "call", 1, child_id, RunStatus.FAILED, {}, cause, T0
    )
    task = decision.run.task("call")
    assert task.status is TaskStatus.FAILED
    assert task.error is not None
    assert task.error.code == "workflow.child_failed"
    assert child_id in task.error.message
    assert "billing" in task.error.message
    assert "card declined" in task.error.message
    assert decision.run.status is RunStatus.FAILED


def test_news_of_another_child_run_changes_nothing() -> None:
    d = calling()
    run = begin(d, {"order": 7}).run
    decision = engine.child_run_finished(
        run, d, "call", 1, "someone-else", RunStatus.SUCCEEDED, {}, None, T0
    )
    assert not decision.changed


def test_run_workflow_without_wait_succeeds_at_once() -> None:
    decision = begin(calling(wait=False), {"order": 7})
    (start_child,) = effects_of(decision, engine.StartChildRun)
    assert start_child.parent.wait is False
    task = decision.run.task("call")
    assert task.status is TaskStatus.SUCCEEDED
    assert task.output == {"run_id": start_child.child.run_id, "workflow": "billing"}
    assert decision.run.status is RunStatus.SUCCEEDED


# --- runs started by a parent ----------------------------------------------------------

PARENT = ParentLink("parent-run", "call", 2, wait=True)


def test_a_child_run_notifies_its_parent_with_its_sink_outputs_when_it_succeeds() -> None:
    d = linear()
    run = succeed(begin(d, parent=PARENT, run_id="child-1").run, d, "a", 1).run
    decision = succeed(run, d, "b", {"invoice": "I-1"})
    assert decision.run.status is RunStatus.SUCCEEDED
    assert effects_of(decision, engine.NotifyParent) == [
        engine.NotifyParent(PARENT, "child-1", RunStatus.SUCCEEDED, {"b": {"invoice": "I-1"}}, None)
    ]


def test_a_failed_child_run_notifies_its_parent_with_the_error() -> None:
    d = linear()
    error = TaskError("code.exception", "boom")
    decision = fail(begin(d, parent=PARENT, run_id="child-1").run, d, "a", error)
    (notify,) = effects_of(decision, engine.NotifyParent)
    assert notify.parent == PARENT
    assert notify.status is RunStatus.FAILED
    assert notify.error == error


def test_a_child_run_started_without_wait_does_not_notify_its_parent() -> None:
    d = linear()
    fire_and_forget = ParentLink("parent-run", "call", 1, wait=False)
    run = succeed(begin(d, parent=fire_and_forget).run, d, "a").run
    decision = succeed(run, d, "b")
    assert decision.run.status is RunStatus.SUCCEEDED
    assert effects_of(decision, engine.NotifyParent) == []


def test_a_run_does_not_notify_a_parent_before_it_finishes() -> None:
    d = linear()
    decision = succeed(begin(d, parent=PARENT).run, d, "a")
    assert effects_of(decision, engine.NotifyParent) == []


def test_reject_fails_a_queued_run_with_the_given_error() -> None:
    d = linear()
    run = engine.new_run("r1", "w1", 1, d, TriggerInfo(TriggerKind.API), T0)
    error = TaskError("workflow.inactive", "workflow wf is paused")
    decision = engine.reject(run, error, T0 + timedelta(seconds=1))
    assert decision.run.status is RunStatus.FAILED
    assert decision.run.error == error
    assert decision.run.finished_at == T0 + timedelta(seconds=1)
    assert engine.RunStatusChanged(RunStatus.QUEUED, RunStatus.FAILED) in decision.effects
    assert all(t.status is TaskStatus.PENDING for t in decision.run.tasks.values())


def test_reject_notifies_a_waiting_parent() -> None:
    d = linear()
    run = engine.new_run(
        "child-1", "w1", 1, d, TriggerInfo(TriggerKind.WORKFLOW), T0, parent=PARENT
    )
    error = TaskError("concurrency.full", "wf already has 2 active runs")
    decision = engine.reject(run, error, T0)
    assert effects_of(decision, engine.NotifyParent) == [
        engine.NotifyParent(PARENT, "child-1", RunStatus.FAILED, None, error)
    ]


def test_reject_leaves_a_started_run_alone() -> None:
    d = linear()
    run = begin(d).run
    assert not engine.reject(run, TaskError("x", "y"), T0).changed


# --- redelivered events ----------------------------------------------------------------


def test_start_delivered_twice_changes_nothing_the_second_time() -> None:
    d = linear()
    run = begin(d).run
    again = engine.start(run, d, T0)
    assert not again.changed
    assert again.run == run


def test_task_started_delivered_twice_changes_nothing_the_second_time() -> None:
    d = linear()
    run = started(begin(d).run, d, "a", executor="ex-1").run
    again = engine.task_started(run, d, "a", 1, "ex-1", T0 + timedelta(seconds=1), TIMING)
    assert not again.changed
    assert again.run == run


def test_task_succeeded_delivered_twice_changes_nothing_the_second_time() -> None:
    d = linear()
    run = started(begin(d).run, d, "a").run
    once = engine.task_succeeded(run, d, "a", 1, {"v": 1}, T0)
    twice = engine.task_succeeded(once.run, d, "a", 1, {"v": 2}, T0)
    assert not twice.changed
    assert twice.run == once.run
    assert twice.run.task("a").output == {"v": 1}


def test_task_failed_delivered_twice_changes_nothing_the_second_time() -> None:
    d = flaky()
    run = started(begin(d).run, d, "call").run
    error = TaskError("x", "flaky")
    once = engine.task_failed(run, d, "call", 1, error, T0)
    twice = engine.task_failed(once.run, d, "call", 1, error, T0)
    assert not twice.changed
    assert twice.run == once.run
    assert twice.run.task("call").attempt == 2


def test_events_for_an_older_attempt_change_nothing() -> None:
    d = flaky(initial_backoff_seconds=0)
    run = fail(begin(d).run, d, "call").run
    assert run.task("call").attempt == 2
    assert not engine.task_started(run, d, "call", 1, "ex-1", T0, TIMING).changed
    assert not engine.task_succeeded(run, d, "call", 1, "late", T0).changed
    assert not engine.task_failed(run, d, "call", 1, TaskError("x", "y"), T0).changed


def test_an_approval_decided_twice_changes_nothing_the_second_time() -> None:
    d = approval_flow("ship")
    run = begin(d).run
    once = engine.approval_decided(run, d, "approve", True, "alice", "", T0)
    twice = engine.approval_decided(once.run, d, "approve", False, "bob", "no", T0)
    assert not twice.changed
    assert twice.run == once.run


def test_a_child_run_finished_twice_changes_nothing_the_second_time() -> None:
    d = calling()
    run = begin(d, {"order": 7}).run
    child_id = run.task("call").child_run_id
    args = ("call", 1, child_id, RunStatus.SUCCEEDED, {"x": 1}, None, T0)
    once = engine.child_run_finished(run, d, *args)
    twice = engine.child_run_finished(once.run, d, *args)
    assert not twice.changed
    assert twice.run == once.run


def test_resend_effects_re_dispatches_tasks_dispatched_but_not_started() -> None:
    d = diamond()
    after_a = succeed(begin(d).run, d, "a", {"n": 1})
    resent = engine.resend_effects(after_a.run, d, T0, TIMING)
    assert sorted(dispatched(resent)) == ["b", "c"]
    assert sorted(effects_of(resent, engine.DispatchTask), key=lambda e: e.node.id) == sorted(
        effects_of(after_a, engine.DispatchTask), key=lambda e: e.node.id
    )


def test_resend_effects_keeps_the_lease_of_a_running_task() -> None:
    d = linear()
    run = started(begin(d).run, d, "a").run
    now = T0 + timedelta(seconds=3)
    resent = engine.resend_effects(run, d, now, TIMING)
    assert dispatched(resent) == []
    assert timers(resent) == [
        engine.ScheduleTimer("a", 1, engine.TimerKind.LEASE, now + timedelta(seconds=30), True)
    ]


def test_resend_effects_re_schedules_a_retry_timer_keeping_the_existing_one() -> None:
    d = flaky()
    run = fail(begin(d).run, d, "call").run
    resent = engine.resend_effects(run, d, T0 + timedelta(seconds=1), TIMING)
    assert dispatched(resent) == []
    assert timers(resent) == [
        engine.ScheduleTimer(
            "call", 2, engine.TimerKind.RETRY, T0 + timedelta(seconds=2), keep_existing=True
        )
    ]


def test_resend_effects_re_schedules_a_wait_timer_keeping_the_existing_one() -> None:
    d = delayed(seconds=90)
    run = begin(d).run
    resent = engine.resend_effects(run, d, T0 + timedelta(seconds=5), TIMING)
    assert resent == (
        engine.ScheduleTimer(
            "pause", 1, engine.TimerKind.WAIT, T0 + timedelta(seconds=90), keep_existing=True
        ),
    )


def test_resend_effects_re_schedules_the_deadline_of_a_running_task() -> None:
    d = timed()
    run = started(begin(d).run, d, "slow", now=T0).run
    resent = engine.resend_effects(run, d, T0 + timedelta(seconds=3), TIMING)
    deadlines = [t for t in timers(resent) if t.kind is engine.TimerKind.DEADLINE]
    assert deadlines == [
        engine.ScheduleTimer(
            "slow", 1, engine.TimerKind.DEADLINE, T0 + timedelta(seconds=65), keep_existing=True
        )
    ]


def test_resend_effects_has_nothing_for_a_pending_approval() -> None:
    d = approval_flow("ship")
    assert engine.resend_effects(begin(d).run, d, T0, TIMING) == ()


def test_resend_effects_restarts_a_child_run_with_the_same_id() -> None:
    d = calling()
    decision = begin(d, {"order": 7})
    resent = engine.resend_effects(decision.run, d, T0, TIMING)
    assert effects_of(resent, engine.StartChildRun) == effects_of(decision, engine.StartChildRun)


def test_resend_effects_notifies_the_parent_of_a_finished_child_run() -> None:
    d = linear()
    run = succeed(begin(d, parent=PARENT, run_id="child-1").run, d, "a").run
    run = succeed(run, d, "b", {"invoice": "I-1"}).run
    assert engine.resend_effects(run, d, T0, TIMING) == (
        engine.NotifyParent(
            PARENT, "child-1", RunStatus.SUCCEEDED, {"b": {"invoice": "I-1"}}, None
        ),
    )


def test_resend_effects_has_nothing_for_a_finished_run_without_a_parent() -> None:
    d = linear()
    run = succeed(succeed(begin(d).run, d, "a").run, d, "b").run
    assert run.status is RunStatus.SUCCEEDED
    assert engine.resend_effects(run, d, T0, TIMING) == ()


# --- warnings --------------------------------------------------------------------------


def test_warnings_are_stored_on_the_task_and_listed_on_the_run_by_node() -> None:
    d = linear()
    run = succeed(begin(d).run, d, "a", warnings=("slow response", "retried DNS")).run
    run = succeed(run, d, "b", warnings=("row count above 10",)).run
    assert run.task("a").warnings == ("slow response", "retried DNS")
    assert run.warnings == (
        "a: slow response",
        "a: retried DNS",
        "b: row count above 10",
    )
    assert run.status is RunStatus.SUCCEEDED


def test_a_task_without_warnings_adds_none_to_the_run() -> None:
    d = linear()
    run = succeed(begin(d).run, d, "a").run
    assert run.task("a").warnings == ()
    assert run.warnings == ()


# --- a failure while something waits --------------------------------------------------


def failing_beside_an_approval() -> WorkflowDefinition:
    approve = {"id": "approve", "type": "approval", "config": {}}
    pause = {"id": "pause", "type": "wait", "config": {"hours": 1}}
    return workflow(
        [code("work"), approve, pause],
        [edge("start", "work"), edge("start", "approve"), edge("start", "pause")],
    )


def test_a_failure_cancels_waiting_tasks_and_fails_the_run_once_nothing_is_in_flight() -> None:
    d = failing_beside_an_approval()
    run = begin(d).run
    assert run.status is RunStatus.RUNNING
    assert status(run, "approve") is TaskStatus.WAITING
    error = TaskError("code.exception", "boom")
    decision = fail(run, d, "work", error)
    assert status(decision.run, "approve") is TaskStatus.CANCELLED
    assert status(decision.run, "pause") is TaskStatus.CANCELLED
    assert engine.TaskStatusChanged("approve", TaskStatus.CANCELLED, 1) in decision.effects
    assert decision.run.status is RunStatus.FAILED
    assert decision.run.error == error
    assert decision.run.failed_node_id == "work"
    assert engine.CancelTimers() in decision.effects


def test_a_failure_waits_for_tasks_still_in_flight_before_cancelling_approvals() -> None:
    d = workflow(
        [code("work"), code("other"), {"id": "approve", "type": "approval", "config": {}}],
        [edge("start", "work"), edge("start", "other"), edge("start", "approve")],
    )
    run = fail(begin(d).run, d, "work").run
    assert run.status is RunStatus.RUNNING
    assert status(run, "approve") is TaskStatus.WAITING
    done = succeed(run, d, "other")
    assert status(done.run, "approve") is TaskStatus.CANCELLED
    assert done.run.status is RunStatus.FAILED


def test_a_decision_on_a_cancelled_approval_changes_nothing() -> None:
    d = failing_beside_an_approval()
    run = fail(begin(d).run, d, "work").run
    assert not engine.approval_decided(run, d, "approve", True, "alice", "", T0).changed


def test_timers_of_a_finished_run_change_nothing() -> None:
    d = failing_beside_an_approval()
    run = fail(begin(d).run, d, "work").run
    assert not engine.timer_fired(run, d, "pause", 1, engine.TimerKind.WAIT, T0).changed


# --- transition tables -----------------------------------------------------------------


def test_transition_tables_forbid_illegal_moves() -> None:
    d = linear()
    run = engine.new_run("r", "w", 1, d, TriggerInfo(TriggerKind.API), T0)
    done = transition_run(transition_run(run, RunStatus.RUNNING, T0), RunStatus.SUCCEEDED, T0)
    with pytest.raises(InvalidTransitionError):
        transition_run(done, RunStatus.FAILED, T0)
    with pytest.raises(InvalidTransitionError):
        transition_run(run, RunStatus.SUCCEEDED, T0)  # queued runs never skip running
    task = transition_task(run.task("a"), TaskStatus.RUNNING, T0)
    with pytest.raises(InvalidTransitionError):
        transition_task(task, TaskStatus.SKIPPED, T0)
