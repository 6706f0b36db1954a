"""Workflow states (pause, activate, draft clones) and dry runs, through the real gateway,
scheduler and executor on the real stack (FEATURES D6, D7, D10)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from flowyard import codec
from flowyard.domain.definition import parse_definition
from flowyard.v1 import gateway_pb2, run_pb2, workflow_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.e2e.conftest import RunningFlowyard
from tests.e2e.test_run_end_to_end import CHAIN, finished_run, task

pytestmark = pytest.mark.e2e

Eventually = Callable[..., Awaitable[Any]]

PAUSED = workflow_pb2.WORKFLOW_STATE_PAUSED
ACTIVE = workflow_pb2.WORKFLOW_STATE_ACTIVE
DRAFT = workflow_pb2.WORKFLOW_STATE_DRAFT


async def apply(flowyard: RunningFlowyard, document: dict[str, Any]) -> workflow_pb2.Workflow:
    definition = codec.definition_to_proto(parse_definition(document))
    response = await flowyard.workflows.ApplyWorkflow(
        gateway_pb2.ApplyWorkflowRequest(definition=definition)
    )
    return response.workflow


async def set_state(
    flowyard: RunningFlowyard, name: str, state: workflow_pb2.WorkflowState.ValueType
) -> workflow_pb2.Workflow:
    return await flowyard.workflows.SetWorkflowState(
        gateway_pb2.SetWorkflowStateRequest(name=name, state=state)
    )


async def start(flowyard: RunningFlowyard, name: str) -> gateway_pb2.StartRunResponse:
    return await flowyard.runs.StartRun(
        gateway_pb2.StartRunRequest(workflow=name, input=codec.json_to_value({"price": 3}))
    )


async def refused(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def violated_fields(error: grpc.aio.AioRpcError) -> set[str]:
    status = rpc_status.from_call(error)
    assert status is not None, error
    fields: set[str] = set()
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            fields.update(v.field for v in bad_request.field_violations)
    return fields


async def test_a_paused_workflow_refuses_runs_until_it_is_activated(
    flowyard: RunningFlowyard,
) -> None:
    applied = await apply(flowyard, CHAIN)
    assert applied.state == ACTIVE

    paused = await set_state(flowyard, "price-check", PAUSED)
    assert paused.state == PAUSED and paused.version == 1
    got = await flowyard.workflows.GetWorkflow(gateway_pb2.GetWorkflowRequest(name="price-check"))
    assert got.state == PAUSED

    error = await refused(start(flowyard, "price-check"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "price-check" in (error.details() or "") and "paused" in (error.details() or "")

    # By id as well as by name; activating twice is harmless.
    activated = await set_state(flowyard, applied.workflow_id, ACTIVE)
    assert activated.state == ACTIVE
    assert (await set_state(flowyard, "price-check", ACTIVE)).state == ACTIVE
    started = await start(flowyard, "price-check")
    assert started.run_id and started.created


async def test_a_new_version_of_a_paused_workflow_stays_paused(flowyard: RunningFlowyard) -> None:
    await apply(flowyard, CHAIN)
    await set_state(flowyard, "price-check", PAUSED)

    changed = await apply(flowyard, {**CHAIN, "description": "now with a description"})

    assert changed.version == 2 and changed.state == PAUSED
    listed = await flowyard.workflows.ListWorkflows(gateway_pb2.ListWorkflowsRequest())
    assert [(w.definition.name, w.version, w.state) for w in listed.workflows] == [
        ("price-check", 2, PAUSED)
    ]
    error = await refused(start(flowyard, "price-check"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION

    await set_state(flowyard, "price-check", ACTIVE)
    again = await apply(flowyard, {**CHAIN, "description": "and a third version"})
    assert again.version == 3 and again.state == ACTIVE


async def test_a_workflow_cannot_be_set_back_to_draft_or_to_no_state(
    flowyard: RunningFlowyard,
) -> None:
    await apply(flowyard, CHAIN)

    to_draft = await refused(set_state(flowyard, "price-check", DRAFT))
    assert to_draft.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot go back to draft" in (to_draft.details() or "")
    unspecified = await refused(
        set_state(flowyard, "price-check", workflow_pb2.WORKFLOW_STATE_UNSPECIFIED)
    )
    assert unspecified.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(unspecified) == {"state"}
    missing = await refused(set_state(flowyard, "no-such-workflow", PAUSED))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    got = await flowyard.workflows.GetWorkflow(gateway_pb2.GetWorkflowRequest(name="price-check"))
    assert got.state == ACTIVE


async def test_a_clone_is_a_draft_version_1_that_starts_no_runs(
    flowyard: RunningFlowyard,
) -> None:
    source = await apply(flowyard, CHAIN)
    await apply(flowyard, {**CHAIN, "description": "version 2"})

    clone = await flowyard.workflows.CloneWorkflow(
        gateway_pb2.CloneWorkflowRequest(source="price-check", new_name="price-check.copy_2")
    )

    assert clone.version == 1 and clone.state == DRAFT
    assert clone.workflow_id and clone.workflow_id != source.workflow_id
    assert clone.definition.name == "price-check.copy_2"
    expected = codec.definition_to_proto(
        parse_definition({**CHAIN, "name": "price-check.copy_2", "description": "version 2"})
    )
    assert clone.definition == expected
    listed = await flowyard.workflows.ListWorkflows(gateway_pb2.ListWorkflowsRequest())
    assert {(w.definition.name, w.version, w.state) for w in listed.workflows} == {
        ("price-check", 2, ACTIVE),
        ("price-check.copy_2", 1, DRAFT),
    }

    error = await refused(start(flowyard, "price-check.copy_2"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "draft" in (error.details() or "")
    await set_state(flowyard, "price-check.copy_2", ACTIVE)
    assert (await start(flowyard, "price-check.copy_2")).created


@pytest.mark.parametrize("bad_name", ["a" * 51, "a b", "", "-leading-dash"])
async def test_a_clone_needs_a_valid_name(flowyard: RunningFlowyard, bad_name: str) -> None:
    await apply(flowyard, CHAIN)
    error = await refused(
        flowyard.workflows.CloneWorkflow(
            gateway_pb2.CloneWorkflowRequest(source="price-check", new_name=bad_name)
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "new_name" in (error.details() or "")
    assert violated_fields(error) == {"new_name"}


async def test_a_clone_cannot_take_a_name_in_use(flowyard: RunningFlowyard) -> None:
    await apply(flowyard, CHAIN)
    await apply(flowyard, {**CHAIN, "name": "taken"})
    for new_name in ("taken", "price-check"):
        error = await refused(
            flowyard.workflows.CloneWorkflow(
                gateway_pb2.CloneWorkflowRequest(source="price-check", new_name=new_name)
            )
        )
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS, new_name
    missing = await refused(
        flowyard.workflows.CloneWorkflow(
            gateway_pb2.CloneWorkflowRequest(source="no-such-workflow", new_name="fresh")
        )
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND


DRY = {
    "name": "dry-pricing",
    "nodes": [
        {"id": "start", "type": "trigger"},
        {"id": "double", "type": "code", "config": {"source": "result = trigger['n'] * 2"}},
    ],
    "edges": [{"from": "start", "to": "double"}],
}


async def test_a_dry_run_runs_an_unregistered_definition_as_a_test_run(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    started = await flowyard.workflows.DryRunWorkflow(
        gateway_pb2.DryRunWorkflowRequest(
            definition=codec.definition_to_proto(parse_definition(DRY)),
            input=codec.json_to_value({"n": 21}),
            started_by="tester",
        )
    )
    assert started.run_id and started.created

    run = await finished_run(flowyard, started.run_id, eventually)

    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED, run
    assert run.test
    assert run.workflow_name == "dry-pricing"
    assert run.trigger.started_by == flowyard.principal  # the token's, not the field's
    assert codec.value_to_json(task(run, "double").output) == 42
    listed = await flowyard.workflows.ListWorkflows(gateway_pb2.ListWorkflowsRequest())
    assert "dry-pricing" not in {w.definition.name for w in listed.workflows}
    missing = await refused(
        flowyard.workflows.GetWorkflow(gateway_pb2.GetWorkflowRequest(name="dry-pricing"))
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND


async def test_a_dry_run_of_an_invalid_definition_is_refused(flowyard: RunningFlowyard) -> None:
    definition = codec.definition_to_proto(parse_definition(DRY))
    definition.nodes[1].type = "teleport"
    error = await refused(
        flowyard.workflows.DryRunWorkflow(gateway_pb2.DryRunWorkflowRequest(definition=definition))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "node 'double'" in violated_fields(error)
    empty = await refused(flowyard.workflows.DryRunWorkflow(gateway_pb2.DryRunWorkflowRequest()))
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT
