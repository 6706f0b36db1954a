"""MongoDB state of triggers, beside :class:`MongoStore`'s collections:

- ``schedule_cursors``: per workflow, the last schedule tick handled (fired, skipped, or
  passed while paused), so a restarted or second scheduler neither repeats nor loses one;
- ``webhook_secrets``: per workflow, the HMAC secret webhook callers sign bodies with.

Single-document writes only: a cursor moves with a compare-and-set on its old value, a
secret is created with an insert that loses to a concurrent one.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.errors import DuplicateKeyError, PyMongoError

from flowyard.adapters.indexes import ensure_indexes
from flowyard.adapters.mongo import MongoStore
from flowyard.adapters.mongo_documents import Document
from flowyard.domain.run import RunStatus
from flowyard.errors import InfrastructureError

SECRET_BYTES = 32


@dataclass(frozen=True)
class LastRun:
    run_id: str
    status: RunStatus
    created_at: datetime


@dataclass(frozen=True)
class WebhookSecret:
    secret: str
    created_at: datetime


def new_secret() -> str:
    return f"whsec_{secrets.token_hex(SECRET_BYTES)}"


class TriggerStore:
    def __init__(self, store: MongoStore) -> None:
        database = store.workflows.database
        self._workflows = store.workflows
        self._runs = store.runs
        self.cursors = database["schedule_cursors"]
        self.secrets = database["webhook_secrets"]

    async def ensure_indexes(self) -> None:
        await ensure_indexes(self._workflows.database, ("workflows",))

    async def registry_token(self) -> tuple[int, datetime | None]:
        """Changes whenever a workflow version is stored or a state is set: the number
        of stored versions and the newest ``updated_at``."""
        try:
            count = await self._workflows.count_documents({})
            newest = await self._workflows.find_one(
                {}, {"updated_at": 1}, sort=[("updated_at", DESCENDING)]
            )
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB query failed: {exc}") from exc
        return count, None if newest is None else newest.get("updated_at")

    # --- schedule cursors --------------------------------------------------------------

    async def cursors_of(self, workflow_ids: Iterable[str]) -> dict[str, datetime]:
        found: dict[str, datetime] = {}
        try:
            async for doc in self.cursors.find({"_id": {"$in": list(workflow_ids)}}):
                found[doc["_id"]] = _utc(doc["last_tick"])
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB query failed: {exc}") from exc
        return found

    async def start_cursor(self, workflow_id: str, at: datetime) -> datetime:
        """The workflow's cursor, created at ``at`` when it has none yet."""
        at = _ms(at)
        doc: Document = {"_id": workflow_id, "last_tick": at, "updated_at": datetime.now(UTC)}
        try:
            await self.cursors.insert_one(doc)
            return at
        except DuplicateKeyError:
            pass
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB insert failed: {exc}") from exc
        existing = await self._find(self.cursors, workflow_id)
        return at if existing is None else _utc(existing["last_tick"])

    async def move_cursor(self, workflow_id: str, old: datetime, new: datetime) -> bool:
        """Move the cursor from ``old`` to ``new``; False when another instance moved it."""
        try:
            result = await self.cursors.update_one(
                {"_id": workflow_id, "last_tick": _ms(old)},
                {"$set": {"last_tick": _ms(new), "updated_at": datetime.now(UTC)}},
            )
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB update failed: {exc}") from exc
        return result.matched_count == 1

    async def set_cursor(self, workflow_id: str, at: datetime) -> None:
        """Put the cursor at ``at`` (operators and tests: replay or skip a period)."""
        try:
            await self.cursors.replace_one(
                {"_id": workflow_id},
                {"_id": workflow_id, "last_tick": _ms(at), "updated_at": datetime.now(UTC)},
                upsert=True,
            )
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB update failed: {exc}") from exc

    async def drop_cursors_except(self, workflow_ids: Iterable[str]) -> None:
        """Forget the cursors of workflows that no longer have a schedule: a schedule
        added again later starts from then, not from where the old one stopped."""
        try:
            await self.cursors.delete_many({"_id": {"$nin": list(workflow_ids)}})
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB delete failed: {exc}") from exc

    # --- webhook secrets ---------------------------------------------------------------

    async def webhook_secret(self, workflow_id: str) -> WebhookSecret | None:
        doc = await self._find(self.secrets, workflow_id)
        return None if doc is None else WebhookSecret(doc["secret"], _utc(doc["created_at"]))

    async def ensure_webhook_secret(self, workflow_id: str) -> WebhookSecret:
        """The workflow's secret, generated on first use (a concurrent call's wins)."""
        existing = await self.webhook_secret(workflow_id)
        if existing is not None:
            return existing
        created = WebhookSecret(new_secret(), datetime.now(UTC))
        doc: Document = {
            "_id": workflow_id,
            "secret": created.secret,
            "created_at": created.created_at,
        }
        try:
            await self.secrets.insert_one(doc)
            return created
        except DuplicateKeyError:
            pass
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB insert failed: {exc}") from exc
        found = await self.webhook_secret(workflow_id)
        return found if found is not None else created

    async def rotate_webhook_secret(self, workflow_id: str) -> WebhookSecret:
        """A new secret; the old one stops working at once."""
        rotated = WebhookSecret(new_secret(), datetime.now(UTC))
        doc: Document = {
            "_id": workflow_id,
            "secret": rotated.secret,
            "created_at": rotated.created_at,
        }
        try:
            await self.secrets.replace_one({"_id": workflow_id}, doc, upsert=True)
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB update failed: {exc}") from exc
        return rotated

    # --- runs --------------------------------------------------------------------------

    async def last_run(self, workflow_id: str) -> LastRun | None:
        try:
            doc = await self._runs.find_one(
                {"workflow_id": workflow_id},
                {"status": 1, "created_at": 1},
                sort=[("workflow_id", ASCENDING), ("created_at", DESCENDING)],
            )
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB query failed: {exc}") from exc
        if doc is None:
            return None
        return LastRun(doc["_id"], RunStatus(doc["status"]), _utc(doc["created_at"]))

    async def _find(self, collection: Any, doc_id: str) -> Document | None:
        try:
            found: Document | None = await collection.find_one({"_id": doc_id})
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB query failed: {exc}") from exc
        return found


def _ms(moment: datetime) -> datetime:
    """MongoDB keeps milliseconds: what is compared later must be stored as it reads back."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
