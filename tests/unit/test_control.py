"""Operators' commands on a run (pure): stop, retry, restart, rerun, skip, resume,
resolutions and comparison. What a user sees: statuses, attempts, audit, effects."""

from __future__ import annotations

from typing import Any

from flowyard.domain import engine
from flowyard.domain.compare import compare_runs
from flowyard.domain.control import Command, apply_command, command_problem
from flowyard.domain.resolutions import command_for, resolutions_for
from flowyard.domain.run import RunState, RunStatus, TaskError, TaskStatus

from tests.unit.test_engine import (
    T0,
    begin,
    chain,
    code,
    dispatched,
    edge,
    effects_of,
    fail,
    started,
    status,
    succeed,
    workflow,
)


def cmd(action: str, node_id: str = "", **extra: Any) -> Command:
    return Command(action, actor="dana", comment="why not", node_id=node_id, **extra)


def failed_at_b() -> tuple[Any, RunState]:
    d = workflow([code("a"), code("b"), code("c")], chain("start", "a", "b", "c"))
    run = succeed(begin(d).run, d, "a", 1).run
    run = fail(run, d, "b").run
    assert run.status is RunStatus.FAILED
    return d, run


def test_retry_task_runs_a_new_attempt_and_the_run_continues_to_success() -> None:
    d, run = failed_at_b()
    decision = apply_command(run, d, cmd("retry_task", "b", command_id="c1"), T0)
    run = decision.run
    assert run.status is RunStatus.RUNNING and run.error is None
    assert dispatched(decision) == ["b"]
    assert run.task("b").attempt == 2 and status(run, "b") is TaskStatus.PENDING
    run = succeed(run, d, "b", 2).run
    run = succeed(run, d, "c", 3).run
    assert run.status is RunStatus.SUCCEEDED
    assert [(a.actor, a.action, a.node_id, a.comment) for a in run.audit] == [
        ("dana", "retry_task", "b", "why not")
    ]


def test_the_same_command_twice_acts_once() -> None:
    d, run = failed_at_b()
    once = apply_command(run, d, cmd("retry_task", "b", command_id="c1"), T0).run
    twice = apply_command(once, d, cmd("retry_task", "b", command_id="c1"), T0)
    assert not twice.changed and twice.run == once


def test_commands_that_do_not_fit_the_state_name_it_and_change_nothing() -> None:
    d, run = failed_at_b()
    assert "succeeded" in (command_problem(run, d, cmd("retry_task", "a")) or "")
    assert not apply_command(run, d, cmd("retry_task", "a"), T0).changed
    done = apply_command(run, d, cmd("stop"), T0)
    assert not done.changed
    assert "failed" in (command_problem(run, d, cmd("stop")) or "")
    running = begin(d).run
    assert "running" in (command_problem(running, d, cmd("restart")) or "")


def test_stop_cancels_running_tasks_and_stops_when_they_report() -> None:
    d = workflow([code("a"), code("b")], [edge("start", "a"), edge("start", "b")])
    run = begin(d).run
    run = started(run, d, "a").run  # a runs, b was dispatched but not started
    decision = apply_command(run, d, cmd("stop"), T0)
    run = decision.run
    assert run.status is RunStatus.STOPPING and run.stopped_by == "dana"
    cancels = {(c.node_id, c.attempt) for c in effects_of(decision, engine.CancelTask)}
    assert cancels == {("a", 1), ("b", 1)}
    assert status(run, "b") is TaskStatus.CANCELLED
    killed = TaskError(engine.CANCELLED_CODE, "stopped by an operator while it ran")
    run = engine.task_failed(run, d, "a", 1, killed, T0).run
    assert status(run, "a") is TaskStatus.CANCELLED
    assert run.status is RunStatus.STOPPED


def test_a_non_cancellable_task_finishes_and_its_result_is_kept() -> None:
    d = workflow([code("a", cancellable=False), code("b")], chain("start", "a", "b"))
    run = started(begin(d).run, d, "a").run
    decision = apply_command(run, d, cmd("stop"), T0)
    assert not effects_of(decision, engine.CancelTask)
    assert decision.run.status is RunStatus.STOPPING
    run = engine.task_succeeded(decision.run, d, "a", 1, {"done": True}, T0).run
    assert status(run, "a") is TaskStatus.SUCCEEDED and run.task("a").output == {"done": True}
    assert status(run, "b") is TaskStatus.PENDING  # nothing new starts after a stop
    assert run.status is RunStatus.STOPPED


def test_stop_with_cleanup_runs_the_cleanup_nodes_then_stops() -> None:
    d = workflow(
        [code("a"), code("undo", cleanup=True), code("notify", cleanup=True)],
        [edge("start", "a"), edge("undo", "notify")],
    )
    run = started(begin(d).run, d, "a").run
    assert status(run, "undo") is TaskStatus.PENDING
    run = apply_command(run, d, cmd("stop", cleanup=True), T0).run
    killed = TaskError(engine.CANCELLED_CODE, "stopped")
    decision = engine.task_failed(run, d, "a", 1, killed, T0)
    assert dispatched(decision) == ["undo"]
    run = succeed(decision.run, d, "undo").run
    assert run.status is RunStatus.STOPPING
    run = succeed(run, d, "notify").run
    assert run.status is RunStatus.STOPPED
    assert status(run, "notify") is TaskStatus.SUCCEEDED


