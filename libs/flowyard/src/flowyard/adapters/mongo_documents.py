"""How Flowyard's domain objects are laid out as MongoDB documents, and back.

Kept apart from :mod:`flowyard.adapters.mongo` (the queries) so the layout can be read
in one place. User data (trigger data, inputs, outputs) is stored as JSON text: keys such
as "$where" or "a.b" are legal JSON but not legal MongoDB field names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from flowyard.domain.definition import (
    WorkflowDefinition,
    definition_to_document,
    parse_definition,
)
from flowyard.domain.json import JsonValue
from flowyard.domain.run import (
    Attempt,
    AuditEntry,
    ParentLink,
    RunState,
    RunStatus,
    TaskError,
    TaskState,
    TaskStatus,
    TriggerInfo,
    TriggerKind,
)
from flowyard.domain.workflow import StoredWorkflow, WorkflowState

Document = dict[str, Any]


def dump_json(value: JsonValue) -> str:
    return json.dumps(value, separators=(",", ":"))


def load_json(text: str | None) -> JsonValue:
    return None if text is None else cast(JsonValue, json.loads(text))


LOST_ERROR = TaskError("executor.lost", "the executor running this attempt stopped responding")


@dataclass(frozen=True)
class StoredTimer:
    """A durable timer: when ``due_at`` passes, the scheduler fires it into the run."""

    run_id: str
    workflow_id: str
    workflow_version: int
    node_id: str
    attempt: int
    kind: str
    due_at: datetime

    @property
    def timer_id(self) -> str:
        return timer_id(self.run_id, self.node_id, self.attempt, self.kind)


def timer_id(run_id: str, node_id: str, attempt: int, kind: str) -> str:
    return f"{run_id}:{node_id}:{attempt}:{kind}"


def timer_to_doc(timer: StoredTimer) -> Document:
    return {
        "_id": timer.timer_id,
        "run_id": timer.run_id,
        "workflow_id": timer.workflow_id,
        "workflow_version": timer.workflow_version,
        "node_id": timer.node_id,
        "attempt": timer.attempt,
        "kind": timer.kind,
        "due_at": timer.due_at,
    }


def timer_from_doc(doc: Document) -> StoredTimer:
    return StoredTimer(
        run_id=doc["run_id"],
        workflow_id=doc.get("workflow_id", ""),
        workflow_version=int(doc.get("workflow_version", 0)),
        node_id=doc["node_id"],
        attempt=int(doc["attempt"]),
        kind=doc["kind"],
        due_at=doc["due_at"],
    )


# --- document mapping ------------------------------------------------------------------


def definition_to_doc(definition: WorkflowDefinition) -> str:
    """A definition as JSON text: node configs hold keys like "$match" (a query's
    pipeline) that are fine in JSON but not as MongoDB field names."""
    return dump_json(definition_to_document(definition))


def definition_from_doc(stored: str | dict[str, Any]) -> WorkflowDefinition:
    document = json.loads(stored) if isinstance(stored, str) else stored
    return parse_definition(document)


def workflow_to_doc(workflow: StoredWorkflow) -> Document:
    return {
        "_id": f"{workflow.workflow_id}:{workflow.version}",
        "workflow_id": workflow.workflow_id,
        "name": workflow.name,
        "version": workflow.version,
        "state": workflow.state.value,
        "definition": definition_to_doc(workflow.definition),
        "created_at": workflow.created_at,
        "updated_at": workflow.updated_at,
    }


def workflow_from_doc(doc: Document) -> StoredWorkflow:
    return StoredWorkflow(
        workflow_id=doc["workflow_id"],
        version=int(doc["version"]),
        state=WorkflowState(doc["state"]),
        definition=definition_from_doc(doc["definition"]),
        created_at=doc["created_at"],
        updated_at=doc["updated_at"],
    )


def error_to_doc(error: TaskError | None) -> Document | None:
    if error is None:
        return None
    return {"code": error.code, "message": error.message, "stack_trace": error.stack_trace}


def error_from_doc(doc: Document | None) -> TaskError | None:
    if not doc:
        return None
    return TaskError(doc["code"], doc["message"], doc.get("stack_trace", ""))


def run_to_doc(run: RunState) -> Document:
    return {
        "_id": run.run_id,
        "workflow_id": run.workflow_id,
        "workflow_name": run.workflow_name,
        "workflow_type": run.workflow_type,
        "workflow_version": run.workflow_version,
        "status": run.status.value,
        "trigger": {
            "kind": run.trigger.kind.value,
            "data": dump_json(run.trigger.data),
            "detail": run.trigger.detail,
            "started_by": run.trigger.started_by,
            "idempotency_key": run.trigger.idempotency_key,
        },
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "error": error_to_doc(run.error),
        "failed_node_id": run.failed_node_id,
        "revision": run.revision,
        "test": run.test,
        "audit": [
            {
                "at": a.at,
                "actor": a.actor,
                "action": a.action,
                "node_id": a.node_id,
                "comment": a.comment,
                "command_id": a.command_id,
                "detail": a.detail,
            }
            for a in run.audit
        ],
        "replay_of": run.replay_of,
        "overrides": dump_json({k: dict(v) for k, v in run.overrides.items()}),
        "stopped_by": run.stopped_by,
        "cleanup_requested": run.cleanup_requested,
        "parent": None
        if run.parent is None
        else {
            "run_id": run.parent.run_id,
            "node_id": run.parent.node_id,
            "attempt": run.parent.attempt,
            "wait": run.parent.wait,
        },
        # For history filters, sorting and search (flowyard.adapters.history).
        "duration_ms": run_duration_ms(run),
        "created_month": run.created_at.month,
        "task_count": len(run.tasks),
        "warning_count": sum(len(t.warnings) for t in run.tasks.values()),
        "tasks": [
            {
                "node_id": t.node_id,
                "status": t.status.value,
                "attempt": t.attempt,
                "started_at": t.started_at,
                "finished_at": t.finished_at,
                "output": dump_json(t.output),
                "error": error_to_doc(t.error),
                "warnings": list(t.warnings),
                "due_at": t.due_at,
                "executor_id": t.executor_id,
                "child_run_id": t.child_run_id,
                "lost_attempts": t.lost_attempts,
                "base_attempt": t.base_attempt,
                "skipped_by_operator": t.skipped_by_operator,
            }
            for t in run.tasks.values()
        ],
    }


def run_duration_ms(run: RunState) -> int:
    """Milliseconds from start (or creation, for a run that never started) to the end;
    -1 while the run is not finished, so unfinished runs sort as the shortest."""
    if run.finished_at is None:
        return -1
    start = run.started_at or run.created_at
    return max(int((run.finished_at - start).total_seconds() * 1000), 0)


def run_from_doc(doc: Document) -> RunState:
    trigger = doc["trigger"]
    return RunState(
        run_id=doc["_id"],
        workflow_id=doc["workflow_id"],
        workflow_name=doc["workflow_name"],
        workflow_type=doc.get("workflow_type", ""),
        workflow_version=int(doc["workflow_version"]),
        status=RunStatus(doc["status"]),
        trigger=TriggerInfo(
            kind=TriggerKind(trigger["kind"]),
            data=load_json(trigger.get("data")),
            detail=trigger.get("detail", ""),
            started_by=trigger.get("started_by", ""),
            idempotency_key=trigger.get("idempotency_key", ""),
        ),
        created_at=doc["created_at"],
        started_at=doc.get("started_at"),
        finished_at=doc.get("finished_at"),
        error=error_from_doc(doc.get("error")),
        failed_node_id=doc.get("failed_node_id", ""),
        revision=int(doc.get("revision", 0)),
        test=bool(doc.get("test", False)),
        audit=tuple(
            AuditEntry(
                at=a["at"],
                actor=a.get("actor", ""),
                action=a["action"],
                node_id=a.get("node_id", ""),
                comment=a.get("comment", ""),
                command_id=a.get("command_id", ""),
                detail=a.get("detail", ""),
            )
            for a in doc.get("audit") or ()
        ),
        replay_of=doc.get("replay_of", ""),
        overrides=_overrides(doc.get("overrides")),
        stopped_by=doc.get("stopped_by", ""),
        cleanup_requested=bool(doc.get("cleanup_requested", False)),
        parent=parent_from_doc(doc.get("parent")),
        tasks={
            t["node_id"]: TaskState(
                node_id=t["node_id"],
                status=TaskStatus(t["status"]),
                attempt=int(t["attempt"]),
                started_at=t.get("started_at"),
                finished_at=t.get("finished_at"),
                output=load_json(t.get("output")),
                error=error_from_doc(t.get("error")),
                warnings=tuple(t.get("warnings") or ()),
                due_at=t.get("due_at"),
                executor_id=t.get("executor_id", ""),
                child_run_id=t.get("child_run_id", ""),
                lost_attempts=int(t.get("lost_attempts", 0)),
                base_attempt=int(t.get("base_attempt", 0)),
                skipped_by_operator=bool(t.get("skipped_by_operator", False)),
            )
            for t in doc.get("tasks", [])
        },
    )


def _overrides(text: str | None) -> dict[str, dict[str, JsonValue]]:
    loaded = load_json(text) if text else None
    if not isinstance(loaded, dict):
        return {}
    return {k: dict(v) for k, v in loaded.items() if isinstance(v, dict)}


def parent_from_doc(doc: Document | None) -> ParentLink | None:
    if not doc:
        return None
    return ParentLink(doc["run_id"], doc["node_id"], int(doc["attempt"]), bool(doc["wait"]))


def attempt_id(run_id: str, node_id: str, number: int) -> str:
    return f"{run_id}:{node_id}:{number}"


def attempt_to_doc(attempt: Attempt) -> Document:
    return {
        "_id": attempt_id(attempt.run_id, attempt.node_id, attempt.number),
        "run_id": attempt.run_id,
        "node_id": attempt.node_id,
        "number": attempt.number,
        "status": attempt.status.value,
        "input": dump_json(attempt.input),
        "output": dump_json(attempt.output),
        "error": error_to_doc(attempt.error),
        "executor_id": attempt.executor_id,
        "started_at": attempt.started_at,
        "finished_at": attempt.finished_at,
        "warnings": list(attempt.warnings),
    }


def attempt_from_doc(doc: Document) -> Attempt:
    return Attempt(
        run_id=doc["run_id"],
        node_id=doc["node_id"],
        number=int(doc["number"]),
        status=TaskStatus(doc["status"]),
        input=load_json(doc.get("input")),
        output=load_json(doc.get("output")),
        error=error_from_doc(doc.get("error")),
        executor_id=doc.get("executor_id", ""),
        started_at=doc.get("started_at"),
        finished_at=doc.get("finished_at"),
        warnings=tuple(doc.get("warnings") or ()),
    )
