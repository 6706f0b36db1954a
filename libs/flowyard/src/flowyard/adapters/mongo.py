"""MongoDB adapter (works against MongoDB and FerretDB v1).

Only single-document atomic operations are used: runs are replaced conditionally on
their ``revision``, idempotency keys and workflow versions rely on unique ``_id``s.
Driver errors leave this module as :class:`InfrastructureError`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, cast

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from flowyard.domain.definition import (
    WorkflowDefinition,
    definition_to_document,
    parse_definition,
)
from flowyard.domain.json import JsonValue
from flowyard.domain.run import (
    Attempt,
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
from flowyard.errors import (
    ConflictError,
    InfrastructureError,
    NotFoundError,
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
        self.snapshots = self._db["definition_snapshots"]
        self.timers = self._db["timers"]
        self.slots = self._db["run_slots"]

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
            await self.runs.create_index(
                [("workflow_id", ASCENDING), ("status", ASCENDING), ("created_at", ASCENDING)],
                name="workflow_status_created",
            )
            await self.timers.create_index([("due_at", ASCENDING)], name="due")
            await self.timers.create_index([("run_id", ASCENDING)], name="run")
            await self.slots.create_index([("workflow_id", ASCENDING)], name="workflow")
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB index set-up failed: {exc}") from exc

    async def ping(self) -> None:
        try:
            await self._client.admin.command("ping")
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB does not answer: {exc}") from exc

    # --- workflows ---------------------------------------------------------------------

    # A state write repeats on a newer version at most this often (versions keep coming).
    _MAX_STATE_RACES = 5

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

    async def set_workflow_state(self, name_or_id: str, state: WorkflowState) -> StoredWorkflow:
        """Set the state of the workflow's latest version (the one readers take).

        A version applied meanwhile is caught by reading the latest again after the write
        and repeating on the newer one. The write marks the version (``state_set``) so
        :meth:`inherit_workflow_state` never overrides a state that was set on it.
        """
        latest = await self.latest_workflow(name_or_id)
        for _ in range(self._MAX_STATE_RACES):
            await self._update_workflow_state(latest, state)
            now_latest = await self.latest_workflow(latest.workflow_id)
            if now_latest.version == latest.version:
                return now_latest
            latest = now_latest
        return latest

    async def inherit_workflow_state(self, workflow: StoredWorkflow) -> StoredWorkflow:
        """After storing ``workflow`` with the state its previous version had when read:
        if that state changed since (a concurrent :meth:`set_workflow_state` that wrote the
        previous version), carry the change over, unless this version's state was set."""
        if workflow.version <= 1:
            return workflow
        previous = await self.workflow_version(workflow.workflow_id, workflow.version - 1)
        if previous.state is workflow.state:
            return workflow
        await self._update_workflow_state(workflow, previous.state, only_if_unset=True)
        return await self.workflow_version(workflow.workflow_id, workflow.version)

    async def _update_workflow_state(
        self, workflow: StoredWorkflow, state: WorkflowState, *, only_if_unset: bool = False
    ) -> None:
        query: Document = {"_id": f"{workflow.workflow_id}:{workflow.version}"}
        update: Document = {"state": state.value, "updated_at": datetime.now(UTC)}
        if only_if_unset:
            query["state_set"] = {"$exists": False}
        else:
            update["state_set"] = True
        try:
            await self.workflows.update_one(query, {"$set": update})
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB update failed: {exc}") from exc

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

    async def mark_attempt_lost(
        self, run_id: str, node_id: str, number: int, executor_id: str, now: datetime
    ) -> bool:
        """Record that ``executor_id`` died running the attempt; True when it is lost.

        Conditional on the attempt still running under that executor, so a concurrent
        take-over by another executor (or a result that just arrived) wins instead.
        """
        attempt_id = _attempt_id(run_id, node_id, number)
        error = _error_to_doc(LOST_ERROR)
        try:
            result = await self.attempts.update_one(
                {"_id": attempt_id, "status": TaskStatus.RUNNING.value, "executor_id": executor_id},
                {"$set": {"status": TaskStatus.FAILED.value, "error": error, "finished_at": now}},
            )
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB update failed: {exc}") from exc
        if result.matched_count == 1:
            return True
        doc = await self._find_one(self.attempts, {"_id": attempt_id})
        return doc is None or (doc.get("error") or {}).get("code") == LOST_ERROR.code

    async def take_over_attempt(self, attempt: Attempt, previous_executor: str) -> bool:
        """Continue an attempt whose executor died; False if it finished or was lost."""
        try:
            result = await self.attempts.update_one(
                {
                    "_id": _attempt_id(attempt.run_id, attempt.node_id, attempt.number),
                    "status": TaskStatus.RUNNING.value,
                    "executor_id": previous_executor,
                },
                {"$set": {"executor_id": attempt.executor_id, "started_at": attempt.started_at}},
            )
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB update failed: {exc}") from exc
        return result.matched_count == 1

    # --- timers ------------------------------------------------------------------------

    async def schedule_timer(self, timer: StoredTimer, keep_existing: bool = False) -> None:
        """Store (or move) a timer; with ``keep_existing`` an existing one is left alone."""
        doc = _timer_to_doc(timer)
        try:
            if keep_existing:
                await self.timers.update_one(
                    {"_id": doc["_id"]}, {"$setOnInsert": doc}, upsert=True
                )
            else:
                await self.timers.replace_one({"_id": doc["_id"]}, doc, upsert=True)
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB update failed: {exc}") from exc

    async def find_timer(self, timer_id: str) -> StoredTimer | None:
        doc = await self._find_one(self.timers, {"_id": timer_id})
        return None if doc is None else _timer_from_doc(doc)

    async def cancel_timers(self, run_id: str, node_id: str = "") -> None:
        query: Document = {"run_id": run_id}
        if node_id:
            query["node_id"] = node_id
        try:
            await self.timers.delete_many(query)
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB delete failed: {exc}") from exc

    async def due_timers(self, now: datetime, limit: int = 200) -> list[StoredTimer]:
        try:
            cursor = self.timers.find({"due_at": {"$lte": now}}).sort("due_at", 1).limit(limit)
            return [_timer_from_doc(doc) async for doc in cursor]
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB query failed: {exc}") from exc

    async def delete_fired_timer(self, timer: StoredTimer) -> None:
        """Delete a timer that fired, unless it was moved meanwhile (a heartbeat)."""
        try:
            await self.timers.delete_one({"_id": timer.timer_id, "due_at": timer.due_at})
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB delete failed: {exc}") from exc

    # --- workflow concurrency slots ----------------------------------------------------

    async def acquire_slot(self, workflow_id: str, run_id: str, max_runs: int) -> bool:
        """Take one of the workflow's ``max_runs`` slots for the run (idempotent).

        A slot is a document with a fixed ``_id`` per index, so the unique key, not a
        counter, bounds the active runs: two schedulers cannot both take slot 3.
        """
        if await self._find_one(self.slots, {"workflow_id": workflow_id, "run_id": run_id}):
            return True
        for index in range(max_runs):
            slot = {"_id": f"{workflow_id}:{index}", "workflow_id": workflow_id, "run_id": run_id}
            if await self._insert_new(self.slots, slot):
                return True
        return False

    async def release_slot(self, workflow_id: str, run_id: str) -> None:
        try:
            await self.slots.delete_many({"workflow_id": workflow_id, "run_id": run_id})
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB delete failed: {exc}") from exc

    async def queued_run_ids(self, workflow_id: str, limit: int) -> list[str]:
        """The oldest queued runs of a workflow, first come first served."""
        try:
            cursor = (
                self.runs.find(
                    {"workflow_id": workflow_id, "status": RunStatus.QUEUED.value}, {"_id": 1}
                )
                .sort("created_at", 1)
                .limit(limit)
            )
            return [doc["_id"] async for doc in cursor]
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB query failed: {exc}") from exc

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

    # --- dry-run snapshots ---------------------------------------------------------------

    async def insert_snapshot(self, run_id: str, definition: WorkflowDefinition) -> None:
        """Keep the definition a dry run executes (it is in no registry); idempotent."""
        doc: Document = {
            "_id": run_id,
            "definition": definition_to_document(definition),
            "created_at": datetime.now(UTC),
        }
        try:
            await self.snapshots.replace_one({"_id": run_id}, doc, upsert=True)
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB update failed: {exc}") from exc

    async def snapshot(self, run_id: str) -> WorkflowDefinition:
        """The definition of dry run ``run_id``; NotFoundError when there is none."""
        doc = await self._find_one(self.snapshots, {"_id": run_id})
        if doc is None:
            raise NotFoundError(f"no definition snapshot for run {run_id!r}")
        return parse_definition(doc["definition"])


