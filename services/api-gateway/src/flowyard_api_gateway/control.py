"""RunControlService: operators' commands on runs (FEATURES C1-C7, C9-C11).

Each command is checked here against the run as stored (``control.command_problem``): a
command that does not fit the run's state is refused with ``FAILED_PRECONDITION`` naming
that state, and nothing is sent. A command that fits is published as a ``RunCommand`` on
the commands topic, keyed by the run id; the scheduler that owns the run carries it out
(checking again, since the run may have moved on meanwhile) and records it in the run's
audit trail. ``request_id`` is the command id: the same id twice acts once, and a command
whose id the run already holds is answered as accepted again without being re-sent.

Who acts is the caller's authenticated principal (``anonymous`` without the auth
interceptor).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from typing import Any

import grpc
from flowyard import codec
from flowyard.adapters.kafka import Publisher
from flowyard.adapters.mongo import MongoStore
from flowyard.config import Topics
from flowyard.domain import control, engine
from flowyard.domain.compare import compare_runs
from flowyard.domain.definition import WorkflowDefinition
from flowyard.domain.json import JsonValue
from flowyard.domain.resolutions import command_for, resolutions_for
from flowyard.domain.run import (
    AuditEntry,
    RunState,
    RunStatus,
    TaskStatus,
    TriggerInfo,
    TriggerKind,
)
from flowyard.domain.workflow import WorkflowState
from flowyard.errors import InvalidTransitionError, WorkflowStateError
from flowyard.v1 import gateway_pb2, gateway_pb2_grpc, run_pb2

from flowyard_api_gateway.auth import caller_name
from flowyard_api_gateway.errors import InvalidRequestError, translate_errors
from flowyard_api_gateway.servicers import _now, _publish_start

Context = grpc.aio.ServicerContext[Any, Any]

MAX_COMMENT = 2000
MAX_REQUEST_ID = 200
MAX_ID = 200


def _required(request: Any, *names: str) -> None:
    for name in names:
        if not getattr(request, name):
            raise InvalidRequestError(name, "is required")


def _checked_common(request: Any) -> None:
    """Lengths of the fields every command has."""
    if len(getattr(request, "comment", "")) > MAX_COMMENT:
        raise InvalidRequestError("comment", f"at most {MAX_COMMENT} characters")
    if len(getattr(request, "request_id", "")) > MAX_REQUEST_ID:
        raise InvalidRequestError("request_id", f"at most {MAX_REQUEST_ID} characters")
    for name in ("run_id", "node_id", "other_run_id", "kind"):
        if len(getattr(request, name, "")) > MAX_ID:
            raise InvalidRequestError(name, f"at most {MAX_ID} characters")


class RunControlServicer(gateway_pb2_grpc.RunControlServiceServicer):
    def __init__(self, store: MongoStore, publisher: Publisher, topics: Topics) -> None:
        self._store = store
        self._publisher = publisher
        self._topics = topics

    # --- commands carried out by the scheduler -----------------------------------------

    @translate_errors
    async def StopRun(
        self, request: gateway_pb2.StopRunRequest, context: Context
    ) -> gateway_pb2.CommandAccepted:
        _required(request, "run_id")
        command = self._command(request, "stop", cleanup=request.cleanup)
        return await self._send(request.run_id, command)

    @translate_errors
    async def RetryTask(
        self, request: gateway_pb2.RetryTaskRequest, context: Context
    ) -> gateway_pb2.CommandAccepted:
        _required(request, "run_id", "node_id")
        command = self._command(request, "retry_task", node_id=request.node_id)
        return await self._send(request.run_id, command)

    @translate_errors
    async def RestartRun(
        self, request: gateway_pb2.RestartRunRequest, context: Context
    ) -> gateway_pb2.CommandAccepted:
        _required(request, "run_id")
        command = self._command(request, "restart")
        return await self._send(request.run_id, command)

    @translate_errors
    async def RerunFrom(
        self, request: gateway_pb2.RerunFromRequest, context: Context
    ) -> gateway_pb2.CommandAccepted:
        _required(request, "run_id", "node_id")
        command = self._command(request, "rerun_from", node_id=request.node_id)
        return await self._send(request.run_id, command)

    @translate_errors
    async def SkipTask(
        self, request: gateway_pb2.SkipTaskRequest, context: Context
    ) -> gateway_pb2.CommandAccepted:
        _required(request, "run_id", "node_id")
        output = codec.value_to_run_data(request.output) if request.HasField("output") else None
        command = self._command(request, "skip_task", node_id=request.node_id, output=output)
        return await self._send(request.run_id, command)

    @translate_errors
    async def ResumeRun(
        self, request: gateway_pb2.ResumeRunRequest, context: Context
    ) -> gateway_pb2.CommandAccepted:
        _required(request, "run_id")
        command = self._command(request, "resume")
        return await self._send(request.run_id, command)

    @translate_errors
    async def ApplyResolution(
        self, request: gateway_pb2.ApplyResolutionRequest, context: Context
    ) -> gateway_pb2.CommandAccepted:
        _required(request, "run_id", "kind")
        _checked_common(request)
        parameters: Mapping[str, JsonValue] = (
            codec.struct_to_run_data(request.parameters) if request.HasField("parameters") else {}
        )
        run = await self._store.get_run(request.run_id)
        command_id = request.request_id or uuid.uuid4().hex
        if run.applied(command_id):
            return gateway_pb2.CommandAccepted(run_id=run.run_id, command_id=command_id)
        definition = await self._definition_of(run)
        _known_node(run, request.node_id)
        chosen = command_for(
            run,
            definition,
            request.kind,
            request.node_id,
            parameters,
            caller_name("anonymous"),
            comment=request.comment,
            command_id=command_id,
        )
        if isinstance(chosen, str):
            raise InvalidTransitionError(chosen)
        return await self._publish(run, await self._with_version(run, chosen))

    # --- replay, compare, resolutions --------------------------------------------------

    @translate_errors
    async def ReplayRun(
        self, request: gateway_pb2.ReplayRunRequest, context: Context
    ) -> gateway_pb2.StartRunResponse:
        """A NEW run of the original's workflow, on the workflow's latest version (a replay
        is a new run: it runs what the workflow is now, not what it was), with the original
        trigger data or ``input``. Its trigger kind is ``replay``, its detail and
        ``replay_of`` the original run id. With a ``request_id`` the new run's id is derived
        from the original's id and it, so a resent request finds the first replay."""
        _required(request, "run_id")
        _checked_common(request)
        original = await self._store.get_run(request.run_id)
        data = (
            codec.value_to_run_data(request.input)
            if request.HasField("input")
            else original.trigger.data
        )
        actor = caller_name("anonymous")
        now = _now()
        trigger = TriggerInfo(
            kind=TriggerKind.REPLAY,
            data=data,
            detail=original.run_id,
            started_by=actor,
            idempotency_key=request.request_id,
        )
        if request.request_id:
            run_id = uuid.uuid5(
                uuid.NAMESPACE_URL, f"replay/{original.run_id}/{request.request_id}"
            ).hex
        else:
            run_id = uuid.uuid4().hex
        entry = AuditEntry(
            at=now,
            actor=actor,
            action="replay",
            comment=request.comment,
            command_id=request.request_id,
            detail=f"replay of run {original.run_id}"
            + (" with new input" if request.HasField("input") else ""),
        )
        snapshot: WorkflowDefinition | None = None
        if original.test:
            # A dry run's definition is its snapshot: the replay is a dry run of it again.
            snapshot = await self._store.snapshot(original.run_id)
            run = engine.new_run(run_id, "", 0, snapshot, trigger, now, test=True)
        else:
            workflow = await self._store.latest_workflow(original.workflow_id)
            if workflow.state is not WorkflowState.ACTIVE:
                what = "a draft" if workflow.state is WorkflowState.DRAFT else workflow.state.value
                raise WorkflowStateError(
                    f"workflow {workflow.name!r} is {what}; activate it to replay runs"
                )
            run = engine.new_run(
                run_id, workflow.workflow_id, workflow.version, workflow.definition, trigger, now
            )
        run = dataclasses.replace(run, replay_of=original.run_id, audit=(entry,))
        if snapshot is not None:
            # The snapshot first, so the scheduler always finds it for the run.
            await self._store.insert_snapshot(run_id, snapshot)
        created = await self._store.insert_run(run)
        if not created:
            existing = await self._store.get_run(run_id)
            if existing.status is not RunStatus.QUEUED:
                return gateway_pb2.StartRunResponse(run_id=run_id, created=False)
            run = existing  # stored but maybe never published: publish again (idempotent)
        await _publish_start(self._publisher, self._topics, run, test=run.test)
        return gateway_pb2.StartRunResponse(run_id=run_id, created=created)

    @translate_errors
    async def CompareRuns(
        self, request: gateway_pb2.CompareRunsRequest, context: Context
    ) -> gateway_pb2.CompareRunsResponse:
        _required(request, "run_id", "other_run_id")
        _checked_common(request)
        run = await self._store.get_run(request.run_id)
        other = await self._store.get_run(request.other_run_id)
        response = gateway_pb2.CompareRunsResponse(
            status=codec.RUN_STATUS_TO_PROTO[run.status],
            other_status=codec.RUN_STATUS_TO_PROTO[other.status],
        )
        for difference in compare_runs(run, other):
            response.tasks.append(
                gateway_pb2.TaskComparison(
                    node_id=difference.node_id,
                    status=_task_status(difference.status),
                    other_status=_task_status(difference.other_status),
                    duration_seconds=difference.duration_seconds,
                    other_duration_seconds=difference.other_duration_seconds,
                    output_differs=difference.output_differs,
                    output=codec.json_to_value(difference.output),
                    other_output=codec.json_to_value(difference.other_output),
                )
            )
        return response

    @translate_errors
    async def ListResolutions(
        self, request: gateway_pb2.ListResolutionsRequest, context: Context
    ) -> gateway_pb2.ListResolutionsResponse:
        _required(request, "run_id")
        _checked_common(request)
        run = await self._store.get_run(request.run_id)
        definition = await self._definition_of(run)
        return gateway_pb2.ListResolutionsResponse(
            resolutions=[
                gateway_pb2.Resolution(
                    kind=r.kind,
                    node_id=r.node_id,
                    explanation=r.explanation,
                    error_class=r.error_class,
                    parameters=list(r.parameters),
                )
                for r in resolutions_for(run, definition)
            ]
        )

    # --- internals ---------------------------------------------------------------------

    @staticmethod
    def _command(request: Any, action: str, **fields: Any) -> control.Command:
        _checked_common(request)
        return control.Command(
            action,
            caller_name("anonymous"),
            command_id=request.request_id or uuid.uuid4().hex,
            comment=request.comment,
            **fields,
        )

    async def _send(self, run_id: str, command: control.Command) -> gateway_pb2.CommandAccepted:
        """Check ``command`` against the stored run, then publish it."""
        run = await self._store.get_run(run_id)
        if run.applied(command.command_id):
            # Sent before and carried out: the same command again has no further effect.
            return gateway_pb2.CommandAccepted(run_id=run.run_id, command_id=command.command_id)
        _known_node(run, command.node_id)
        definition = await self._definition_of(run)
        problem = control.command_problem(run, definition, command)
        if problem:
            raise InvalidTransitionError(problem)
        return await self._publish(run, await self._with_version(run, command))

    async def _with_version(self, run: RunState, command: control.Command) -> control.Command:
        """A restart names the version it moves to: the latest when the command is sent."""
        if command.action != "restart" or run.test or command.workflow_version:
            return command
        latest = await self._store.latest_workflow(run.workflow_id)
        return dataclasses.replace(command, workflow_version=latest.version)

    async def _publish(
        self, run: RunState, command: control.Command
    ) -> gateway_pb2.CommandAccepted:
        envelope = codec.new_envelope(run.run_id, run.workflow_id, run.workflow_version)
        envelope.run_command.CopyFrom(codec.command_to_proto(command))
        await self._publisher.publish(self._topics.commands, run.run_id, envelope)
        return gateway_pb2.CommandAccepted(run_id=run.run_id, command_id=command.command_id)

    async def _definition_of(self, run: RunState) -> WorkflowDefinition:
        """The registered version the run executes; a dry run's own snapshot."""
        if run.test:
            return await self._store.snapshot(run.run_id)
        workflow = await self._store.workflow_version(run.workflow_id, run.workflow_version)
        return workflow.definition


def _known_node(run: RunState, node_id: str) -> None:
    if node_id and node_id not in run.tasks:
        raise InvalidRequestError("node_id", f"run {run.run_id} has no task {node_id!r}")


def _task_status(status: TaskStatus | None) -> run_pb2.TaskStatus.ValueType:
    if status is None:
        return run_pb2.TASK_STATUS_UNSPECIFIED
    return codec.TASK_STATUS_TO_PROTO[status]
