"""gRPC servicers: validate the request, call the store or publish, map with the codec.

Who started a run or decided an approval is the caller's authenticated principal
(:func:`flowyard_api_gateway.auth.caller_name`); the ``started_by``/``decided_by`` request
fields are ignored then, and used only by servicers running without the auth interceptor.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
from flowyard import codec
from flowyard.adapters.kafka import Publisher
from flowyard.adapters.mongo import MongoStore, new_workflow_id
from flowyard.config import Topics
from flowyard.domain import engine
from flowyard.domain.definition import CLONE_NAME_PATTERN, NodeType, WorkflowDefinition
from flowyard.domain.run import RunState, RunStatus, TaskStatus, TriggerInfo, TriggerKind
from flowyard.domain.workflow import StoredWorkflow, WorkflowState
from flowyard.errors import (
    InvalidTransitionError,
    NotFoundError,
    RunNotFoundError,
    WorkflowNotFoundError,
    WorkflowStateError,
)
from flowyard.history.detail import trim_run_view
from flowyard.metrics import ServiceMetrics
from flowyard.v1 import events_pb2, gateway_pb2, gateway_pb2_grpc, run_pb2, workflow_pb2

from flowyard_api_gateway.auth import caller_name
from flowyard_api_gateway.errors import (
    AlreadyExistsError,
    InvalidRequestError,
    translate_errors,
    translate_stream_errors,
)
from flowyard_api_gateway.run_events import RunEventsHub
from flowyard_api_gateway.workflow_triggers import (
    WebhookSecretMethods,
    describe_workflow,
    describe_workflows,
    manual_starts,
)

# A watcher re-reads its run at least this often, so a missed wake-up is never fatal.
WATCH_REFRESH_SECONDS = 10.0
MAX_VERSION_RACES = 5

Context = grpc.aio.ServicerContext[Any, Any]


def _now() -> datetime:
    return datetime.now(UTC)


async def _publish_start(
    publisher: Publisher, topics: Topics, run: RunState, *, test: bool = False
) -> None:
    envelope = codec.new_envelope(run.run_id, run.workflow_id, run.workflow_version)
    envelope.start_run.workflow_name = run.workflow_name
    envelope.start_run.trigger.CopyFrom(codec.trigger_to_proto(run.trigger))
    envelope.start_run.test = test
    await publisher.publish(topics.triggers, run.run_id, envelope)


_SETTABLE_STATES = {
    workflow_pb2.WORKFLOW_STATE_ACTIVE: WorkflowState.ACTIVE,
    workflow_pb2.WORKFLOW_STATE_PAUSED: WorkflowState.PAUSED,
}


def _state_error(state: WorkflowState, name: str) -> WorkflowStateError:
    what = "a draft" if state is WorkflowState.DRAFT else state.value
    return WorkflowStateError(f"workflow {name!r} is {what}; activate it to start runs")


class WorkflowServicer(WebhookSecretMethods, gateway_pb2_grpc.WorkflowServiceServicer):
    def __init__(self, store: MongoStore, publisher: Publisher, topics: Topics) -> None:
        self._store = store
        self._publisher = publisher
        self._topics = topics

    @translate_errors
    async def ApplyWorkflow(
        self, request: gateway_pb2.ApplyWorkflowRequest, context: Context
    ) -> gateway_pb2.ApplyWorkflowResponse:
        if not request.HasField("definition"):
            raise InvalidRequestError("definition", "is required")
        definition = codec.definition_from_proto(request.definition)
        for _ in range(MAX_VERSION_RACES):
            try:
                latest = await self._store.latest_workflow(definition.name)
            except WorkflowNotFoundError:
                latest = None
            if latest is not None and codec.same_definition(latest.definition, definition):
                return gateway_pb2.ApplyWorkflowResponse(
                    workflow=codec.workflow_to_proto(latest), created=False
                )
            now = _now()
            workflow = StoredWorkflow(
                workflow_id=latest.workflow_id if latest else new_workflow_id(),
                version=latest.version + 1 if latest else 1,
                state=latest.state if latest else WorkflowState.ACTIVE,
                definition=definition,
                created_at=now,
                updated_at=now,
            )
            if await self._store.insert_workflow(workflow):
                # A pause or activation that landed on the previous version meanwhile.
                workflow = await self._store.inherit_workflow_state(workflow)
                return gateway_pb2.ApplyWorkflowResponse(
                    workflow=codec.workflow_to_proto(workflow), created=True
                )
        raise InvalidRequestError("definition", "changed concurrently too often; try again")

    @translate_errors
    async def GetWorkflow(
        self, request: gateway_pb2.GetWorkflowRequest, context: Context
    ) -> workflow_pb2.Workflow:
        if not request.name:
            raise InvalidRequestError("name", "is required")
        workflow = await self._store.get_workflow(request.name, request.version)
        return await describe_workflow(self._store, workflow)

    @translate_errors
    async def ListWorkflows(
        self, request: gateway_pb2.ListWorkflowsRequest, context: Context
    ) -> gateway_pb2.ListWorkflowsResponse:
        workflows = await self._store.list_workflows()
        return gateway_pb2.ListWorkflowsResponse(
            workflows=await describe_workflows(self._store, workflows)
        )

    @translate_errors
    async def SetWorkflowState(
        self, request: gateway_pb2.SetWorkflowStateRequest, context: Context
    ) -> workflow_pb2.Workflow:
        if not request.name:
            raise InvalidRequestError("name", "is required")
        if request.state == workflow_pb2.WORKFLOW_STATE_DRAFT:
            raise InvalidRequestError("state", "a workflow cannot go back to draft")
        state = _SETTABLE_STATES.get(request.state)
        if state is None:
            raise InvalidRequestError("state", "must be WORKFLOW_STATE_ACTIVE or _PAUSED")
        workflow = await self._store.set_workflow_state(request.name, state)
        return codec.workflow_to_proto(workflow)

    @translate_errors
    async def CloneWorkflow(
        self, request: gateway_pb2.CloneWorkflowRequest, context: Context
    ) -> workflow_pb2.Workflow:
        if not request.source:
            raise InvalidRequestError("source", "is required")
        if not CLONE_NAME_PATTERN.match(request.new_name):
            raise InvalidRequestError(
                "new_name", "1-50 characters: letters, digits, '_', '-', '.' (not first)"
            )
        source = await self._store.latest_workflow(request.source)
        try:
            await self._store.latest_workflow(request.new_name)
        except WorkflowNotFoundError:
            pass
        else:
            raise AlreadyExistsError(f"workflow {request.new_name!r} exists already")
        now = _now()
        clone = StoredWorkflow(
            workflow_id=new_workflow_id(),
            version=1,
            state=WorkflowState.DRAFT,
            definition=dataclasses.replace(source.definition, name=request.new_name),
            created_at=now,
            updated_at=now,
        )
        # The unique (name, version) index settles a race with another clone or apply.
        if not await self._store.insert_workflow(clone):
            raise AlreadyExistsError(f"workflow {request.new_name!r} exists already")
        return codec.workflow_to_proto(clone)

    @translate_errors
    async def DryRunWorkflow(
        self, request: gateway_pb2.DryRunWorkflowRequest, context: Context
    ) -> gateway_pb2.StartRunResponse:
        """Run a definition without registering it: the scheduler reads it from a snapshot
        stored under the run id (``StartRun.test``) and creates the run, marked ``test``."""
        if not request.HasField("definition"):
            raise InvalidRequestError("definition", "is required")
        definition = codec.definition_from_proto(request.definition)
        trigger = TriggerInfo(
            kind=TriggerKind.API,
            data=codec.value_to_run_data(request.input) if request.HasField("input") else {},
            detail="gRPC DryRunWorkflow",
            started_by=caller_name(request.started_by or "anonymous"),
        )
        run_id = uuid.uuid4().hex
        # No registry entry: no workflow id, version 0. The snapshot goes first, so the
        # scheduler always finds it when the StartRun arrives.
        run = engine.new_run(run_id, "", 0, definition, trigger, _now())
        await self._store.insert_snapshot(run_id, definition)
        await _publish_start(self._publisher, self._topics, run, test=True)
        return gateway_pb2.StartRunResponse(run_id=run_id, created=True)


class RunServicer(gateway_pb2_grpc.RunServiceServicer):
    def __init__(
        self,
        store: MongoStore,
        publisher: Publisher,
        topics: Topics,
        hub: RunEventsHub,
        metrics: ServiceMetrics,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._topics = topics
        self._hub = hub
        self._metrics = metrics

    @translate_errors
    async def StartRun(
        self, request: gateway_pb2.StartRunRequest, context: Context
    ) -> gateway_pb2.StartRunResponse:
        if not request.workflow:
            raise InvalidRequestError("workflow", "is required")
        if len(request.idempotency_key) > 200:
            raise InvalidRequestError("idempotency_key", "at most 200 characters")
        workflow = await self._store.latest_workflow(request.workflow)
        if workflow.state is not WorkflowState.ACTIVE:
            raise _state_error(workflow.state, workflow.name)
        if not manual_starts(workflow):
            raise WorkflowStateError(
                f"workflow {workflow.name!r} does not start manually (its trigger has "
                "manual: false); it starts on its schedule, webhook, events or upstream runs"
            )
        trigger = TriggerInfo(
            kind=TriggerKind.API,
            data=codec.value_to_run_data(request.input) if request.HasField("input") else {},
            detail="gRPC StartRun",
            started_by=caller_name(request.started_by or "anonymous"),
            idempotency_key=request.idempotency_key,
        )
        if request.idempotency_key:
            # Same key, same workflow -> same run id, so a retried call finds the first run.
            run_id = uuid.uuid5(
                uuid.NAMESPACE_URL, f"{workflow.workflow_id}/{request.idempotency_key}"
            ).hex
        else:
            run_id = uuid.uuid4().hex
        run = engine.new_run(
            run_id, workflow.workflow_id, workflow.version, workflow.definition, trigger, _now()
        )
        created = await self._store.insert_run(run)
        if not created:
            existing = await self._store.get_run(run_id)
            if existing.status is not RunStatus.QUEUED:
                return gateway_pb2.StartRunResponse(run_id=run_id, created=False)
            run = existing  # stored but maybe never published: publish again (idempotent)
        await self._publish_start(run)
        return gateway_pb2.StartRunResponse(run_id=run_id, created=created)

    async def _publish_start(self, run: RunState) -> None:
        await _publish_start(self._publisher, self._topics, run)

    @translate_errors
    async def GetRun(self, request: gateway_pb2.GetRunRequest, context: Context) -> run_pb2.Run:
        if not request.run_id:
            raise InvalidRequestError("run_id", "is required")
        view = await self._run_view(request.run_id)
        return trim_run_view(
            view, hide_skipped=request.hide_skipped, hide_warnings=request.hide_warnings
        )

    async def _run_view(self, run_id: str) -> run_pb2.Run:
        run = await self._store.find_run(run_id)
        if run is None:
            return await self._queued_dry_run_view(run_id)
        definition, attempts = await asyncio.gather(
            self._definition_of(run), self._store.attempts_of(run_id)
        )
        return codec.run_to_proto(run, definition, attempts)

    async def _definition_of(self, run: RunState) -> WorkflowDefinition:
        """The registered version the run executes; a dry run's own snapshot."""
        if run.test:
            return await self._store.snapshot(run.run_id)
        workflow = await self._store.workflow_version(run.workflow_id, run.workflow_version)
        return workflow.definition

    async def _queued_dry_run_view(self, run_id: str) -> run_pb2.Run:
        """A dry run the scheduler has not created yet: shown queued, from its snapshot."""
        try:
            definition = await self._store.snapshot(run_id)
        except NotFoundError:
            raise RunNotFoundError(run_id) from None
        trigger = TriggerInfo(kind=TriggerKind.API, detail="gRPC DryRunWorkflow")
        view = codec.run_to_proto(
            engine.new_run(run_id, "", 0, definition, trigger, _now()), definition
        )
        view.ClearField("created_at")  # not created yet (and a stable view for WatchRun)
        view.test = True
        return view

    @translate_errors
    async def DecideApproval(
        self, request: gateway_pb2.DecideApprovalRequest, context: Context
    ) -> gateway_pb2.DecideApprovalResponse:
        for name in ("run_id", "node_id"):
            if not getattr(request, name):
                raise InvalidRequestError(name, "is required")
        if len(request.comment) > 2000:
            raise InvalidRequestError("comment", "at most 2000 characters")
        run = await self._store.get_run(request.run_id)
        definition = await self._definition_of(run)
        try:
            node = definition.node(request.node_id)
        except KeyError:
            raise InvalidRequestError(
                "node_id", f"run {run.run_id} has no node {request.node_id!r}"
            ) from None
        if node.type is not NodeType.APPROVAL:
            raise InvalidRequestError(
                "node_id", f"{node.id!r} is a {node.type} node, not an approval"
            )
        task = run.task(node.id)
        if task.status is not TaskStatus.WAITING:
            raise InvalidTransitionError(
                f"approval {node.id!r} of run {run.run_id} is {task.status}, "
                "not waiting for a decision"
            )
        approvers = node.config.get("approvers") or []
        decided_by = caller_name(request.decided_by or "anonymous")
        if isinstance(approvers, list) and approvers and decided_by not in approvers:
            raise InvalidTransitionError(
                f"approval {node.id!r} may be decided only by {', '.join(map(str, approvers))}"
            )
        envelope = codec.new_envelope(run.run_id, run.workflow_id, run.workflow_version)
        envelope.approval_decided.CopyFrom(
            events_pb2.ApprovalDecided(
                node_id=node.id,
                approved=request.approved,
                decided_by=decided_by,
                comment=request.comment,
            )
        )
        await self._publisher.publish(self._topics.commands, run.run_id, envelope)
        return gateway_pb2.DecideApprovalResponse()

    @translate_stream_errors
    async def WatchRun(
        self, request: gateway_pb2.WatchRunRequest, context: Context
    ) -> AsyncIterator[run_pb2.Run]:
        if not request.run_id:
            raise InvalidRequestError("run_id", "is required")
        with self._hub.watch(request.run_id) as changed:
            last: bytes | None = None
            while True:
                view = await self._run_view(request.run_id)
                encoded = view.SerializeToString(deterministic=True)
                if encoded != last:
                    last = encoded
                    yield view
                if codec.RUN_STATUS_FROM_PROTO[view.status].finished:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), WATCH_REFRESH_SECONDS)
                changed.clear()
