"""The one place where domain objects and protobuf messages meet (``*_to_proto`` /
``*_from_proto``). Services speak domain objects; only adapters and the gateway edge
call this module.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import DecodeError as ProtobufDecodeError

from flowyard.domain.control import Command
from flowyard.domain.definition import (
    NodeType,
    WorkflowDefinition,
    definition_to_document,
    parse_definition,
)
from flowyard.domain.json import JsonObject, JsonValue
from flowyard.domain.json import problem as json_problem
from flowyard.domain.run import (
    Attempt,
    RunState,
    RunStatus,
    TaskError,
    TaskStatus,
    TriggerInfo,
    TriggerKind,
)
from flowyard.domain.workflow import StoredWorkflow, WorkflowState
from flowyard.errors import DecodeError
from flowyard.v1 import events_pb2, run_pb2, workflow_pb2

_MAX_EXACT_INT = 2**53


def _restore_ints(value: JsonValue) -> JsonValue:
    # protobuf Value holds numbers as doubles; JSON users expect 3, not 3.0, back.
    if isinstance(value, float) and value.is_integer() and abs(value) < _MAX_EXACT_INT:
        return int(value)
    if isinstance(value, list):
        return [_restore_ints(v) for v in value]
    if isinstance(value, dict):
        return {k: _restore_ints(v) for k, v in value.items()}
    return value


def _message_to_json(message: struct_pb2.Value | struct_pb2.Struct) -> Any:
    try:
        return json_format.MessageToDict(message)
    except ValueError as exc:  # "Fail to serialize NaN for Value.number_value ..."
        raise DecodeError(f"not JSON: {exc}") from None


def json_to_value(value: JsonValue) -> struct_pb2.Value:
    message = struct_pb2.Value()
    # ParseDict accepts any JSON value for a Value message; its stub says dict only.
    json_format.ParseDict(cast(Any, value), message)
    return message


def value_to_json(message: struct_pb2.Value) -> JsonValue:
    """The JSON value a ``Value`` holds; ``DecodeError`` when it holds a number JSON cannot
    represent (NaN, an infinity), which only a hand-made message can carry."""
    return _restore_ints(cast(JsonValue, _message_to_json(message)))


def value_to_run_data(message: struct_pb2.Value) -> JsonValue:
    """A ``Value`` from a client that becomes a run's data (trigger input, an output):
    ``DecodeError`` unless it can travel through the services (see json.problem)."""
    value = value_to_json(message)
    found = json_problem(value)
    if found:
        raise DecodeError(f"not usable as a run's data: {found}")
    return value


def struct_to_run_data(message: struct_pb2.Struct) -> JsonObject:
    """:func:`value_to_run_data` for a ``Struct`` (an object)."""
    value = struct_to_json(message)
    found = json_problem(value)
    if found:
        raise DecodeError(f"not usable as a run's data: {found}")
    return value


def json_to_struct(value: Mapping[str, JsonValue]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    json_format.ParseDict(dict(value), message)
    return message


def struct_to_json(message: struct_pb2.Struct) -> JsonObject:
    restored = _restore_ints(_message_to_json(message))
    assert isinstance(restored, dict)
    return restored


def time_to_proto(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    if moment is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def time_from_proto(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


# --- definitions -----------------------------------------------------------------------


def definition_to_proto(definition: WorkflowDefinition) -> workflow_pb2.WorkflowDefinition:
    message = workflow_pb2.WorkflowDefinition(
        name=definition.name,
        type=definition.type,
        description=definition.description,
        context=json_to_struct(definition.context),
        stages=list(definition.stages),
        concurrency=workflow_pb2.Concurrency(
            max_runs=definition.concurrency.max_runs,
            when_full=definition.concurrency.when_full.value,
        ),
        retention_days=definition.retention_days,
    )
    for node in definition.nodes:
        message.nodes.append(
            workflow_pb2.Node(
                id=node.id,
                type=node.type.value,
                name=node.name,
                description=node.description,
                stage=node.stage,
                config=json_to_struct(node.config),
                context=json_to_struct(node.context),
                timeout_seconds=node.timeout_seconds,
                retry=workflow_pb2.RetryPolicy(
                    max_attempts=node.retry.max_attempts,
                    initial_backoff_seconds=node.retry.initial_backoff_seconds,
                    backoff_multiplier=node.retry.backoff_multiplier,
                    max_backoff_seconds=node.retry.max_backoff_seconds,
                    jitter=node.retry.jitter,
                ),
                non_cancellable=not node.cancellable,
                cleanup=node.cleanup,
                not_skippable=not node.skippable,
            )
        )
    for edge in definition.edges:
        message.edges.append(
            workflow_pb2.Edge(source=edge.source, target=edge.target, when=edge.when)
        )
    return message


def definition_from_proto(message: workflow_pb2.WorkflowDefinition) -> WorkflowDefinition:
    """Validate a definition received over gRPC; raises DefinitionError naming each problem."""
    nodes: list[JsonValue] = []
    for node in message.nodes:
        raw: dict[str, JsonValue] = {
            "id": node.id,
            "type": node.type,
            "name": node.name,
            "description": node.description,
            "stage": node.stage,
            "config": struct_to_json(node.config),
            "context": struct_to_json(node.context),
            "timeout_seconds": node.timeout_seconds,
            "cancellable": not node.non_cancellable,
            "cleanup": node.cleanup,
            "skippable": not node.not_skippable,
        }
        if node.HasField("retry"):
            raw["retry"] = {
                "max_attempts": node.retry.max_attempts or 1,
                "initial_backoff_seconds": node.retry.initial_backoff_seconds or 1.0,
                "backoff_multiplier": node.retry.backoff_multiplier or 2.0,
                "max_backoff_seconds": node.retry.max_backoff_seconds,
                "jitter": node.retry.jitter,
            }
        nodes.append(raw)
    document: dict[str, JsonValue] = {
        "name": message.name,
        "type": message.type,
        "description": message.description,
        "context": struct_to_json(message.context),
        "nodes": nodes,
        "edges": [
            {"from": e.source, "to": e.target, **({"when": e.when} if e.when else {})}
            for e in message.edges
        ],
    }
    if message.stages:
        document["stages"] = list(message.stages)
    if message.HasField("concurrency") and message.concurrency.max_runs:
        document["concurrency"] = {
            "max_runs": message.concurrency.max_runs,
            "when_full": message.concurrency.when_full or "queue",
        }
    if message.retention_days:
        document["retention_days"] = message.retention_days
    return parse_definition(document)


WORKFLOW_STATE_TO_PROTO = {
    WorkflowState.DRAFT: workflow_pb2.WORKFLOW_STATE_DRAFT,
    WorkflowState.ACTIVE: workflow_pb2.WORKFLOW_STATE_ACTIVE,
    WorkflowState.PAUSED: workflow_pb2.WORKFLOW_STATE_PAUSED,
}


def workflow_to_proto(workflow: StoredWorkflow) -> workflow_pb2.Workflow:
    return workflow_pb2.Workflow(
        workflow_id=workflow.workflow_id,
        version=workflow.version,
        state=WORKFLOW_STATE_TO_PROTO[workflow.state],
        definition=definition_to_proto(workflow.definition),
        created_at=time_to_proto(workflow.created_at),
        updated_at=time_to_proto(workflow.updated_at),
    )


def same_definition(a: WorkflowDefinition, b: WorkflowDefinition) -> bool:
    return definition_to_document(a) == definition_to_document(b)


# --- runs ------------------------------------------------------------------------------

RUN_STATUS_TO_PROTO: Mapping[RunStatus, run_pb2.RunStatus.ValueType] = {
    status: run_pb2.RunStatus.Value(f"RUN_STATUS_{status.name}") for status in RunStatus
}
RUN_STATUS_FROM_PROTO = {v: k for k, v in RUN_STATUS_TO_PROTO.items()}
TASK_STATUS_TO_PROTO: Mapping[TaskStatus, run_pb2.TaskStatus.ValueType] = {
    status: run_pb2.TaskStatus.Value(f"TASK_STATUS_{status.name}") for status in TaskStatus
}
TASK_STATUS_FROM_PROTO = {v: k for k, v in TASK_STATUS_TO_PROTO.items()}


def error_to_proto(error: TaskError | None) -> run_pb2.TaskError | None:
    if error is None:
        return None
    return run_pb2.TaskError(code=error.code, message=error.message, stack_trace=error.stack_trace)


def error_from_proto(message: run_pb2.TaskError) -> TaskError:
    return TaskError(code=message.code, message=message.message, stack_trace=message.stack_trace)


def trigger_to_proto(trigger: TriggerInfo) -> run_pb2.TriggerInfo:
    return run_pb2.TriggerInfo(
        kind=trigger.kind.value,
        detail=trigger.detail,
        started_by=trigger.started_by,
        data=json_to_value(trigger.data),
        idempotency_key=trigger.idempotency_key,
    )


def trigger_from_proto(message: run_pb2.TriggerInfo) -> TriggerInfo:
    try:
        kind = TriggerKind(message.kind or TriggerKind.API.value)
    except ValueError:
        raise DecodeError(f"unknown trigger kind {message.kind!r}") from None
    return TriggerInfo(
        kind=kind,
        data=value_to_json(message.data) if message.HasField("data") else None,
        detail=message.detail,
        started_by=message.started_by,
        idempotency_key=message.idempotency_key,
    )


def _duration(start: datetime | None, end: datetime | None) -> duration_pb2.Duration | None:
    if start is None or end is None:
        return None
    duration = duration_pb2.Duration()
    duration.FromTimedelta(end - start)
    return duration


def attempt_to_proto(attempt: Attempt) -> run_pb2.Attempt:
    return run_pb2.Attempt(
        number=attempt.number,
        status=TASK_STATUS_TO_PROTO[attempt.status],
        started_at=time_to_proto(attempt.started_at),
        finished_at=time_to_proto(attempt.finished_at),
        duration=_duration(attempt.started_at, attempt.finished_at),
        input=json_to_value(attempt.input),
        output=json_to_value(attempt.output),
        error=error_to_proto(attempt.error),
        executor_id=attempt.executor_id,
        warnings=list(attempt.warnings),
    )


def run_to_proto(
    run: RunState,
    definition: WorkflowDefinition | None = None,
    attempts: Mapping[str, Sequence[Attempt]] | None = None,
) -> run_pb2.Run:
    """The run as users see it; ``definition`` adds names/stages, ``attempts`` the history."""
    attempts = attempts or {}
    message = run_pb2.Run(
        run_id=run.run_id,
        workflow_id=run.workflow_id,
        workflow_name=run.workflow_name,
        workflow_type=run.workflow_type,
        workflow_version=run.workflow_version,
        status=RUN_STATUS_TO_PROTO[run.status],
        trigger=trigger_to_proto(run.trigger),
        created_at=time_to_proto(run.created_at),
        started_at=time_to_proto(run.started_at),
        finished_at=time_to_proto(run.finished_at),
        duration=_duration(run.started_at, run.finished_at),
        error=error_to_proto(run.error),
        failed_node_id=run.failed_node_id,
        warnings=list(run.warnings),
        test=run.test,
        parent_run_id=run.parent.run_id if run.parent else "",
        parent_node_id=run.parent.node_id if run.parent else "",
        replay_of=run.replay_of,
        audit=[
            run_pb2.AuditEntry(
                at=time_to_proto(a.at),
                actor=a.actor,
                action=a.action,
                node_id=a.node_id,
                comment=a.comment,
                command_id=a.command_id,
                detail=a.detail,
            )
            for a in run.audit
        ],
    )
    for node_id, task in run.tasks.items():
        node = definition.node(node_id) if definition else None
        history = sorted(attempts.get(node_id, ()), key=lambda a: a.number)
        latest = next((a for a in reversed(history) if a.number == task.attempt), None)
        entry = run_pb2.Task(
            node_id=node_id,
            name=node.display_name if node else node_id,
            type=node.type.value if node else "",
            stage=node.stage if node else "",
            status=TASK_STATUS_TO_PROTO[task.status],
            started_at=time_to_proto(task.started_at),
            finished_at=time_to_proto(task.finished_at),
            duration=_duration(task.started_at, task.finished_at),
            output=json_to_value(task.output),
            error=error_to_proto(task.error),
            attempts=[attempt_to_proto(a) for a in history],
            warnings=list(task.warnings),
            due_at=time_to_proto(task.due_at),
            attempt=task.attempt,
            executor_id=task.executor_id,
            child_run_id=task.child_run_id,
        )
        if latest is not None:
            entry.input.CopyFrom(json_to_value(latest.input))
        elif node is not None and node.type is NodeType.TRIGGER:
            entry.input.CopyFrom(json_to_value(run.trigger.data))
        message.tasks.append(entry)
    return message


def command_from_proto(message: events_pb2.RunCommand) -> Command:
    """An operator's command as the domain sees it."""
    action = message.WhichOneof("action")
    if action is None:
        raise DecodeError("run command without an action")
    body = getattr(message, action)
    return Command(
        action=action,
        actor=message.actor,
        command_id=message.command_id,
        comment=message.comment,
        node_id=getattr(body, "node_id", ""),
        cleanup=getattr(body, "cleanup", False),
        output=value_to_json(body.output) if action == "skip_task" else None,
        config_override=struct_to_json(body.config_override) if action == "retry_task" else {},
        workflow_version=getattr(body, "workflow_version", 0),
    )


