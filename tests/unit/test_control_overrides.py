"""A per-run config override (a resolution's new threshold) holds for every attempt of the
task: the retried one, one dispatched by a retry timer, one re-sent after a redelivery and
one moved off a lost executor - not only the first attempt of the new round."""

from __future__ import annotations

from datetime import timedelta

from flowyard.domain import engine
from flowyard.domain.control import Command, apply_command
from flowyard.domain.run import RunState

from tests.unit.test_engine import (
    T0,
    TIMING,
    begin,
    chain,
    effects_of,
    fail,
    retrying,
    started,
    workflow,
)

OVERRIDE = {"source": "result = 'overridden'"}


def configs(decision: engine.Decision | tuple[engine.Effect, ...]) -> list[object]:
    return [e.node.config.get("source") for e in effects_of(decision, engine.DispatchTask)]


def overridden_run(**policy: object) -> tuple[object, RunState, engine.Decision]:
    d = workflow([retrying("a", **policy)], chain("start", "a"))
    run = begin(d).run
    while run.status.value != "failed":
        run = fail(run, d, "a").run
    command = Command("retry_task", "dana", command_id="c1", node_id="a", config_override=OVERRIDE)
    decision = apply_command(run, d, command, T0)
    assert configs(decision) == ["result = 'overridden'"]
    return d, decision.run, decision


def test_an_immediate_retry_keeps_the_override() -> None:
    d, run, _ = overridden_run(max_attempts=2, initial_backoff_seconds=0)
    retried = fail(run, d, "a")  # attempt 1 of the new round fails; no backoff
    assert configs(retried) == ["result = 'overridden'"]


def test_a_timed_retry_keeps_the_override() -> None:
    d, run, _ = overridden_run(max_attempts=2, initial_backoff_seconds=5)
    run = fail(run, d, "a").run
    task = run.task("a")
    assert task.retry_scheduled
    fired = engine.timer_fired(
        run, d, "a", task.attempt, engine.TimerKind.RETRY, T0 + timedelta(seconds=6)
    )
    assert configs(fired) == ["result = 'overridden'"]


def test_a_redelivery_resends_the_overridden_dispatch() -> None:
    d, run, _ = overridden_run()
    assert configs(engine.resend_effects(run, d, T0, TIMING)) == ["result = 'overridden'"]


def test_an_attempt_moved_off_a_lost_executor_keeps_the_override() -> None:
    d, run, _ = overridden_run()
    run = started(run, d, "a").run
    lost = engine.timer_fired(
        run, d, "a", run.task("a").attempt, engine.TimerKind.LEASE, T0 + timedelta(minutes=1)
    )
    assert configs(lost) == ["result = 'overridden'"]
