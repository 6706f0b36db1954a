"""Commands that would leave a run stuck are refused with the reason (going on with a run
whose trigger never ran, rerunning from the trigger itself), and a stop is not undone by
an executor lost meanwhile."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flowyard.domain import engine
from flowyard.domain.control import Command, apply_command, command_problem
from flowyard.domain.run import RunStatus, TaskError, TaskStatus, TriggerInfo, TriggerKind

from tests.unit.test_engine import T0, begin, chain, code, fail, started, succeed, workflow

D = workflow([code("a")], chain("start", "a"))


def never_started() -> engine.RunState:
    run = engine.new_run("r1", "w1", 1, D, TriggerInfo(TriggerKind.API, {}), T0)
    return engine.reject(run, TaskError("workflow.paused", "workflow 'wf' is paused"), T0).run


@pytest.mark.parametrize(
    "command",
    [
        Command("resume", "dana", command_id="c1"),
        Command("restart", "dana", command_id="c2"),
        Command("rerun_from", "dana", command_id="c3", node_id="a"),
    ],
)
def test_a_run_refused_before_it_started_cannot_go_on(command: Command) -> None:
    run = never_started()
    assert run.status is RunStatus.FAILED
    problem = command_problem(run, D, command) or ""
    assert "never started (workflow.paused)" in problem and "replay" in problem
    assert not apply_command(run, D, command, T0).changed


def test_rerun_from_the_trigger_is_refused() -> None:
    run = succeed(begin(D).run, D, "a", 1).run
    command = Command("rerun_from", "dana", command_id="c1", node_id="start")
    assert "is the trigger" in (command_problem(run, D, command) or "")
    assert not apply_command(run, D, command, T0).changed
    from_a = Command("rerun_from", "dana", command_id="c2", node_id="a")
    assert apply_command(run, D, from_a, T0).run.status is RunStatus.RUNNING


def test_the_refusal_names_the_task_state_in_plain_words() -> None:
    run = succeed(begin(D).run, D, "a", 1).run
    problem = command_problem(run, D, Command("retry_task", "dana", node_id="a"))
    assert problem == "task 'a' is succeeded; only a failed task can be retried"
    failed = fail(begin(D).run, D, "a").run
    assert command_problem(failed, D, Command("skip_task", "dana", node_id="start")) == (
        "task 'start' is succeeded; only a failed task can be skipped"
    )


def test_a_task_whose_executor_is_lost_while_the_run_stops_is_cancelled_not_run_again() -> None:
    run = started(begin(D).run, D, "a").run
    run = apply_command(run, D, Command("stop", "dana", command_id="s"), T0).run
    assert run.status is RunStatus.STOPPING
    lost = engine.timer_fired(run, D, "a", 1, engine.TimerKind.LEASE, T0 + timedelta(minutes=1))
    assert not [e for e in lost.effects if isinstance(e, engine.DispatchTask)]
    assert lost.run.task("a").status is TaskStatus.CANCELLED
    assert lost.run.task("a").error is not None
    assert lost.run.status is RunStatus.STOPPED


def test_a_lost_non_cancellable_task_still_runs_to_completion_on_a_stop() -> None:
    d = workflow([code("a", cancellable=False)], chain("start", "a"))
    run = started(begin(d).run, d, "a").run
    run = apply_command(run, d, Command("stop", "dana", command_id="s"), T0).run
    lost = engine.timer_fired(run, d, "a", 1, engine.TimerKind.LEASE, T0 + timedelta(minutes=1))
    assert [e.attempt for e in lost.effects if isinstance(e, engine.DispatchTask)] == [2]
    assert lost.run.status is RunStatus.STOPPING
