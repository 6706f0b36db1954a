"""Approval tasks wait for a decision made through the gateway; the run goes on or fails."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from flowyard import codec
from flowyard.domain.access import Role
from flowyard.v1 import gateway_pb2, run_pb2

from tests.e2e.conftest import RunningFlowyard
from tests.e2e.test_run_end_to_end import apply, finished_run, task

pytestmark = pytest.mark.e2e

Eventually = Callable[..., Awaitable[Any]]

PURCHASE = {
    "name": "purchase",
    "nodes": [
        {"id": "start", "type": "trigger"},
        {"id": "sign-off", "type": "approval", "config": {"approvers": ["dana", "lee"]}},
        {"id": "order", "type": "code", "config": {"source": "result = 'ordered'"}},
    ],
    "edges": [{"from": "start", "to": "sign-off"}, {"from": "sign-off", "to": "order"}],
}


async def waiting_run(flowyard: RunningFlowyard, eventually: Eventually) -> str:
    await apply(flowyard, PURCHASE)
    started = await flowyard.runs.StartRun(
        gateway_pb2.StartRunRequest(workflow="purchase", input=codec.json_to_value({}))
    )

    async def waiting() -> None:
        run = await flowyard.runs.GetRun(gateway_pb2.GetRunRequest(run_id=started.run_id))
        assert run.status == run_pb2.RUN_STATUS_WAITING
        assert task(run, "sign-off").status == run_pb2.TASK_STATUS_WAITING

    await eventually(waiting, within=30)
    return started.run_id


async def decide(
    flowyard: RunningFlowyard, run_id: str, approved: bool, by: str = "dana", node: str = "sign-off"
) -> Any:
    """Decide as principal ``by`` (an operator token): who decides is the token's name."""
    client = await flowyard.client_as(by, Role.OPERATOR)
    return await client.runs.DecideApproval(
        gateway_pb2.DecideApprovalRequest(
            run_id=run_id, node_id=node, approved=approved, comment="looks fine"
        )
    )


async def test_an_approved_task_lets_the_run_finish_and_records_who_decided(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    run_id = await waiting_run(flowyard, eventually)

    await decide(flowyard, run_id, approved=True)

    run = await finished_run(flowyard, run_id, eventually)
    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED
    outcome = codec.value_to_json(task(run, "sign-off").output)
    assert isinstance(outcome, dict)
    assert outcome["approved"] is True and outcome["decided_by"] == "dana"
    assert outcome["comment"] == "looks fine"
    assert codec.value_to_json(task(run, "order").output) == "ordered"


async def test_a_rejection_fails_the_run_with_the_reason(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    run_id = await waiting_run(flowyard, eventually)

    await decide(flowyard, run_id, approved=False, by="lee")

    run = await finished_run(flowyard, run_id, eventually)
    assert run.status == run_pb2.RUN_STATUS_FAILED
    assert run.error.code == "approval.rejected"
    assert "lee" in run.error.message and "looks fine" in run.error.message
    assert task(run, "order").status == run_pb2.TASK_STATUS_PENDING


async def test_decisions_the_run_cannot_take_are_refused_with_the_reason(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    run_id = await waiting_run(flowyard, eventually)

    with pytest.raises(grpc.aio.AioRpcError) as not_an_approver:
        await decide(flowyard, run_id, approved=True, by="mallory")
    assert not_an_approver.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "dana" in (not_an_approver.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as not_an_approval:
        await decide(flowyard, run_id, approved=True, node="order")
    assert not_an_approval.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    await decide(flowyard, run_id, approved=True)
    await finished_run(flowyard, run_id, eventually)
    with pytest.raises(grpc.aio.AioRpcError) as decided_already:
        await decide(flowyard, run_id, approved=False)
    assert decided_already.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not waiting" in (decided_already.value.details() or "")
