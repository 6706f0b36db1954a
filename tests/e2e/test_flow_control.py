"""How runs flow on the real stack: parallel branches, conditions, durable waits, approvals,
retries and per-workflow concurrency limits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from flowyard import codec
from flowyard.adapters.kafka import KafkaPublisher
from flowyard.config import Settings
from flowyard.v1 import events_pb2, run_pb2

from tests.e2e.conftest import RunningFlowyard
from tests.e2e.runs import apply, finished_run, get_run, output, start, task
from tests.e2e.servers import Outside, Reply, Request, json_reply

pytestmark = pytest.mark.e2e

Eventually = Callable[..., Awaitable[Any]]

SUCCEEDED, FAILED = run_pb2.RUN_STATUS_SUCCEEDED, run_pb2.RUN_STATUS_FAILED
T_SUCCEEDED, T_FAILED = run_pb2.TASK_STATUS_SUCCEEDED, run_pb2.TASK_STATUS_FAILED
T_SKIPPED, T_PENDING = run_pb2.TASK_STATUS_SKIPPED, run_pb2.TASK_STATUS_PENDING
T_WAITING = run_pb2.TASK_STATUS_WAITING


@pytest.fixture
def settings(settings: Settings, outside: Outside) -> Settings:
    """Short timer-poll, heartbeat and lease periods; loopback servers for http nodes."""
    return outside.configure(settings)


# --- helpers ---------------------------------------------------------------------------


def statuses(run: run_pb2.Run) -> dict[str, str]:
    return {
        t.node_id: run_pb2.TaskStatus.Name(t.status).removeprefix("TASK_STATUS_") for t in run.tasks
    }


def at(stamp: Any) -> datetime:
    moment: datetime = stamp.ToDatetime()
    return moment


def naive(moment: datetime) -> datetime:
    """UTC without the zone, as protobuf's ``ToDatetime()`` gives it."""
    offset = moment.utcoffset()
    return (moment - offset).replace(tzinfo=None) if offset is not None else moment


def close(delta: timedelta, expected: timedelta) -> bool:
    """Equal within the millisecond MongoDB keeps."""
    return abs(delta - expected) <= timedelta(milliseconds=2)


def code(node_id: str, source: str, **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "type": "code", "config": {"source": source}, **extra}


def edges(*pairs: str) -> list[dict[str, Any]]:
    """``"a->b"`` or ``"c->d:true"`` (a condition's branch) to edge mappings."""
    found: list[dict[str, Any]] = []
    for pair in pairs:
        source, _, rest = pair.partition("->")
        target, _, when = rest.partition(":")
        found.append({"from": source, "to": target, **({"when": when} if when else {})})
    return found


TRIGGER = {"id": "start", "type": "trigger"}


async def publish_decision(
    settings: Settings, run_id: str, node_id: str, approved: bool, by: str, comment: str
) -> None:
    envelope = codec.new_envelope(run_id)
    envelope.approval_decided.CopyFrom(
        events_pb2.ApprovalDecided(
            node_id=node_id, approved=approved, decided_by=by, comment=comment
        )
    )
    async with KafkaPublisher(settings.kafka_bootstrap, "test") as publisher:
        await publisher.publish(settings.topics.commands, run_id, envelope)


# --- fan-out / fan-in ------------------------------------------------------------------