def command_to_proto(command: Command) -> events_pb2.RunCommand:
    """The message :func:`command_from_proto` reads back (what the gateway publishes)."""
    message = events_pb2.RunCommand(
        command_id=command.command_id, actor=command.actor, comment=command.comment
    )
    action = command.action
    if action == "stop":
        message.stop.cleanup = command.cleanup
    elif action == "retry_task":
        message.retry_task.node_id = command.node_id
        if command.config_override:
            message.retry_task.config_override.CopyFrom(json_to_struct(command.config_override))
    elif action == "restart":
        message.restart.workflow_version = command.workflow_version
    elif action == "rerun_from":
        message.rerun_from.node_id = command.node_id
    elif action == "skip_task":
        message.skip_task.node_id = command.node_id
        if command.output is not None:
            message.skip_task.output.CopyFrom(json_to_value(command.output))
    elif action == "resume":
        message.resume.SetInParent()
    else:
        raise ValueError(f"unknown run command {action!r}")
    return message


# --- Kafka envelopes -------------------------------------------------------------------


def new_envelope(
    run_id: str = "", workflow_id: str = "", workflow_version: int = 0
) -> events_pb2.Envelope:
    envelope = events_pb2.Envelope(
        event_id=uuid.uuid4().hex,
        run_id=run_id,
        workflow_id=workflow_id,
        workflow_version=workflow_version,
    )
    envelope.time.GetCurrentTime()
    return envelope


def decode_envelope(data: bytes | None) -> events_pb2.Envelope:
    """Parse a Kafka message value; raises DecodeError naming what is wrong."""
    if not data:
        raise DecodeError("empty message")
    envelope = events_pb2.Envelope()
    try:
        envelope.ParseFromString(data)
    except ProtobufDecodeError as exc:
        raise DecodeError(f"not a flowyard.v1.Envelope: {exc}") from exc
    if not envelope.event_id:
        raise DecodeError("envelope has no event_id")
    if envelope.WhichOneof("payload") is None:
        raise DecodeError("envelope has no payload")
    if envelope.HasField("time"):
        try:
            envelope.time.ToDatetime()
        except ValueError as exc:  # seconds outside years 1-9999, nanos outside 0-999999999
            raise DecodeError(f"envelope time is not a valid timestamp: {exc}") from None
    return envelope