def test_cleanup_nodes_never_run_in_a_normal_run_and_show_skipped() -> None:
    d = workflow([code("a"), code("undo", cleanup=True)], [edge("start", "a")])
    run = succeed(begin(d).run, d, "a").run
    assert run.status is RunStatus.SUCCEEDED
    assert status(run, "undo") is TaskStatus.SKIPPED


def test_rerun_from_a_task_reruns_it_and_downstream_keeping_upstream_and_history() -> None:
    d = workflow([code("a"), code("b"), code("c")], chain("start", "a", "b", "c"))
    run = begin(d).run
    for node in ("a", "b", "c"):
        run = succeed(run, d, node, node).run
    assert run.status is RunStatus.SUCCEEDED
    decision = apply_command(run, d, cmd("rerun_from", "b"), T0)
    run = decision.run
    assert run.status is RunStatus.RUNNING
    assert dispatched(decision) == ["b"]
    assert status(run, "a") is TaskStatus.SUCCEEDED and run.task("a").output == "a"
    assert run.task("b").attempt == 2 and status(run, "c") is TaskStatus.PENDING
    run = succeed(run, d, "b", "b2").run
    run = succeed(run, d, "c", "c2").run
    assert run.status is RunStatus.SUCCEEDED and run.task("c").attempt == 2


def test_skip_continues_downstream_with_the_given_output() -> None:
    d, run = failed_at_b()
    decision = apply_command(run, d, cmd("skip_task", "b", output={"fallback": 0}), T0)
    assert dispatched(decision) == ["c"]
    run = decision.run
    assert status(run, "b") is TaskStatus.SKIPPED
    upstream = engine.task_input(run, d, "c")["upstream"]
    assert isinstance(upstream, dict) and upstream["b"] == {"fallback": 0}


def test_skip_is_refused_where_the_node_forbids_it() -> None:
    d = workflow([code("a", skippable=False)], chain("start", "a"))
    run = fail(begin(d).run, d, "a").run
    assert "skippable" in (command_problem(run, d, cmd("skip_task", "a")) or "")


def test_resume_retries_every_failed_branch() -> None:
    d = workflow([code("a"), code("b")], [edge("start", "a"), edge("start", "b")])
    run = begin(d).run
    run = fail(run, d, "a").run
    run = fail(run, d, "b").run
    assert run.status is RunStatus.FAILED
    decision = apply_command(run, d, cmd("resume"), T0)
    assert sorted(dispatched(decision)) == ["a", "b"]


def test_restart_moves_to_the_new_version_keeping_finished_work() -> None:
    d, run = failed_at_b()
    fixed = workflow([code("a"), code("b2"), code("c")], chain("start", "a", "b2", "c"))
    decision = apply_command(run, d, cmd("restart", workflow_version=2), T0, current=fixed)
    run = decision.run
    assert run.workflow_version == 2
    assert "b" not in run.tasks and dispatched(decision) == ["b2"]
    assert status(run, "a") is TaskStatus.SUCCEEDED


def test_a_threshold_failure_offers_a_per_run_override_that_retries_the_check() -> None:
    d = workflow(
        [
            {
                "id": "q",
                "type": "query",
                "config": {
                    "source": {"kind": "sqlite", "path": "/tmp/x.db", "sql": "SELECT 1"},
                    "failure_threshold": 10,
                },
            }
        ],
        chain("start", "q"),
    )
    run = fail(begin(d).run, d, "q", TaskError("threshold.failure", "12 > 10")).run
    kinds = [r.kind for r in resolutions_for(run, d)]
    assert "override_parameter" in kinds and "retry_task" in kinds
    command = command_for(run, d, "override_parameter", "q", {"failure_threshold": 50}, "dana")
    assert isinstance(command, Command)
    decision = apply_command(run, d, command, T0)
    (dispatch,) = effects_of(decision, engine.DispatchTask)
    assert dispatch.node.config["failure_threshold"] == 50
    assert d.node("q").config["failure_threshold"] == 10  # the definition is untouched
    refused = command_for(run, d, "override_parameter", "q", {"source": "x"}, "dana")
    assert isinstance(refused, str) and "failure_threshold" in refused


def test_transient_errors_suggest_a_retry_first() -> None:
    d, _ = failed_at_b()
    run = begin(d).run
    run = succeed(run, d, "a").run
    run = fail(run, d, "b", TaskError("http.connection", "refused")).run
    first = resolutions_for(run, d)[0]
    assert (first.kind, first.error_class, first.node_id) == ("retry_task", "transient", "b")
    assert first.explanation


def test_compare_shows_status_and_output_differences() -> None:
    d, failed = failed_at_b()
    ok = begin(d).run
    for node in ("a", "b", "c"):
        ok = succeed(ok, d, node, 1).run
    diff = {t.node_id: t for t in compare_runs(failed, ok)}
    assert diff["b"].status is TaskStatus.FAILED and diff["b"].other_status is TaskStatus.SUCCEEDED
    assert not diff["a"].output_differs and diff["b"].output_differs


def test_stopping_a_run_stops_the_child_run_its_task_waits_for() -> None:
    d = workflow(
        [{"id": "call", "type": "run_workflow", "config": {"workflow": "child", "wait": True}}],
        chain("start", "call"),
    )
    run = begin(d).run
    child_id = run.task("call").child_run_id
    assert status(run, "call") is TaskStatus.RUNNING and child_id
    decision = apply_command(run, d, cmd("stop"), T0)
    (stop,) = effects_of(decision, engine.StopChildRun)
    assert (stop.child_run_id, stop.actor) == (child_id, "dana")
    assert decision.run.status is RunStatus.STOPPED
    assert status(decision.run, "call") is TaskStatus.CANCELLED
