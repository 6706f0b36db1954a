"""Driving runs through the gateway in e2e tests: register, start, wait, read tasks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from flowyard import codec
from flowyard.domain.definition import parse_definition
from flowyard.domain.json import JsonValue
from flowyard.v1 import gateway_pb2, run_pb2

from tests.e2e.conftest import RunningFlowyard

Eventually = Callable[..., Awaitable[Any]]
SUCCEEDED, FAILED = run_pb2.RUN_STATUS_SUCCEEDED, run_pb2.RUN_STATUS_FAILED


async def apply(flowyard: RunningFlowyard, document: dict[str, Any]) -> None:
    definition = codec.definition_to_proto(parse_definition(document))
    await flowyard.workflows.ApplyWorkflow(gateway_pb2.ApplyWorkflowRequest(definition=definition))


async def start(flowyard: RunningFlowyard, workflow: str, data: JsonValue = None) -> str:
    request = gateway_pb2.StartRunRequest(workflow=workflow)
    if data is not None:
        request.input.CopyFrom(codec.json_to_value(data))
    started = await flowyard.runs.StartRun(request)
    return str(started.run_id)


async def get_run(flowyard: RunningFlowyard, run_id: str) -> run_pb2.Run:
    run: run_pb2.Run = await flowyard.runs.GetRun(gateway_pb2.GetRunRequest(run_id=run_id))
    return run


async def finished_run(
    flowyard: RunningFlowyard, run_id: str, eventually: Eventually
) -> run_pb2.Run:
    async def check() -> run_pb2.Run:
        run = await get_run(flowyard, run_id)
        assert run.status in (SUCCEEDED, FAILED), run_pb2.RunStatus.Name(run.status)
        return run

    result: run_pb2.Run = await eventually(check, within=30)
    return result


def task(run: run_pb2.Run, node_id: str) -> run_pb2.Task:
    return next(t for t in run.tasks if t.node_id == node_id)


def output(run: run_pb2.Run, node_id: str) -> Any:
    return codec.value_to_json(task(run, node_id).output)
