"""Operators' commands on the real stack (RunControlService): stop (cancelling running
code, letting non-cancellable tasks finish, optional cleanup), retry, restart, rerun from a
task, skip, resume, replay and compare, resolutions, idempotency, wrong-state refusals and
the audit trail returned with the run."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import threading
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from flowyard import codec
from flowyard.cli import main as cli
from flowyard.config import Settings
from flowyard.domain.access import Role
from flowyard.domain.definition import parse_definition
from flowyard.domain.json import JsonValue
from flowyard.v1 import gateway_pb2, gateway_pb2_grpc, run_pb2

from tests.e2e.conftest import RunningFlowyard
from tests.e2e.servers import Outside, Reply, Request, json_reply

pytestmark = pytest.mark.e2e

Eventually = Callable[..., Awaitable[Any]]

R = run_pb2
SUCCEEDED, FAILED, STOPPED = R.RUN_STATUS_SUCCEEDED, R.RUN_STATUS_FAILED, R.RUN_STATUS_STOPPED
STOPPING, WAITING, RUNNING = R.RUN_STATUS_STOPPING, R.RUN_STATUS_WAITING, R.RUN_STATUS_RUNNING
T_SUCCEEDED, T_FAILED = R.TASK_STATUS_SUCCEEDED, R.TASK_STATUS_FAILED
T_SKIPPED, T_CANCELLED = R.TASK_STATUS_SKIPPED, R.TASK_STATUS_CANCELLED
T_PENDING, T_RUNNING = R.TASK_STATUS_PENDING, R.TASK_STATUS_RUNNING


@pytest.fixture
def settings(settings: Settings, outside: Outside) -> Settings:
    """Short timer-poll, heartbeat and lease periods; loopback servers for http nodes."""
    return outside.configure(settings)


# --- helpers ---------------------------------------------------------------------------


def control(flowyard: RunningFlowyard) -> gateway_pb2_grpc.RunControlServiceStub:
    """RunControlService on the fixture's channel (it carries the admin token)."""
    return gateway_pb2_grpc.RunControlServiceStub(flowyard.channel)