def new_workflow_id() -> str:
    return uuid.uuid4().hex


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


def _timer_to_doc(timer: StoredTimer) -> Document:
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


def _timer_from_doc(doc: Document) -> StoredTimer:
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
        "test": run.test,
        "parent": None
        if run.parent is None
        else {
            "run_id": run.parent.run_id,
            "node_id": run.parent.node_id,
            "attempt": run.parent.attempt,
            "wait": run.parent.wait,
        },
        "tasks": [
            {
                "node_id": t.node_id,
                "status": t.status.value,
                "attempt": t.attempt,
                "started_at": t.started_at,
                "finished_at": t.finished_at,
                "output": _dump(t.output),
                "error": _error_to_doc(t.error),
                "warnings": list(t.warnings),
                "due_at": t.due_at,
                "executor_id": t.executor_id,
                "child_run_id": t.child_run_id,
                "lost_attempts": t.lost_attempts,
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
        test=bool(doc.get("test", False)),
        parent=_parent_from_doc(doc.get("parent")),
        tasks={
            t["node_id"]: TaskState(
                node_id=t["node_id"],
                status=TaskStatus(t["status"]),
                attempt=int(t["attempt"]),
                started_at=t.get("started_at"),
                finished_at=t.get("finished_at"),
                output=_load(t.get("output")),
                error=_error_from_doc(t.get("error")),
                warnings=tuple(t.get("warnings") or ()),
                due_at=t.get("due_at"),
                executor_id=t.get("executor_id", ""),
                child_run_id=t.get("child_run_id", ""),
                lost_attempts=int(t.get("lost_attempts", 0)),
            )
            for t in doc.get("tasks", [])
        },
    )


def _parent_from_doc(doc: Document | None) -> ParentLink | None:
    if not doc:
        return None
    return ParentLink(doc["run_id"], doc["node_id"], int(doc["attempt"]), bool(doc["wait"]))


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
        "warnings": list(attempt.warnings),
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
        warnings=tuple(doc.get("warnings") or ()),
    )
