"""MongoDB adapter (MongoDB 7 semantics, as MongoDB and DocumentDB implement them).

Only single-document atomic operations are used: runs are replaced conditionally on
their ``revision``, idempotency keys and workflow versions rely on unique ``_id``s.
Driver errors leave this module as :class:`InfrastructureError`.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from pymongo import DESCENDING, AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from flowyard.adapters.indexes import ensure_indexes
from flowyard.adapters.mongo_documents import (
    LOST_ERROR,
    Document,
    StoredTimer,
    attempt_from_doc,
    attempt_id,
    attempt_to_doc,
    definition_from_doc,
    definition_to_doc,
    error_to_doc,
    run_from_doc,
    run_to_doc,
    timer_from_doc,
    timer_to_doc,
    workflow_from_doc,
    workflow_to_doc,
)
from flowyard.adapters.store_connection import store_address, wait_for_store
from flowyard.domain.definition import (
    WorkflowDefinition,
)
from flowyard.domain.run import (
    Attempt,
    RunState,
    RunStatus,
    TaskStatus,
)
from flowyard.domain.workflow import StoredWorkflow, WorkflowState
from flowyard.errors import (
    ConflictError,
    InfrastructureError,
    NotFoundError,
    RunNotFoundError,
    WorkflowNotFoundError,
)


class MongoStore:
    """Workflows, runs and attempts in one database."""

    def __init__(self, url: str, database: str, *, wait_seconds: float = math.inf) -> None:
        self.address = store_address(url)
        self._wait_seconds = wait_seconds
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

    @property
    def database(self) -> AsyncDatabase[Document]:
        """The database, for stores of other collections sharing this client."""
        return self._db

    async def __aenter__(self) -> MongoStore:
        """Wait for the store (up to ``wait_seconds``, saying where it waits), then make
        sure the indexes exist. A refused login raises StoreLoginError at once."""
        try:
            await wait_for_store(self._client, self.address, wait_seconds=self._wait_seconds)
            await self.ensure_indexes()
        except BaseException:
            await self._client.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._client.close()

    async def ensure_indexes(self) -> None:
        await ensure_indexes(
            self._db, ("workflows", "runs", "attempts", "timers", "run_slots", "logs")
        )

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
        return workflow_from_doc(doc)

    async def workflow_version(self, workflow_id: str, version: int) -> StoredWorkflow:
        doc = await self._find_one(self.workflows, {"workflow_id": workflow_id, "version": version})
        if doc is None:
            raise WorkflowNotFoundError(workflow_id, version)
        return workflow_from_doc(doc)

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
                    latest[doc["name"]] = workflow_from_doc(doc)
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB query failed: {exc}") from exc
        return list(latest.values())

    async def insert_workflow(self, workflow: StoredWorkflow) -> bool:
        """Store a new version; False when that version number was taken concurrently."""
        return await self._insert_new(self.workflows, workflow_to_doc(workflow))

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
        doc = await self._find_one(self.attempts, {"_id": attempt_id(run_id, node_id, number)})
        return None if doc is None else attempt_from_doc(doc)

    async def claim_attempt(self, attempt: Attempt) -> Attempt | None:
        """Record a starting attempt; if it exists already (a redelivery), return that one.

        One insert in the common case: cheaper than a read then a write, and atomic.
        """
        if await self._insert_new(self.attempts, attempt_to_doc(attempt)):
            return None
        return await self.find_attempt(attempt.run_id, attempt.node_id, attempt.number)

    async def save_attempt(self, attempt: Attempt) -> None:
        doc = attempt_to_doc(attempt)
        try:
            await self.attempts.replace_one({"_id": doc["_id"]}, doc, upsert=True)
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB update failed: {exc}") from exc

    async def attempts_of(self, run_id: str) -> dict[str, list[Attempt]]:
        found: dict[str, list[Attempt]] = {}
        try:
            async for doc in self.attempts.find({"run_id": run_id}):
                attempt = attempt_from_doc(doc)
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
        doc_id = attempt_id(run_id, node_id, number)
        error = error_to_doc(LOST_ERROR)
        try:
            result = await self.attempts.update_one(
                {"_id": doc_id, "status": TaskStatus.RUNNING.value, "executor_id": executor_id},
                {"$set": {"status": TaskStatus.FAILED.value, "error": error, "finished_at": now}},
            )
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB update failed: {exc}") from exc
        if result.matched_count == 1:
            return True
        doc = await self._find_one(self.attempts, {"_id": doc_id})
        return doc is None or (doc.get("error") or {}).get("code") == LOST_ERROR.code

    async def take_over_attempt(self, attempt: Attempt, previous_executor: str) -> bool:
        """Continue an attempt whose executor died; False if it finished or was lost."""
        try:
            result = await self.attempts.update_one(
                {
                    "_id": attempt_id(attempt.run_id, attempt.node_id, attempt.number),
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
        doc = timer_to_doc(timer)
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
        return None if doc is None else timer_from_doc(doc)

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
            return [timer_from_doc(doc) async for doc in cursor]
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
            "name": definition.name,  # history's free-text search finds runs by name
            "definition": definition_to_doc(definition),
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
        return definition_from_doc(doc["definition"])


def new_workflow_id() -> str:
    return uuid.uuid4().hex