def workflow(name: str, nodes: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A chain: trigger ``start``, then ``nodes`` one after the other."""
    everything = [{"id": "start", "type": "trigger"}, *nodes]
    edges = [{"from": a["id"], "to": b["id"]} for a, b in itertools.pairwise(everything)]
    return {"name": name, "nodes": everything, "edges": edges, **extra}


def code(node_id: str, source: str, **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "type": "code", "config": {"source": source}, **extra}


async def apply(flowyard: RunningFlowyard, document: dict[str, Any]) -> int:
    definition = codec.definition_to_proto(parse_definition(document))
    response = await flowyard.workflows.ApplyWorkflow(
        gateway_pb2.ApplyWorkflowRequest(definition=definition)
    )
    return int(response.workflow.version)


async def start(flowyard: RunningFlowyard, name: str, data: JsonValue = None) -> str:
    request = gateway_pb2.StartRunRequest(workflow=name)
    if data is not None:
        request.input.CopyFrom(codec.json_to_value(data))
    started = await flowyard.runs.StartRun(request)
    return str(started.run_id)


async def get_run(flowyard: RunningFlowyard, run_id: str) -> run_pb2.Run:
    run: run_pb2.Run = await flowyard.runs.GetRun(gateway_pb2.GetRunRequest(run_id=run_id))
    return run


async def run_in(
    flowyard: RunningFlowyard,
    run_id: str,
    eventually: Eventually,
    *statuses: int,
    within: float = 30,
) -> run_pb2.Run:
    """The run once its status is one of ``statuses``."""

    async def check() -> run_pb2.Run:
        run = await get_run(flowyard, run_id)
        assert run.status in statuses, (R.RunStatus.Name(run.status), status_names(run))
        return run

    result: run_pb2.Run = await eventually(check, within=within)
    return result


async def finished(flowyard: RunningFlowyard, run_id: str, eventually: Eventually) -> run_pb2.Run:
    return await run_in(flowyard, run_id, eventually, SUCCEEDED, FAILED, STOPPED)


async def task_in(
    flowyard: RunningFlowyard, run_id: str, node_id: str, status: int, eventually: Eventually
) -> run_pb2.Run:
    async def check() -> run_pb2.Run:
        run = await get_run(flowyard, run_id)
        assert task(run, node_id).status == status, status_names(run)
        return run

    result: run_pb2.Run = await eventually(check, within=30)
    return result


def task(run: run_pb2.Run, node_id: str) -> run_pb2.Task:
    return next(t for t in run.tasks if t.node_id == node_id)


def output(run: run_pb2.Run, node_id: str) -> Any:
    return codec.value_to_json(task(run, node_id).output)


def status_names(run: run_pb2.Run) -> dict[str, str]:
    return {t.node_id: R.TaskStatus.Name(t.status) for t in run.tasks}


def attempt_numbers(run: run_pb2.Run, node_id: str) -> list[int]:
    return [a.number for a in task(run, node_id).attempts]


def seconds(attempt: run_pb2.Attempt) -> float:
    return (attempt.finished_at.ToDatetime() - attempt.started_at.ToDatetime()).total_seconds()


def audit(run: run_pb2.Run) -> list[tuple[str, str, str, str]]:
    return [(a.actor, a.action, a.node_id, a.comment) for a in run.audit]


def flaky(failures: int = 1) -> Callable[[Request], Reply]:
    """A route answering 500 to its first ``failures`` requests, then 200 with the count."""
    lock = threading.Lock()
    calls = itertools.count(1)

    def reply(_request: Request) -> Reply:
        with lock:
            n = next(calls)
        if n <= failures:
            return json_reply({"error": "not yet", "call": n}, 500)
        return json_reply({"ok": True, "call": n})

    return reply


def http_get(node_id: str, url: str) -> dict[str, Any]:
    return {"id": node_id, "type": "http", "config": {"url": url, "method": "GET"}}


async def refused(call: Awaitable[Any], code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return caught.value.details() or ""


# --- stop --------------------------------------------------------------------------------

SLEEPER = workflow(
    "sleeper",
    [code("nap", "import time\ntime.sleep(30)\nresult = 'woke'"), code("after", "result = 1")],
)


async def test_stop_kills_a_running_code_task_and_the_run_stops(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    await apply(flowyard, SLEEPER)
    run_id = await start(flowyard, "sleeper")
    await task_in(flowyard, run_id, "nap", T_RUNNING, eventually)

    accepted = await control(flowyard).StopRun(
        gateway_pb2.StopRunRequest(run_id=run_id, comment="wrong input")
    )
    assert accepted.run_id == run_id and accepted.command_id

    run = await run_in(flowyard, run_id, eventually, STOPPED, within=10)
    nap = task(run, "nap")
    assert nap.status == T_CANCELLED
    assert nap.error.code == "task.cancelled"
    [attempt] = nap.attempts
    assert attempt.HasField("finished_at")
    assert seconds(attempt) < 10, "the code process was not killed"
    assert task(run, "after").status == T_PENDING and not task(run, "after").attempts
    assert audit(run) == [(flowyard.principal, "stop", "", "wrong input")]


async def test_a_non_cancellable_task_finishes_after_stop_and_its_result_is_kept(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    await apply(
        flowyard,
        workflow(
            "careful",
            [
                code(
                    "commit",
                    "import time\ntime.sleep(3)\nresult = {'committed': True}",
                    cancellable=False,
                ),
                code("after", "result = 1"),
            ],
        ),
    )
    run_id = await start(flowyard, "careful")
    await task_in(flowyard, run_id, "commit", T_RUNNING, eventually)

    await control(flowyard).StopRun(gateway_pb2.StopRunRequest(run_id=run_id))

    stopping = await run_in(flowyard, run_id, eventually, STOPPING, within=5)
    assert task(stopping, "commit").status == T_RUNNING
    run = await run_in(flowyard, run_id, eventually, STOPPED, within=20)
    commit = task(run, "commit")
    assert commit.status == T_SUCCEEDED
    assert output(run, "commit") == {"committed": True}
    assert seconds(commit.attempts[0]) >= 2.5  # it ran to the end
    assert task(run, "after").status == T_PENDING  # nothing new starts on a stopped run


async def test_stopping_a_waiting_run_stops_it_at_once(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    await apply(
        flowyard,
        workflow("gate", [{"id": "sign-off", "type": "approval"}, code("ship", "result = 1")]),
    )
    run_id = await start(flowyard, "gate")
    await run_in(flowyard, run_id, eventually, WAITING)

    await control(flowyard).StopRun(gateway_pb2.StopRunRequest(run_id=run_id))

    run = await run_in(flowyard, run_id, eventually, STOPPED, within=5)
    assert task(run, "sign-off").status == T_CANCELLED
    assert task(run, "ship").status == T_PENDING


async def test_stop_with_cleanup_runs_the_cleanup_nodes_and_records_them(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    document = workflow("reserve", [code("hold", "import time\ntime.sleep(30)")])
    document["nodes"] += [
        code("release", "result = {'released': trigger['sku']}", cleanup=True),
        code("tell", "result = 'told ' + upstream['release']['released']", cleanup=True),
    ]
    document["edges"].append({"from": "release", "to": "tell"})
    await apply(flowyard, document)

    # A run that ends normally never runs its cleanup nodes.
    plain = workflow("plain-with-cleanup", [code("work", "result = 1")])
    plain["nodes"].append(code("undo", "result = 'undone'", cleanup=True))
    await apply(flowyard, plain)
    normal = await finished(flowyard, await start(flowyard, "plain-with-cleanup"), eventually)
    assert normal.status == SUCCEEDED, status_names(normal)
    assert task(normal, "undo").status == T_SKIPPED and not task(normal, "undo").attempts

    run_id = await start(flowyard, "reserve", {"sku": "widget-7"})
    await task_in(flowyard, run_id, "hold", T_RUNNING, eventually)

    await control(flowyard).StopRun(
        gateway_pb2.StopRunRequest(run_id=run_id, cleanup=True, comment="undo the hold")
    )

    run = await run_in(flowyard, run_id, eventually, STOPPED, within=20)
    assert task(run, "hold").status == T_CANCELLED
    assert task(run, "release").status == T_SUCCEEDED
    assert output(run, "release") == {"released": "widget-7"}
    assert output(run, "tell") == "told widget-7"
    [entry] = run.audit
    assert entry.action == "stop" and entry.detail == "with cleanup"


# --- retry, restart, rerun, skip, resume ------------------------------------------------


async def test_retry_runs_a_failed_task_again_with_the_same_input_and_the_run_goes_on(
    flowyard: RunningFlowyard, outside: Outside, eventually: Eventually
) -> None:
    outside.http.route("/stock", flaky(failures=1))
    await apply(
        flowyard,
        workflow(
            "stock",
            [
                http_get("fetch", outside.http.url("/stock") + "?sku={{ trigger.sku }}"),
                code("use", "result = upstream['fetch']['body']['call']"),
            ],
        ),
    )
    run_id = await start(flowyard, "stock", {"sku": "w7"})
    failed = await finished(flowyard, run_id, eventually)
    assert failed.status == FAILED and failed.error.code == "http.status"

    await control(flowyard).RetryTask(
        gateway_pb2.RetryTaskRequest(run_id=run_id, node_id="fetch", comment="supplier is back")
    )

    run = await run_in(flowyard, run_id, eventually, SUCCEEDED)
    fetch = task(run, "fetch")
    assert [a.status for a in fetch.attempts] == [T_FAILED, T_SUCCEEDED]
    assert fetch.attempts[0].error.code == "http.status"  # the failed attempt is kept
    assert fetch.attempts[0].input == fetch.attempts[1].input
    assert output(run, "use") == 2
    assert not run.HasField("error") or not run.error.code
    assert audit(run) == [(flowyard.principal, "retry_task", "fetch", "supplier is back")]


async def test_restart_continues_a_failed_run_on_the_current_version(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    first = workflow("pricing", [code("base", "result = 20"), code("total", "result = 1 / 0")])
    assert await apply(flowyard, first) == 1
    run_id = await start(flowyard, "pricing")
    failed = await finished(flowyard, run_id, eventually)
    assert failed.status == FAILED and failed.failed_node_id == "total"

    fixed = workflow(
        "pricing",
        [code("base", "result = 20"), code("total", "result = upstream['base'] * 2 + 2")],
    )
    assert await apply(flowyard, fixed) == 2
    await control(flowyard).RestartRun(gateway_pb2.RestartRunRequest(run_id=run_id))

    run = await run_in(flowyard, run_id, eventually, SUCCEEDED)
    assert run.workflow_version == 2
    assert output(run, "total") == 42
    assert attempt_numbers(run, "total") == [1, 2]
    assert attempt_numbers(run, "base") == [1]  # finished work is kept
    [entry] = run.audit
    assert entry.action == "restart" and entry.detail == "on version 2"


async def test_rerun_from_a_task_runs_it_and_what_follows_again(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    await apply(
        flowyard,
        workflow(
            "chain",
            [
                code("a", "result = 1"),
                code("b", "result = upstream['a'] + 1"),
                code("c", "result = upstream['b'] + 1"),
            ],
        ),
    )
    run_id = await start(flowyard, "chain")
    done = await finished(flowyard, run_id, eventually)
    assert done.status == SUCCEEDED

    await control(flowyard).RerunFrom(gateway_pb2.RerunFromRequest(run_id=run_id, node_id="b"))

    async def rerun() -> run_pb2.Run:
        run = await get_run(flowyard, run_id)
        assert run.status == SUCCEEDED and attempt_numbers(run, "c") == [1, 2], status_names(run)
        return run

    run = await eventually(rerun, within=30)
    assert attempt_numbers(run, "a") == [1]
    assert attempt_numbers(run, "b") == [1, 2]
    assert output(run, "c") == 3
    assert [a.action for a in run.audit] == ["rerun_from"]


async def test_skip_a_failed_task_with_an_output_downstream_sees(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    await apply(
        flowyard,
        workflow(
            "enrich",
            [code("lookup", "raise RuntimeError('lookup down')"), code("use", SKIP_USE)],
        ),
    )
    run_id = await start(flowyard, "enrich")
    assert (await finished(flowyard, run_id, eventually)).status == FAILED

    await control(flowyard).SkipTask(
        gateway_pb2.SkipTaskRequest(
            run_id=run_id,
            node_id="lookup",
            output=codec.json_to_value({"region": "eu"}),
            comment="default region",
        )
    )

    run = await run_in(flowyard, run_id, eventually, SUCCEEDED)
    assert task(run, "lookup").status == T_SKIPPED
    assert task(run, "lookup").attempts[0].error.code == "code.exception"
    assert output(run, "use") == "region eu"
    assert audit(run) == [(flowyard.principal, "skip_task", "lookup", "default region")]


SKIP_USE = "result = 'region ' + upstream['lookup']['region']"


async def test_skip_is_refused_for_a_node_that_may_not_be_skipped(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    await apply(
        flowyard,
        workflow("strict", [code("pay", "raise RuntimeError('declined')", skippable=False)]),
    )
    run_id = await start(flowyard, "strict")
    assert (await finished(flowyard, run_id, eventually)).status == FAILED

    details = await refused(
        control(flowyard).SkipTask(gateway_pb2.SkipTaskRequest(run_id=run_id, node_id="pay")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "skippable" in details
    run = await get_run(flowyard, run_id)
    assert run.status == FAILED and task(run, "pay").status == T_FAILED and not run.audit


async def test_resume_runs_every_failed_branch_again(
    flowyard: RunningFlowyard, outside: Outside, eventually: Eventually
) -> None:
    outside.http.route("/left", flaky(failures=1))
    outside.http.route("/right", flaky(failures=1))
    await apply(
        flowyard,
        {
            "name": "branches",
            "nodes": [
                {"id": "start", "type": "trigger"},
                http_get("left", outside.http.url("/left")),
                http_get("right", outside.http.url("/right")),
                code("join", "result = sorted(upstream)"),
            ],
            "edges": [
                {"from": "start", "to": "left"},
                {"from": "start", "to": "right"},
                {"from": "left", "to": "join"},
                {"from": "right", "to": "join"},
            ],
        },
    )
    run_id = await start(flowyard, "branches")
    failed = await finished(flowyard, run_id, eventually)
    assert failed.status == FAILED
    assert task(failed, "left").status == T_FAILED and task(failed, "right").status == T_FAILED

    await control(flowyard).ResumeRun(gateway_pb2.ResumeRunRequest(run_id=run_id))

    run = await run_in(flowyard, run_id, eventually, SUCCEEDED)
    assert attempt_numbers(run, "left") == [1, 2] and attempt_numbers(run, "right") == [1, 2]
    assert output(run, "join") == ["left", "right", "start"]
    assert attempt_numbers(run, "start") == []  # the trigger is not run again


# --- replay and compare ------------------------------------------------------------------


async def test_replay_starts_a_linked_new_run_and_compare_shows_the_differences(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    await apply(flowyard, workflow("double", [code("twice", "result = trigger['n'] * 2")]))
    original_id = await start(flowyard, "double", {"n": 2})
    original = await finished(flowyard, original_id, eventually)
    assert original.status == SUCCEEDED

    same = await control(flowyard).ReplayRun(gateway_pb2.ReplayRunRequest(run_id=original_id))
    changed = await control(flowyard).ReplayRun(
        gateway_pb2.ReplayRunRequest(
            run_id=original_id, input=codec.json_to_value({"n": 5}), comment="bigger"
        )
    )
    assert same.created and changed.created
    assert len({original_id, same.run_id, changed.run_id}) == 3

    exact = await finished(flowyard, same.run_id, eventually)
    assert exact.status == SUCCEEDED
    assert exact.trigger.kind == "replay" and exact.trigger.detail == original_id
    assert exact.replay_of == original_id
    assert codec.value_to_json(exact.trigger.data) == {"n": 2}
    assert output(exact, "twice") == 4
    modified = await finished(flowyard, changed.run_id, eventually)
    assert modified.replay_of == original_id and output(modified, "twice") == 10
    [entry] = modified.audit
    assert (entry.actor, entry.action, entry.comment) == (flowyard.principal, "replay", "bigger")

    comparison = await control(flowyard).CompareRuns(
        gateway_pb2.CompareRunsRequest(run_id=original_id, other_run_id=changed.run_id)
    )
    by_node = {t.node_id: t for t in comparison.tasks}
    assert comparison.status == comparison.other_status == SUCCEEDED
    assert by_node["twice"].output_differs
    assert codec.value_to_json(by_node["twice"].output) == 4
    assert codec.value_to_json(by_node["twice"].other_output) == 10
    assert by_node["twice"].status == by_node["twice"].other_status == T_SUCCEEDED
    assert by_node["twice"].duration_seconds > 0
    alike = await control(flowyard).CompareRuns(
        gateway_pb2.CompareRunsRequest(run_id=original_id, other_run_id=same.run_id)
    )
    assert not any(t.output_differs for t in alike.tasks)

    # The same request id replays once.
    key = uuid.uuid4().hex
    once = await control(flowyard).ReplayRun(
        gateway_pb2.ReplayRunRequest(run_id=original_id, request_id=key)
    )
    again = await control(flowyard).ReplayRun(
        gateway_pb2.ReplayRunRequest(run_id=original_id, request_id=key)
    )
    assert once.run_id == again.run_id and once.created and not again.created


# --- resolutions -------------------------------------------------------------------------


def failed_orders_db(path: Path, failed: int) -> Path:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT)")
        db.executemany("INSERT INTO orders (status) VALUES (?)", [("failed",)] * failed)
    return path


async def test_a_threshold_override_applies_to_this_run_only(
    flowyard: RunningFlowyard, tmp_path: Path, eventually: Eventually
) -> None:
    db = failed_orders_db(tmp_path / "orders.db", failed=12)
    check = {
        "id": "check",
        "type": "query",
        "config": {
            "source": {
                "kind": "sqlite",
                "path": str(db),
                "sql": "SELECT count(*) FROM orders WHERE status = 'failed'",
            },
            "warning_threshold": 5,
            "failure_threshold": 10,
        },
    }
    await apply(flowyard, workflow("failed-orders", [check]))
    run_id = await start(flowyard, "failed-orders")
    failed = await finished(flowyard, run_id, eventually)
    assert failed.status == FAILED and failed.error.code == "threshold.failure"

    listed = await control(flowyard).ListResolutions(
        gateway_pb2.ListResolutionsRequest(run_id=run_id)
    )
    kinds = {r.kind: r for r in listed.resolutions}
    override = kinds["override_parameter"]
    assert override.node_id == "check" and override.error_class == "threshold"
    assert "failure_threshold" in override.parameters and override.explanation

    parameters = codec.json_to_struct({"failure_threshold": 50})
    await control(flowyard).ApplyResolution(
        gateway_pb2.ApplyResolutionRequest(
            run_id=run_id,
            kind="override_parameter",
            node_id="check",
            parameters=parameters,
            comment="12 is fine today",
        )
    )

    run = await run_in(flowyard, run_id, eventually, SUCCEEDED)
    assert output(run, "check")["failure_threshold"] == 50
    assert output(run, "check")["level"] == "warning"
    [entry] = run.audit
    assert entry.action == "retry_task" and "failure_threshold=50" in entry.detail
    assert entry.comment == "12 is fine today"
    stored = await flowyard.workflows.GetWorkflow(
        gateway_pb2.GetWorkflowRequest(name="failed-orders")
    )
    [node] = [n for n in stored.definition.nodes if n.id == "check"]
    assert codec.struct_to_json(node.config)["failure_threshold"] == 10
    assert stored.version == 1

    # A kind the run does not offer, and parameters the override does not take, are refused.
    bad = await control(flowyard).ListResolutions(gateway_pb2.ListResolutionsRequest(run_id=run_id))
    assert not bad.resolutions  # the run succeeded: nothing to resolve
    await refused(
        control(flowyard).ApplyResolution(
            gateway_pb2.ApplyResolutionRequest(run_id=run_id, kind="retry_task")
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


# --- idempotency, wrong states, audit ----------------------------------------------------


async def test_a_command_sent_twice_acts_once(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    await apply(flowyard, workflow("always-fails", [code("boom", "raise ValueError('no')")]))
    run_id = await start(flowyard, "always-fails")
    assert (await finished(flowyard, run_id, eventually)).status == FAILED

    request = gateway_pb2.RetryTaskRequest(run_id=run_id, node_id="boom", request_id="retry-1")
    first, second = await asyncio.gather(
        control(flowyard).RetryTask(request), control(flowyard).RetryTask(request)
    )
    assert first.command_id == second.command_id == "retry-1"

    async def failed_again() -> run_pb2.Run:
        run = await get_run(flowyard, run_id)
        assert run.status == FAILED and attempt_numbers(run, "boom") == [1, 2]
        return run

    await eventually(failed_again, within=30)
    # Sent once more after it was carried out: accepted, and still nothing more happens.
    third = await control(flowyard).RetryTask(request)
    assert third.command_id == "retry-1"
    await asyncio.sleep(2)
    run = await failed_again()
    assert [(a.action, a.command_id) for a in run.audit] == [("retry_task", "retry-1")]


async def test_commands_that_do_not_fit_the_run_state_are_refused_and_change_nothing(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    await apply(flowyard, workflow("fine", [code("ok", "result = 1")]))
    done_id = await start(flowyard, "fine")
    done = await finished(flowyard, done_id, eventually)
    assert done.status == SUCCEEDED
    stub = control(flowyard)

    details = await refused(
        stub.RetryTask(gateway_pb2.RetryTaskRequest(run_id=done_id, node_id="ok")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "succeeded" in details
    details = await refused(
        stub.StopRun(gateway_pb2.StopRunRequest(run_id=done_id)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "succeeded" in details
    details = await refused(
        stub.ResumeRun(gateway_pb2.ResumeRunRequest(run_id=done_id)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "succeeded" in details

    await apply(flowyard, SLEEPER)
    busy_id = await start(flowyard, "sleeper")
    await task_in(flowyard, busy_id, "nap", T_RUNNING, eventually)
    details = await refused(
        stub.RestartRun(gateway_pb2.RestartRunRequest(run_id=busy_id)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "running" in details

    # Unknown runs and nodes, and missing fields.
    await refused(
        stub.StopRun(gateway_pb2.StopRunRequest(run_id="no-such-run")), grpc.StatusCode.NOT_FOUND
    )
    await refused(
        stub.RetryTask(gateway_pb2.RetryTaskRequest(run_id=done_id, node_id="ghost")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await refused(
        stub.RetryTask(gateway_pb2.RetryTaskRequest(run_id=done_id)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )

    unchanged = await get_run(flowyard, done_id)
    assert unchanged.status == SUCCEEDED and not unchanged.audit
    assert attempt_numbers(unchanged, "ok") == [1]
    busy = await get_run(flowyard, busy_id)
    assert busy.status == RUNNING and not busy.audit
    await stub.StopRun(gateway_pb2.StopRunRequest(run_id=busy_id))
    await run_in(flowyard, busy_id, eventually, STOPPED, within=10)


async def test_the_audit_trail_names_who_did_what_and_why(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    await apply(flowyard, workflow("twice-broken", [code("boom", "raise ValueError('no')")]))
    run_id = await start(flowyard, "twice-broken")
    assert (await finished(flowyard, run_id, eventually)).status == FAILED
    operator = await flowyard.client_as("olga", Role.OPERATOR)
    viewer = await flowyard.client_as("vic", Role.VIEWER)

    await gateway_pb2_grpc.RunControlServiceStub(operator.channel).RetryTask(
        gateway_pb2.RetryTaskRequest(run_id=run_id, node_id="boom", comment="flaky?")
    )

    async def failed_again() -> run_pb2.Run:
        run = await get_run(flowyard, run_id)
        assert run.status == FAILED and attempt_numbers(run, "boom") == [1, 2]
        return run

    await eventually(failed_again, within=30)
    await control(flowyard).SkipTask(
        gateway_pb2.SkipTaskRequest(run_id=run_id, node_id="boom", comment="not needed")
    )
    run = await run_in(flowyard, run_id, eventually, SUCCEEDED)
    assert audit(run) == [
        ("olga", "retry_task", "boom", "flaky?"),
        (flowyard.principal, "skip_task", "boom", "not needed"),
    ]
    assert all(a.HasField("at") and a.command_id for a in run.audit)

    # Viewers read resolutions and comparisons but may not act.
    viewer_control = gateway_pb2_grpc.RunControlServiceStub(viewer.channel)
    await viewer_control.ListResolutions(gateway_pb2.ListResolutionsRequest(run_id=run_id))
    await refused(
        viewer_control.RetryTask(gateway_pb2.RetryTaskRequest(run_id=run_id, node_id="boom")),
        grpc.StatusCode.PERMISSION_DENIED,
    )


# --- the CLI -------------------------------------------------------------------------------


async def test_the_cli_fixes_a_failed_run(
    flowyard: RunningFlowyard,
    outside: Outside,
    eventually: Eventually,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    assert flowyard.admin is not None
    monkeypatch.setenv("FLOWYARD_TOKEN", flowyard.admin.token)
    monkeypatch.delenv("FLOWYARD_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))  # no config file of the user's

    async def flowyard_cli(*argv: str) -> tuple[int, str, str]:
        # The CLI is synchronous; the services run on this event loop.
        code = await asyncio.to_thread(cli.main, [*argv, "--server", flowyard.address])
        out, err = capsys.readouterr()
        return code, out, err

    outside.http.route("/price", flaky(failures=1))
    await apply(flowyard, workflow("cli-fix", [http_get("price", outside.http.url("/price"))]))
    run_id = await start(flowyard, "cli-fix")
    assert (await finished(flowyard, run_id, eventually)).status == FAILED

    code, out, _ = await flowyard_cli("run", "resolutions", run_id)
    assert code == 0 and "retry_task" in out and "price" in out
    code, out, err = await flowyard_cli("run", "stop", run_id)
    assert code == 1 and "FAILED_PRECONDITION" in err and "failed" in err
    code, out, _ = await flowyard_cli("run", "retry", run_id, "price", "--comment", "once more")
    assert code == 0 and f"accepted for run {run_id}" in out

    await run_in(flowyard, run_id, eventually, SUCCEEDED)
    code, out, _ = await flowyard_cli("run", "get", run_id)
    assert code == 0
    line = out.split("Audit:\n")[1].splitlines()[0]
    assert f"{flowyard.principal}  retry_task price" in line and '"once more"' in line

    code, out, _ = await flowyard_cli("run", "replay", run_id, "--watch")
    assert code == 0
    replay_id = out.splitlines()[0]
    code, out, _ = await flowyard_cli("run", "compare", run_id, replay_id)
    assert code == 0 and "price" in out


async def test_a_dry_run_replays_as_a_dry_run_of_the_same_definition(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    draft = workflow("draft-double", [code("twice", "result = trigger['n'] * 2")])
    dry = await flowyard.workflows.DryRunWorkflow(
        gateway_pb2.DryRunWorkflowRequest(
            definition=codec.definition_to_proto(parse_definition(draft)),
            input=codec.json_to_value({"n": 4}),
        )
    )
    assert (await finished(flowyard, dry.run_id, eventually)).status == SUCCEEDED

    replay = await control(flowyard).ReplayRun(
        gateway_pb2.ReplayRunRequest(run_id=dry.run_id, input=codec.json_to_value({"n": 6}))
    )

    run = await finished(flowyard, replay.run_id, eventually)
    assert run.status == SUCCEEDED and run.test
    assert run.replay_of == dry.run_id and run.trigger.kind == "replay"
    assert output(run, "twice") == 12
    assert [a.action for a in run.audit] == ["replay"]
