"""Every index Flowyard keeps, per collection, in one table; and the one way they are made.

Each store asks for the collections it uses; all indexes of a collection are made in one
``createIndexes`` command while the collection is new. On DocumentDB that matters: indexes
given to a collection that already exists are built by a background job that starts every
two seconds, so index by index a fresh database took half a minute to set up. Indexes that
exist (by name) are left alone, so a restart costs one ``listIndexes`` per collection.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from flowyard.adapters.mongo_documents import Document
from flowyard.errors import InfrastructureError
from flowyard.history.query import INDEXES as HISTORY_INDEXES


def _index(name: str, *keys: tuple[str, int], unique: bool = False) -> IndexModel:
    return IndexModel(list(keys), name=name, unique=unique)


INDEXES: Mapping[str, Sequence[IndexModel]] = {
    "workflows": (
        _index("name_version", ("name", ASCENDING), ("version", DESCENDING), unique=True),
        _index("workflow_id", ("workflow_id", ASCENDING)),
        _index("updated", ("updated_at", DESCENDING)),
    ),
    "runs": (
        _index("workflow_created", ("workflow_id", ASCENDING), ("created_at", DESCENDING)),
        _index(
            "workflow_status_created",
            ("workflow_id", ASCENDING),
            ("status", ASCENDING),
            ("created_at", ASCENDING),
        ),
        *(IndexModel(list(keys), name=name) for name, keys in HISTORY_INDEXES.items()),
    ),
    "attempts": (_index("run", ("run_id", ASCENDING)),),
    "timers": (
        _index("due", ("due_at", ASCENDING)),
        _index("run", ("run_id", ASCENDING)),
    ),
    "run_slots": (_index("workflow", ("workflow_id", ASCENDING)),),
    "logs": (
        _index(
            "run_node_attempt",
            ("run_id", ASCENDING),
            ("node_id", ASCENDING),
            ("attempt", ASCENDING),
        ),
        _index("workflow", ("workflow_id", ASCENDING)),
    ),
    "tokens": (
        _index("token_id", ("token_id", ASCENDING), unique=True),
        _index("name", ("name", ASCENDING)),
    ),
    "credentials": (_index("updated", ("updated_at", ASCENDING)),),
    "alert_policies": (
        _index("type", ("workflow_type", ASCENDING)),
        _index("workflow", ("workflow", ASCENDING)),
    ),
    "alert_subscriptions": (_index("run", ("run_id", ASCENDING)),),
    "alert_due": (_index("due", ("due_at", ASCENDING)),),
    "alert_activity": (
        _index("at", ("at", DESCENDING), ("_id", DESCENDING)),
        _index("run_at", ("run_id", ASCENDING), ("at", DESCENDING)),
    ),
    "alert_runtime_watches": (
        _index("due", ("due_at", ASCENDING)),
        _index("run", ("run_id", ASCENDING)),
    ),
}


async def ensure_indexes(database: AsyncDatabase[Document], collections: Iterable[str]) -> None:
    """Make the indexes of ``collections`` that are missing, one command per collection."""
    try:
        for name in collections:
            collection = database[name]
            existing = {index["name"] async for index in await collection.list_indexes()}
            missing = [m for m in INDEXES[name] if m.document["name"] not in existing]
            if missing:
                await collection.create_indexes(missing)
    except PyMongoError as exc:
        raise InfrastructureError(f"MongoDB index set-up failed: {exc}") from exc
