"""One run through gateway -> scheduler -> executor -> scheduler on the real stack."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from flowyard import codec
from flowyard.domain.definition import parse_definition
from flowyard.v1 import gateway_pb2, run_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.e2e.conftest import RunningFlowyard

pytestmark = pytest.mark.e2e

Eventually = Callable[..., Awaitable[Any]]

CHAIN = {
    "name": "price-check",
    "type": "inventory",
    "context": {"markup": 2},
    "nodes": [
        {"id": "start", "type": "trigger"},
        {
            "id": "fetch",
            "type": "code",
            "config": {"source": "result = {'price': trigger['price'] * context['markup']}"},
        },
        {
            "id": "decide",
            "type": "code",
            "config": {
                "source": "print('checking', upstream['fetch'])\n"
                "result = {'reorder': upstream['fetch']['price'] > 10}"
            },
        },
    ],
    "edges": [{"from": "start", "to": "fetch"}, {"from": "fetch", "to": "decide"}],
}


async def apply(flowyard: RunningFlowyard, document: dict[str, Any]) -> None:
    definition = codec.definition_to_proto(parse_definition(document))
    await flowyard.workflows.ApplyWorkflow(gateway_pb2.ApplyWorkflowRequest(definition=definition))


async def finished_run(
    flowyard: RunningFlowyard, run_id: str, eventually: Eventually
) -> run_pb2.Run:
    async def check() -> run_pb2.Run:
        run = await flowyard.runs.GetRun(gateway_pb2.GetRunRequest(run_id=run_id))
        assert run.status in (run_pb2.RUN_STATUS_SUCCEEDED, run_pb2.RUN_STATUS_FAILED), run.status
        return run

    result: run_pb2.Run = await eventually(check, within=60)
    return result


def task(run: run_pb2.Run, node_id: str) -> run_pb2.Task:
    return next(t for t in run.tasks if t.node_id == node_id)


async def test_a_run_passes_outputs_downstream_and_succeeds(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    await apply(flowyard, CHAIN)
    started = await flowyard.runs.StartRun(
        gateway_pb2.StartRunRequest(workflow="price-check", input=codec.json_to_value({"price": 7}))
    )
    assert started.run_id and started.created

    run = await finished_run(flowyard, started.run_id, eventually)

    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED
    assert run.workflow_name == "price-check" and run.workflow_version == 1
    assert [t.node_id for t in run.tasks] == ["start", "fetch", "decide"]
    assert all(t.status == run_pb2.TASK_STATUS_SUCCEEDED for t in run.tasks)
    assert codec.value_to_json(task(run, "fetch").output) == {"price": 14}
    assert codec.value_to_json(task(run, "decide").output) == {"reorder": True}
    decide_input = codec.value_to_json(task(run, "decide").input)
    assert isinstance(decide_input, dict)
    assert decide_input["upstream"] == {"start": {"price": 7}, "fetch": {"price": 14}}
    for node_id in ("fetch", "decide"):
        entry = task(run, node_id)
        assert entry.HasField("started_at") and entry.HasField("duration")
        assert len(entry.attempts) == 1 and entry.attempts[0].executor_id
    assert run.HasField("duration")


async def test_a_failing_code_node_fails_the_run_with_the_error(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    broken = {
        **CHAIN,
        "name": "broken-chain",
        "nodes": [
            CHAIN["nodes"][0],
            {"id": "fetch", "type": "code", "config": {"source": "x = {}\nresult = x['missing']"}},
            CHAIN["nodes"][2],
        ],
    }
    await apply(flowyard, broken)
    started = await flowyard.runs.StartRun(gateway_pb2.StartRunRequest(workflow="broken-chain"))

    run = await finished_run(flowyard, started.run_id, eventually)

    assert run.status == run_pb2.RUN_STATUS_FAILED
    failed = task(run, "fetch")
    assert failed.status == run_pb2.TASK_STATUS_FAILED
    assert "KeyError" in failed.error.message and "missing" in failed.error.message
    assert "line 2" in failed.error.stack_trace
    assert run.failed_node_id == "fetch" and run.error.message == failed.error.message
    assert task(run, "decide").status == run_pb2.TASK_STATUS_PENDING


async def test_the_same_idempotency_key_returns_the_same_run(flowyard: RunningFlowyard) -> None:
    await apply(flowyard, CHAIN)
    request = gateway_pb2.StartRunRequest(
        workflow="price-check", input=codec.json_to_value({"price": 1}), idempotency_key="k-1"
    )
    first = await flowyard.runs.StartRun(request)
    second = await flowyard.runs.StartRun(request)
    assert first.created and not second.created
    assert first.run_id == second.run_id


async def test_watch_streams_changes_until_the_run_finishes(flowyard: RunningFlowyard) -> None:
    await apply(flowyard, CHAIN)
    started = await flowyard.runs.StartRun(
        gateway_pb2.StartRunRequest(workflow="price-check", input=codec.json_to_value({"price": 3}))
    )
    seen = [
        run.status
        async for run in flowyard.runs.WatchRun(gateway_pb2.WatchRunRequest(run_id=started.run_id))
    ]
    assert seen[-1] == run_pb2.RUN_STATUS_SUCCEEDED
    assert len(seen) >= 2


async def test_invalid_definitions_are_rejected_naming_the_node(flowyard: RunningFlowyard) -> None:
    definition = codec.definition_to_proto(parse_definition(CHAIN))
    definition.nodes[1].type = "teleport"
    definition.edges.add(source="decide", target="ghost")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await flowyard.workflows.ApplyWorkflow(
            gateway_pb2.ApplyWorkflowRequest(definition=definition)
        )

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    violations = {(v.field, v.description) for v in bad_request.field_violations}
    assert any(f == "node 'fetch'" and "teleport" in d for f, d in violations), violations
    assert any("ghost" in d for _, d in violations), violations
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await flowyard.workflows.GetWorkflow(gateway_pb2.GetWorkflowRequest(name="price-check"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # nothing was stored


async def test_unknown_ids_are_not_found(flowyard: RunningFlowyard) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as run_error:
        await flowyard.runs.GetRun(gateway_pb2.GetRunRequest(run_id="no-such-run"))
    assert run_error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as start_error:
        await flowyard.runs.StartRun(gateway_pb2.StartRunRequest(workflow="no-such-workflow"))
    assert start_error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_services_count_what_they_did(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    await apply(flowyard, CHAIN)
    started = await flowyard.runs.StartRun(
        gateway_pb2.StartRunRequest(workflow="price-check", input=codec.json_to_value({"price": 2}))
    )
    await finished_run(flowyard, started.run_id, eventually)
    with pytest.raises(grpc.aio.AioRpcError):
        await flowyard.runs.GetRun(gateway_pb2.GetRunRequest(run_id="missing"))

    def sample(service: str, name: str, labels: dict[str, str]) -> float:
        value = flowyard.metrics[service].registry.get_sample_value(name, labels)
        return value or 0.0

    def counted() -> None:
        finished = {"workflow": "price-check", "status": "succeeded"}
        assert sample("scheduler", "flowyard_runs_finished_total", finished) == 1
        assert sample("scheduler", "flowyard_runs_started_total",
                      {"workflow": "price-check", "trigger": "api"}) == 1  # fmt: skip
        code = {"node_type": "code", "status": "succeeded"}
        assert sample("executor", "flowyard_tasks_finished_total", code) == 2
        assert (
            sample("executor", "flowyard_task_duration_seconds_count", {"node_type": "code"}) == 2
        )
        gateway = "api-gateway"
        assert sample(gateway, "flowyard_grpc_requests_total", {"method": "StartRun", "code": "OK"})
        not_found = {"method": "GetRun", "code": "NOT_FOUND"}
        assert sample(gateway, "flowyard_grpc_requests_total", not_found) == 1

    await eventually(counted)