async def test_parallel_branches_run_at_the_same_time_and_the_join_waits_for_both(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    nap = "time.sleep(1)\nresult = {{'side': '{side}'}}"
    await apply(
        flowyard,
        {
            "name": "fan-out-in",
            "nodes": [
                TRIGGER,
                code("left", nap.format(side="left")),
                code("right", nap.format(side="right")),
                code("join", "result = sorted(upstream)"),
            ],
            "edges": edges("start->left", "start->right", "left->join", "right->join"),
        },
    )

    run = await finished_run(flowyard, await start(flowyard, "fan-out-in"), eventually)

    assert run.status == SUCCEEDED, (run.error, statuses(run))
    left, right, join = task(run, "left"), task(run, "right"), task(run, "join")
    # each branch ran while the other did: their intervals overlap
    assert at(left.started_at) < at(right.finished_at), (left, right)
    assert at(right.started_at) < at(left.finished_at), (left, right)
    # the same seen by the executor, which times the attempts themselves
    [left_try], [right_try] = left.attempts, right.attempts
    assert at(left_try.started_at) < at(right_try.finished_at)
    assert at(right_try.started_at) < at(left_try.finished_at)
    # the join started after both had finished and saw both outputs
    assert at(join.started_at) >= max(at(left.finished_at), at(right.finished_at))
    assert output(run, "join") == ["left", "right", "start"]


# --- conditions ------------------------------------------------------------------------


async def test_a_condition_runs_one_branch_skips_the_other_and_the_join_still_runs(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    await apply(
        flowyard,
        {
            "name": "branching",
            "nodes": [
                TRIGGER,
                {
                    "id": "check",
                    "type": "condition",
                    "config": {"expression": "trigger.amount > 100"},
                },
                code("big", "result = 'manual review'"),
                code("small", "result = 'auto'"),
                code("small_log", "result = 'logged'"),
                code("join", "result = sorted(upstream)"),
            ],
            "edges": edges(
                "start->check",
                "check->big:true",
                "check->small:false",
                "small->small_log",
                "big->join",
                "small_log->join",
            ),
        },
    )

    big_run = await finished_run(
        flowyard, await start(flowyard, "branching", {"amount": 500}), eventually
    )
    small_run = await finished_run(
        flowyard, await start(flowyard, "branching", {"amount": 5}), eventually
    )

    assert big_run.status == SUCCEEDED, (big_run.error, statuses(big_run))
    assert statuses(big_run) == {
        "start": "SUCCEEDED",
        "check": "SUCCEEDED",
        "big": "SUCCEEDED",
        "small": "SKIPPED",
        "small_log": "SKIPPED",
        "join": "SUCCEEDED",
    }
    assert output(big_run, "check")["result"] is True
    assert output(big_run, "check")["branch"] == "true"
    assert output(big_run, "join") == ["big", "check", "start"]

    assert small_run.status == SUCCEEDED, (small_run.error, statuses(small_run))
    assert statuses(small_run) == {
        "start": "SUCCEEDED",
        "check": "SUCCEEDED",
        "big": "SKIPPED",
        "small": "SUCCEEDED",
        "small_log": "SUCCEEDED",
        "join": "SUCCEEDED",
    }
    assert output(small_run, "check")["branch"] == "false"
    assert output(small_run, "join") == ["check", "small", "small_log", "start"]


async def test_nested_conditions_skip_everything_behind_a_branch_not_taken(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    await apply(
        flowyard,
        {
            "name": "nested-branching",
            "nodes": [
                TRIGGER,
                {
                    "id": "in_eu",
                    "type": "condition",
                    "config": {"expression": "trigger.region == 'eu'"},
                },
                {
                    "id": "large",
                    "type": "condition",
                    "config": {"expression": "trigger.amount > 100"},
                },
                code("eu_large", "result = 'eu large'"),
                code("eu_small", "result = 'eu small'"),
                code("elsewhere", "result = 'elsewhere'"),
                code(
                    "done",
                    "result = [v for k, v in sorted(upstream.items()) if isinstance(v, str)]",
                ),
            ],
            "edges": edges(
                "start->in_eu",
                "in_eu->large:true",
                "in_eu->elsewhere:false",
                "large->eu_large:true",
                "large->eu_small:false",
                "eu_large->done",
                "eu_small->done",
                "elsewhere->done",
            ),
        },
    )

    eu_small = await finished_run(
        flowyard,
        await start(flowyard, "nested-branching", {"region": "eu", "amount": 50}),
        eventually,
    )
    us = await finished_run(
        flowyard,
        await start(flowyard, "nested-branching", {"region": "us", "amount": 500}),
        eventually,
    )

    assert eu_small.status == SUCCEEDED, (eu_small.error, statuses(eu_small))
    assert statuses(eu_small) == {
        "start": "SUCCEEDED",
        "in_eu": "SUCCEEDED",
        "large": "SUCCEEDED",
        "eu_large": "SKIPPED",
        "eu_small": "SUCCEEDED",
        "elsewhere": "SKIPPED",
        "done": "SUCCEEDED",
    }
    assert output(eu_small, "done") == ["eu small"]

    assert us.status == SUCCEEDED, (us.error, statuses(us))
    assert statuses(us) == {
        "start": "SUCCEEDED",
        "in_eu": "SUCCEEDED",
        "large": "SKIPPED",  # behind the branch not taken: not even evaluated
        "eu_large": "SKIPPED",
        "eu_small": "SKIPPED",
        "elsewhere": "SUCCEEDED",
        "done": "SUCCEEDED",
    }
    assert output(us, "done") == ["elsewhere"]


async def test_a_condition_on_a_missing_field_fails_the_run_naming_the_field(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    await apply(
        flowyard,
        {
            "name": "missing-field",
            "nodes": [
                TRIGGER,
                {
                    "id": "gold",
                    "type": "condition",
                    "config": {"expression": "trigger.customer.tier == 'gold'"},
                },
                code("reward", "result = 1"),
                code("regular", "result = 0"),
            ],
            "edges": edges("start->gold", "gold->reward:true", "gold->regular:false"),
        },
    )

    run_id = await start(flowyard, "missing-field", {"customer": {"id": 7, "name": "Ada"}})
    run = await finished_run(flowyard, run_id, eventually)

    assert run.status == FAILED
    gold = task(run, "gold")
    assert gold.status == T_FAILED
    assert gold.error.code == "expression.missing_field"
    assert "trigger.customer.tier" in gold.error.message
    assert "id" in gold.error.message and "name" in gold.error.message  # what exists there
    assert run.error.code == "expression.missing_field" and run.failed_node_id == "gold"
    assert task(run, "reward").status == T_PENDING
    assert task(run, "regular").status == T_PENDING


# --- durable wait ----------------------------------------------------------------------


async def test_a_wait_node_parks_the_run_until_its_timer_fires(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    await apply(
        flowyard,
        {
            "name": "wait-two-seconds",
            "nodes": [
                TRIGGER,
                {"id": "pause", "type": "wait", "config": {"seconds": 2}},
                code("after", "result = 'resumed'"),
            ],
            "edges": edges("start->pause", "pause->after"),
        },
    )
    run_id = await start(flowyard, "wait-two-seconds")

    async def parked() -> run_pb2.Run:
        run = await get_run(flowyard, run_id)
        assert run.status == run_pb2.RUN_STATUS_WAITING, run_pb2.RunStatus.Name(run.status)
        return run

    waiting = await eventually(parked, within=10)
    parked_pause = task(waiting, "pause")
    assert parked_pause.status == T_WAITING
    assert parked_pause.HasField("due_at") and parked_pause.HasField("started_at")
    due = at(parked_pause.due_at)
    assert close(due - at(parked_pause.started_at), timedelta(seconds=2))
    assert task(waiting, "after").status == T_PENDING

    run = await finished_run(flowyard, run_id, eventually)

    assert run.status == SUCCEEDED, (run.error, statuses(run))
    pause = task(run, "pause")
    assert pause.status == T_SUCCEEDED
    resumed = output(run, "pause")
    scheduled = naive(datetime.fromisoformat(resumed["scheduled_resume_at"]))
    resumed_at = naive(datetime.fromisoformat(resumed["resumed_at"]))
    assert close(scheduled - due, timedelta(0))  # the time GetRun showed while it waited
    assert resumed_at >= scheduled
    assert resumed["late_seconds"] >= 0
    assert at(task(run, "after").started_at) >= at(pause.finished_at)
    assert output(run, "after") == "resumed"
    # due_at is "when a timer acts on this task next" (run.proto): nothing does any more
    assert not pause.HasField("due_at"), f"finished wait task still has due_at {pause.due_at}"


# --- approvals -------------------------------------------------------------------------

APPROVAL = {
    "name": "needs-approval",
    "nodes": [
        TRIGGER,
        {"id": "approve", "type": "approval", "config": {"approvers": ["alice", "bob"]}},
        code("ship", "result = 'shipped'"),
    ],
    "edges": edges("start->approve", "approve->ship"),
}


async def waiting_for_approval(
    flowyard: RunningFlowyard, run_id: str, eventually: Eventually
) -> run_pb2.Run:
    async def check() -> run_pb2.Run:
        run = await get_run(flowyard, run_id)
        assert run.status == run_pb2.RUN_STATUS_WAITING, run_pb2.RunStatus.Name(run.status)
        assert task(run, "approve").status == T_WAITING
        return run

    result: run_pb2.Run = await eventually(check, within=15)
    return result


async def test_an_approved_approval_lets_the_run_go_on(
    flowyard: RunningFlowyard, settings: Settings, eventually: Eventually
) -> None:
    await apply(flowyard, APPROVAL)
    run_id = await start(flowyard, "needs-approval")
    waiting = await waiting_for_approval(flowyard, run_id, eventually)
    assert task(waiting, "ship").status == T_PENDING

    await publish_decision(settings, run_id, "approve", True, "alice", "looks fine")
    run = await finished_run(flowyard, run_id, eventually)

    assert run.status == SUCCEEDED, (run.error, statuses(run))
    decision = output(run, "approve")
    assert decision["approved"] is True
    assert decision["decided_by"] == "alice" and decision["comment"] == "looks fine"
    assert decision["decided_at"]
    assert output(run, "ship") == "shipped"


async def test_a_rejected_approval_fails_the_run(
    flowyard: RunningFlowyard, settings: Settings, eventually: Eventually
) -> None:
    await apply(flowyard, APPROVAL)
    run_id = await start(flowyard, "needs-approval")
    await waiting_for_approval(flowyard, run_id, eventually)

    await publish_decision(settings, run_id, "approve", False, "bob", "too risky")
    run = await finished_run(flowyard, run_id, eventually)

    assert run.status == FAILED
    approve = task(run, "approve")
    assert approve.status == T_FAILED
    assert approve.error.code == "approval.rejected"
    assert "bob" in approve.error.message and "too risky" in approve.error.message
    assert run.error.code == "approval.rejected" and run.failed_node_id == "approve"
    assert output(run, "approve")["decided_by"] == "bob"
    assert task(run, "ship").status == T_PENDING


# --- retries ---------------------------------------------------------------------------


async def test_a_failing_node_is_retried_after_its_backoff_then_fails_the_run(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    await apply(
        flowyard,
        {
            "name": "always-fails",
            "nodes": [
                TRIGGER,
                code(
                    "flaky",
                    "raise RuntimeError(f'boom {time.time_ns()}')",
                    retry={"max_attempts": 2, "initial_backoff_seconds": 1},
                ),
            ],
            "edges": edges("start->flaky"),
        },
    )

    run = await finished_run(flowyard, await start(flowyard, "always-fails"), eventually)

    assert run.status == FAILED
    flaky = task(run, "flaky")
    assert flaky.status == T_FAILED and flaky.attempt == 2
    first, second = flaky.attempts
    assert (first.number, second.number) == (1, 2)
    for attempt in (first, second):
        assert attempt.status == T_FAILED
        assert attempt.error.code == "code.exception"
        assert attempt.error.message.startswith("RuntimeError: boom ")
    assert first.error.message != second.error.message  # each attempt keeps its own error
    assert flaky.error.message == second.error.message == run.error.message
    assert at(second.started_at) - at(first.finished_at) >= timedelta(seconds=0.95)


async def test_a_retried_http_node_succeeds_on_its_second_attempt(
    flowyard: RunningFlowyard, outside: Outside, eventually: Eventually
) -> None:
    def unstable(request: Request) -> Reply:
        if len(outside.http.received("/unstable")) == 1:
            return json_reply({"error": "warming up"}, status=503)
        return json_reply({"ok": True})

    outside.http.route("/unstable", unstable)
    await apply(
        flowyard,
        {
            "name": "http-retry",
            "nodes": [
                TRIGGER,
                {
                    "id": "call",
                    "type": "http",
                    "config": {"url": outside.http.url("/unstable")},
                    "retry": {"max_attempts": 3, "initial_backoff_seconds": 0.2},
                },
            ],
            "edges": edges("start->call"),
        },
    )

    run = await finished_run(flowyard, await start(flowyard, "http-retry"), eventually)

    assert run.status == SUCCEEDED, (run.error, statuses(run))
    call = task(run, "call")
    assert [a.status for a in call.attempts] == [T_FAILED, T_SUCCEEDED]
    assert call.attempts[0].error.code == "http.status"
    assert "503" in call.attempts[0].error.message
    assert output(run, "call")["body"] == {"ok": True}
    assert len(outside.http.received("/unstable")) == 2


# --- concurrency -----------------------------------------------------------------------


def limited(name: str, when_full: str, seconds: float) -> dict[str, Any]:
    return {
        "name": name,
        "concurrency": {"max_runs": 1, "when_full": when_full},
        "nodes": [TRIGGER, {"id": "pause", "type": "wait", "config": {"seconds": seconds}}],
        "edges": edges("start->pause"),
    }


async def started_run(flowyard: RunningFlowyard, run_id: str, eventually: Eventually) -> None:
    async def check() -> None:
        run = await get_run(flowyard, run_id)
        active = (run_pb2.RUN_STATUS_RUNNING, run_pb2.RUN_STATUS_WAITING)
        assert run.status in active, run_pb2.RunStatus.Name(run.status)

    await eventually(check, within=10)


async def test_a_full_workflow_queues_the_next_run_until_a_slot_frees(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    await apply(flowyard, limited("one-at-a-time", "queue", 1.5))
    first_id = await start(flowyard, "one-at-a-time")
    await started_run(flowyard, first_id, eventually)
    second_id = await start(flowyard, "one-at-a-time")

    async def held_back() -> None:
        first, second = await get_run(flowyard, first_id), await get_run(flowyard, second_id)
        assert first.status == run_pb2.RUN_STATUS_WAITING, run_pb2.RunStatus.Name(first.status)
        assert second.status == run_pb2.RUN_STATUS_QUEUED, run_pb2.RunStatus.Name(second.status)

    # the second run is created by the scheduler and stays queued while the first waits
    await eventually(held_back, within=10)

    first = await finished_run(flowyard, first_id, eventually)
    second = await finished_run(flowyard, second_id, eventually)

    assert first.status == SUCCEEDED and second.status == SUCCEEDED, (first.error, second.error)
    assert at(second.started_at) >= at(first.finished_at)
    assert at(task(second, "pause").started_at) >= at(first.finished_at)


async def test_a_full_workflow_rejects_the_next_run_when_told_to(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    await apply(flowyard, limited("reject-extra", "reject", 1.5))
    first_id = await start(flowyard, "reject-extra")
    await started_run(flowyard, first_id, eventually)
    second_id = await start(flowyard, "reject-extra")

    second = await finished_run(flowyard, second_id, eventually)
    assert second.status == FAILED
    assert second.error.code == "concurrency.limit"
    assert "reject-extra" in second.error.message
    assert all(t.status == T_PENDING for t in second.tasks)
    still = await get_run(flowyard, first_id)
    assert still.status == run_pb2.RUN_STATUS_WAITING  # the rejection left the first alone

    first = await finished_run(flowyard, first_id, eventually)
    assert first.status == SUCCEEDED
    # the slot was given back: a run started now is admitted
    third = await finished_run(flowyard, await start(flowyard, "reject-extra"), eventually)
    assert third.status == SUCCEEDED, third.error
