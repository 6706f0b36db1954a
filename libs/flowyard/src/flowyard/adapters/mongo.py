"""MongoDB adapter (works against MongoDB and FerretDB v1).

Only single-document atomic operations are used: runs are replaced conditionally on
their ``revision``, idempotency keys and workflow versions rely on unique ``_id``s.
Driver errors leave this module as :class:`InfrastructureError`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any, cast

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from flowyard.domain.definition import definition_to_document, parse_definition
from flowyard.domain.json import JsonValue
from flowyard.domain.run import (
    Attempt,
    RunState,
    RunStatus,
    TaskError,
    TaskState,
    TaskStatus,
    TriggerInfo,
    TriggerKind,
)
from flowyard.domain.workflow import StoredWorkflow, WorkflowState
from flowyard.errors import (
    ConflictError,
    InfrastructureError,
    RunNotFoundError,
    WorkflowNotFoundError,
)

Document = dict[str, Any]


# User data (trigger data, inputs, outputs) is stored as JSON text: keys such as "$where"
# or "a.b" are legal JSON but not legal MongoDB field names, and they must not break a run.
def _dump(value: JsonValue) -> str:
    return json.dumps(value, separators=(",", ":"))


def _load(text: str | None) -> JsonValue:
    return None if text is None else cast(JsonValue, json.loads(text))


class MongoStore:
    """Workflows, runs and attempts in one database."""

    def __init__(self, url: str, database: str) -> None:
        self._client: AsyncMongoClient[Document] = AsyncMongoClient(
            url, tz_aware=True, serverSelectionTimeoutMS=10_000, appname="flowyard"
        )
        self._db: AsyncDatabase[Document] = self._client[database]
        self.workflows = self._db["workflows"]
        self.runs = self._db["runs"]
        self.attempts = self._db["attempts"]

    async def __aenter__(self) -> MongoStore:
        await self.ensure_indexes()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._client.close()

    async def ensure_indexes(self) -> None:
        try:
            await self.workflows.create_index(
                [("name", ASCENDING), ("version", DESCENDING)], name="name_version", unique=True
            )
            await self.workflows.create_index([("workflow_id", ASCENDING)], name="workflow_id")
            await self.runs.create_index(
                [("workflow_id", ASCENDING), ("created_at", DESCENDING)], name="workflow_created"
            )
            await self.runs.create_index([("created_at", DESCENDING)], name="created")
            await self.attempts.create_index([("run_id", ASCENDING)], name="run")
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB index set-up failed: {exc}") from exc

    async def ping(self) -> None:
        try:
            await self._client.admin.command("ping")
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB does not answer: {exc}") from exc

    # --- workflows ---------------------------------------------------------------------

    async def latest_workflow(self, name_or_id: str) -> StoredWorkflow:
        doc = await self._find_one(
            self.workflows,
            {"$or": [{"name": name_or_id}, {"workflow_id": name_or_id}]},
            sort=[("version", DESCENDING)],
        )
        if doc is None:
            raise WorkflowNotFoundError(name_or_id)
        return _workflow_from_doc(doc)

    async def workflow_version(self, workflow_id: str, version: int) -> StoredWorkflow:
        doc = await self._find_one(self.workflows, {"workflow_id": workflow_id, "version": version})
        if doc is None:
            raise WorkflowNotFoundError(workflow_id, version)
        return _workflow_from_doc(doc)

    async def get_workflow(self, name_or_id: str, version: int = 0) -> StoredWorkflow:
        if not version:
            return await self.latest_workflow(name_or_id)
        latest = await self.latest_workflow(name_or_id)
        return await self.workflow_version(latest.workflow_id, version)

    async def list_workflows(self) -> list[StoredWorkflow]:
        latest: dict[str, StoredWorkflow] = {}
        try:
            async for doc in self.workflows.find({}).sort([("name", 1), ("version", -1)]):
                if doc["name"] not in latest:
                    latest[doc["name"]] = _workflow_from_doc(doc)
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB query failed: {exc}") from exc
        return list(latest.values())

    async def insert_workflow(self, workflow: StoredWorkflow) -> bool:
        """Store a new version; False when that version number was taken concurrently."""
        return await self._insert_new(self.workflows, _workflow_to_doc(workflow))

    # --- runs --------------------------------------------------------------------------

    async def insert_run(self, run: RunState) -> bool:
        """Store a new run; False if a run with that id exists already."""
        return await self._insert_new(self.runs, run_to_doc(run))

    async def find_run(self, run_id: str) -> RunState | None:
        doc = await self._find_one(self.runs, {"_id": run_id})
        return None if doc is None else run_from_doc(doc)

    async def get_run(self, run_id: str) -> RunState:
        run = await self.find_run(run_id)
        if run is None:
            raise RunNotFoundError(run_id)
        return run

    async def save_run(self, run: RunState, expected_revision: int) -> RunState:
        """Replace the run if nobody changed it since ``expected_revision``."""
        stored = replace(run, revision=expected_revision + 1)
        try:
            result = await self.runs.replace_one(
                {"_id": run.run_id, "revision": expected_revision}, run_to_doc(stored)
            )
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB update failed: {exc}") from exc
        if result.matched_count != 1:
            raise ConflictError(f"run {run.run_id} changed since revision {expected_revision}")
        return stored

    # --- attempts ----------------------------------------------------------------------

    async def find_attempt(self, run_id: str, node_id: str, number: int) -> Attempt | None:
        doc = await self._find_one(self.attempts, {"_id": _attempt_id(run_id, node_id, number)})
        return None if doc is None else _attempt_from_doc(doc)

    async def claim_attempt(self, attempt: Attempt) -> Attempt | None:
        """Record a starting attempt; if it exists already (a redelivery), return that one.

        One insert in the common case: cheaper than a read then a write, and atomic.
        """
        if await self._insert_new(self.attempts, _attempt_to_doc(attempt)):
            return None
        return await self.find_attempt(attempt.run_id, attempt.node_id, attempt.number)

    async def save_attempt(self, attempt: Attempt) -> None:
        doc = _attempt_to_doc(attempt)
        try:
            await self.attempts.replace_one({"_id": doc["_id"]}, doc, upsert=True)
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB update failed: {exc}") from exc

    async def attempts_of(self, run_id: str) -> dict[str, list[Attempt]]:
        found: dict[str, list[Attempt]] = {}
        try:
            async for doc in self.attempts.find({"run_id": run_id}):
                attempt = _attempt_from_doc(doc)
                found.setdefault(attempt.node_id, []).append(attempt)
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB query failed: {exc}") from exc
        return found

    async def _insert_new(self, collection: Any, doc: Document) -> bool:
        """Insert ``doc``; False when its ``_id`` (or a unique key) is taken already."""
        try:
            await collection.insert_one(doc)
        except DuplicateKeyError:
            return False
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB insert failed: {exc}") from exc
        return True

    async def _find_one(
        self, collection: Any, query: Mapping[str, Any], sort: Sequence[Any] | None = None
    ) -> Document | None:
        try:
            result: Document | None = await collection.find_one(query, sort=sort)
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB query failed: {exc}") from exc
        return result


def new_workflow_id() -> str:
    return uuid.uuid4().hex


# --- document mapping ------------------------------------------------------------------


def _workflow_to_doc(workflow: StoredWorkflow) -> Document:
    return {
        "_id": f"{workflow.workflow_id}:{workflow.version}",
        "workflow_id": workflow.workflow_id,
        "name": workflow.name,
        "version": workflow.version,
        "state": workflow.state.value,
        "definition": definition_to_document(workflow.definition),
        "created_at": workflow.created_at,
        "updated_at": workflow.updated_at,
    }


def _workflow_from_doc(doc: Document) -> StoredWorkflow:
    return StoredWorkflow(
        workflow_id=doc["workflow_id"],
        version=int(doc["version"]),
        state=WorkflowState(doc["state"]),
        definition=parse_definition(doc["definition"]),
        created_at=doc["created_at"],
        updated_at=doc["updated_at"],
    )


def _error_to_doc(error: TaskError | None) -> Document | None:
    if error is None:
        return None
    return {"code": error.code, "message": error.message, "stack_trace": error.stack_trace}


def _error_from_doc(doc: Document | None) -> TaskError | None:
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
            "data": _dump(run.trigger.data),
            "detail": run.trigger.detail,
            "started_by": run.trigger.started_by,
            "idempotency_key": run.trigger.idempotency_key,
        },
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "error": _error_to_doc(run.error),
        "failed_node_id": run.failed_node_id,
        "revision": run.revision,
        "tasks": [
            {
                "node_id": t.node_id,
                "status": t.status.value,
                "attempt": t.attempt,
                "started_at": t.started_at,
                "finished_at": t.finished_at,
                "output": _dump(t.output),
                "error": _error_to_doc(t.error),
            }
            for t in run.tasks.values()
        ],
    }


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
            data=_load(trigger.get("data")),
            detail=trigger.get("detail", ""),
            started_by=trigger.get("started_by", ""),
            idempotency_key=trigger.get("idempotency_key", ""),
        ),
        created_at=doc["created_at"],
        started_at=doc.get("started_at"),
        finished_at=doc.get("finished_at"),
        error=_error_from_doc(doc.get("error")),
        failed_node_id=doc.get("failed_node_id", ""),
        revision=int(doc.get("revision", 0)),
        tasks={
            t["node_id"]: TaskState(
                node_id=t["node_id"],
                status=TaskStatus(t["status"]),
                attempt=int(t["attempt"]),
                started_at=t.get("started_at"),
                finished_at=t.get("finished_at"),
                output=_load(t.get("output")),
                error=_error_from_doc(t.get("error")),
            )
            for t in doc.get("tasks", [])
        },
    )


def _attempt_id(run_id: str, node_id: str, number: int) -> str:
    return f"{run_id}:{node_id}:{number}"


def _attempt_to_doc(attempt: Attempt) -> Document:
    return {
        "_id": _attempt_id(attempt.run_id, attempt.node_id, attempt.number),
        "run_id": attempt.run_id,
        "node_id": attempt.node_id,
        "number": attempt.number,
        "status": attempt.status.value,
        "input": _dump(attempt.input),
        "output": _dump(attempt.output),
        "error": _error_to_doc(attempt.error),
        "executor_id": attempt.executor_id,
        "started_at": attempt.started_at,
        "finished_at": attempt.finished_at,
    }


def _attempt_from_doc(doc: Document) -> Attempt:
    return Attempt(
        run_id=doc["run_id"],
        node_id=doc["node_id"],
        number=int(doc["number"]),
        status=TaskStatus(doc["status"]),
        input=_load(doc.get("input")),
        output=_load(doc.get("output")),
        error=_error_from_doc(doc.get("error")),
        executor_id=doc.get("executor_id", ""),
        started_at=doc.get("started_at"),
        finished_at=doc.get("finished_at"),
    )
