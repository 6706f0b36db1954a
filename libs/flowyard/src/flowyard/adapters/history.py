"""MongoDB queries behind run history, logs, CSV export, analytics and retention.

The history indexes (:data:`flowyard.history.query.INDEXES`) serve every filter: equality
fields first, then the sort key. MongoDB walks such an index in order and stops after the
page. DocumentDB finds the matching runs through the index but sorts them afterwards, so a
page read over all of a million runs would sort all that match. A page is therefore read
in windows of its sort key (:class:`PageWindows`): the last hour first, then wider, until
the page is full; what gets sorted stays near the page size however many runs are stored,
and the result is the same as one unbounded query.

Logs are stored in chunks: one document per batch of lines of one attempt
(``{run_id}:{node_id}:{attempt}:{chunk}``), written as the attempt runs and at its end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from flowyard.adapters.indexes import ensure_indexes
from flowyard.adapters.mongo import MongoStore
from flowyard.adapters.mongo_documents import Document
from flowyard.domain.run import RunStatus
from flowyard.errors import InfrastructureError
from flowyard.history.logs import LogRecord
from flowyard.history.query import (
    Cursor,
    RunQuery,
    SortKey,
    mongo_filter,
    mongo_sort,
    name_pattern,
    range_start,
)

# What a history row needs; the tasks (and user data) stay in the database.
SUMMARY_PROJECTION: Document = {"tasks": 0, "trigger.data": 0, "parent": 0}
# What analytics needs of each run.
ANALYTICS_PROJECTION: Document = {
    "trigger.data": 0,
    "tasks.output": 0,
    "tasks.error": 0,
    "tasks.warnings": 0,
    "parent": 0,
}
FINISHED = [s.value for s in RunStatus if s.finished]
ACTIVE = [s.value for s in RunStatus if not s.finished]


@dataclass(frozen=True)
class LogChunk:
    """Lines ``first_seq``.. of one attempt, stored as one document."""

    run_id: str
    workflow_id: str
    node_id: str
    attempt: int
    chunk: int
    lines: Sequence[LogRecord]

    @property
    def doc_id(self) -> str:
        return f"{self.run_id}:{self.node_id}:{self.attempt}:{self.chunk:06d}"


@dataclass(frozen=True)
class PurgedRuns:
    runs: int = 0
    attempts: int = 0
    log_chunks: int = 0


class HistoryStore:
    """Read models over the runs, attempts and logs collections of a :class:`MongoStore`."""

    def __init__(self, store: MongoStore) -> None:
        self._store = store
        self.runs: AsyncCollection[Document] = store.runs
        self.attempts: AsyncCollection[Document] = store.attempts
        self.workflows: AsyncCollection[Document] = store.workflows
        self.logs: AsyncCollection[Document] = store.runs.database["logs"]
        self.snapshots: AsyncCollection[Document] = store.snapshots
        self.timers: AsyncCollection[Document] = store.timers
        self._oldest: tuple[datetime, datetime | None] | None = None

    async def ensure_indexes(self) -> None:
        await ensure_indexes(self.runs.database, ("runs", "logs"))

    # --- history --------------------------------------------------------------------------

    async def list_runs(
        self, query: RunQuery, after: Cursor | None = None
    ) -> tuple[list[Document], Cursor | None]:
        """One page of run documents (without tasks) and the cursor of the next page."""
        names = await self._names(query)
        oldest = await self._oldest_run_time() if query.ascending else None
        windows = PageWindows(query, after, oldest)
        window = windows.first()
        try:
            while True:
                cursor = (
                    self.runs.find(mongo_filter(query, after, names, window), SUMMARY_PROJECTION)
                    .sort(mongo_sort(query))
                    .limit(query.limit + 1)
                )
                docs = [doc async for doc in cursor]
                if len(docs) > query.limit or window is None:
                    break
                window = windows.widen(len(docs))
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB query failed: {exc}") from exc
        if len(docs) <= query.limit:
            return docs, None
        page = docs[: query.limit]
        return page, Cursor.after_doc(query, page[-1])

    async def iter_runs(
        self, query: RunQuery, projection: Mapping[str, Any] | None = None, batch: int = 1000
    ) -> AsyncIterator[Document]:
        """Every matching run in order, ``batch`` documents per round trip: one cursor,
        never all runs in memory."""
        try:
            cursor = self.runs.find(
                mongo_filter(query, names=await self._names(query)),
                dict(projection) if projection is not None else SUMMARY_PROJECTION,
                batch_size=batch,
            ).sort(mongo_sort(query))
            async for doc in cursor:
                yield doc
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB query failed: {exc}") from exc

    async def explain_list(self, query: RunQuery) -> Document:
        """The server's plan for the first query :meth:`list_runs` sends (tests show which
        index it uses)."""
        window = PageWindows(query, None).first()
        command: Document = {
            "find": self.runs.name,
            "filter": mongo_filter(query, names=await self._names(query), window=window),
            "sort": dict(mongo_sort(query)),
            "projection": SUMMARY_PROJECTION,
            "limit": query.limit + 1,
        }
        try:
            result: Document = await self.runs.database.command(
                {"explain": command, "verbosity": "queryPlanner"}
            )
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB explain failed: {exc}") from exc
        return result

    async def _oldest_run_time(self) -> datetime | None:
        """About when the oldest stored run started (within a day, never after it), found
        by halving a range with index probes; cached for a few minutes. Oldest-first pages
        walk forward from here (DocumentDB cannot hand out the minimum without a scan)."""
        now = datetime.now(UTC)
        if self._oldest is not None and now - self._oldest[0] < OLDEST_RUN_CACHE:
            return self._oldest[1]
        low, high = OLDEST_RUN_SEARCH_FROM, now + timedelta(days=1)
        found: datetime | None = None
        if await self._exists({"created_at": {"$lt": high}}) and not await self._exists(
            {"created_at": {"$lt": low}}
        ):
            while high - low > timedelta(days=1):
                middle = low + (high - low) / 2
                if await self._exists({"created_at": {"$lt": middle}}):
                    high = middle
                else:
                    low = middle
            found = low
        self._oldest = (now, found)
        return found

    async def _exists(self, query: Document) -> bool:
        try:
            return await self.runs.find_one(query, {"_id": 1}) is not None
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB query failed: {exc}") from exc

    async def _names(self, query: RunQuery) -> list[str]:
        """Workflow names containing the query's search text: from the registered workflows
        and the dry runs' definitions (both small), never from the runs themselves."""
        if not query.search.strip():
            return []
        pattern = name_pattern(query.search)
        try:
            names = set(await self.workflows.distinct("name", {"name": pattern}))
            names |= set(await self.snapshots.distinct("name", {"name": pattern}))
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB query failed: {exc}") from exc
        return sorted(str(n) for n in names)

    async def active_runs(self) -> AsyncIterator[Document]:
        """Runs that are not finished, with their tasks (queue depth)."""
        try:
            async for doc in self.runs.find({"status": {"$in": ACTIVE}}, ANALYTICS_PROJECTION):
                yield doc
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB query failed: {exc}") from exc

    # --- logs -----------------------------------------------------------------------------

    async def append_logs(self, chunk: LogChunk) -> None:
        """Store a chunk of lines; storing the same chunk again changes nothing."""
        if not chunk.lines:
            return
        doc: Document = {
            "_id": chunk.doc_id,
            "run_id": chunk.run_id,
            "workflow_id": chunk.workflow_id,
            "node_id": chunk.node_id,
            "attempt": chunk.attempt,
            "chunk": chunk.chunk,
            "first_seq": chunk.lines[0].seq,
            "count": len(chunk.lines),
            "created_at": datetime.now(UTC),
            "lines": [
                {"t": line.time, "s": line.stream, "l": line.level, "x": line.text}
                for line in chunk.lines
            ],
        }
        try:
            await self.logs.replace_one({"_id": doc["_id"]}, doc, upsert=True)
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB insert failed: {exc}") from exc

    async def log_chunks(
        self, run_id: str, node_id: str = "", attempt: int = 0, skip_ids: Iterable[str] = ()
    ) -> list[tuple[str, list[LogRecord]]]:
        """Stored chunks of a run (or one task, or one attempt) as (chunk id, lines), in
        order of task, attempt and position; chunks in ``skip_ids`` are left out."""
        query: Document = {"run_id": run_id}
        if node_id:
            query["node_id"] = node_id
        if attempt:
            query["attempt"] = attempt
        skip = list(skip_ids)
        if skip:
            query["_id"] = {"$nin": skip}
        found: list[tuple[str, list[LogRecord]]] = []
        try:
            async for doc in self.logs.find(query):
                found.append((doc["_id"], _records(doc)))
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB query failed: {exc}") from exc
        found.sort(key=lambda item: item[0])
        return found

    # --- retention and counts -------------------------------------------------------------

    async def run_counts(self) -> dict[str, int]:
        """Stored runs per workflow name."""
        return await self._count_by(self.runs, "workflow_name")

    async def log_line_counts(self) -> dict[str, int]:
        """Stored log chunks' lines per workflow id."""
        pipeline: list[Document] = [
            {"$group": {"_id": "$workflow_id", "n": {"$sum": "$count"}}},
        ]
        try:
            cursor = await self.logs.aggregate(pipeline)
            return {str(doc["_id"] or ""): int(doc["n"]) async for doc in cursor}
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB aggregation failed: {exc}") from exc

    async def oldest_run(self, workflow_name: str) -> datetime | None:
        try:
            doc = await self.runs.find_one(
                {"workflow_name": workflow_name},
                {"created_at": 1},
                sort=[("created_at", ASCENDING), ("_id", ASCENDING)],
            )
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB query failed: {exc}") from exc
        return None if doc is None else doc["created_at"]

    async def _count_by(self, collection: AsyncCollection[Document], field: str) -> dict[str, int]:
        pipeline: list[Document] = [{"$group": {"_id": f"${field}", "n": {"$sum": 1}}}]
        try:
            cursor = await collection.aggregate(pipeline)
            return {str(doc["_id"] or ""): int(doc["n"]) async for doc in cursor}
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB aggregation failed: {exc}") from exc

    async def expired_run_ids(
        self, workflow_name: str, retention_days: int, now: datetime, limit: int
    ) -> list[str]:
        """Finished runs of the workflow that started more than ``retention_days`` ago."""
        cutoff = now - timedelta(days=retention_days)
        query: Document = {
            "workflow_name": workflow_name,
            "created_at": {"$lt": cutoff},
            "status": {"$in": FINISHED},
        }
        try:
            cursor = (
                self.runs.find(query, {"_id": 1})
                .sort([("created_at", ASCENDING), ("_id", ASCENDING)])
                .limit(limit)
            )
            return [doc["_id"] async for doc in cursor]
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB query failed: {exc}") from exc

    async def count_expired(self, workflow_name: str, retention_days: int, now: datetime) -> int:
        cutoff = now - timedelta(days=retention_days)
        try:
            return await self.runs.count_documents(
                {
                    "workflow_name": workflow_name,
                    "created_at": {"$lt": cutoff},
                    "status": {"$in": FINISHED},
                }
            )
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB query failed: {exc}") from exc

    async def delete_runs(self, run_ids: Sequence[str]) -> PurgedRuns:
        """Delete runs with everything stored under them. Children go first, so an
        interrupted purge leaves runs (found again next time), never orphans."""
        if not run_ids:
            return PurgedRuns()
        ids = {"$in": list(run_ids)}
        try:
            attempts = await self.attempts.delete_many({"run_id": ids})
            logs = await self.logs.delete_many({"run_id": ids})
            await self.timers.delete_many({"run_id": ids})
            await self.snapshots.delete_many({"_id": ids})
            runs = await self.runs.delete_many({"_id": ids})
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB delete failed: {exc}") from exc
        return PurgedRuns(runs.deleted_count, attempts.deleted_count, logs.deleted_count)


# Where a page starts looking, and how fast it widens: a window of the start time (newest
# first: back from the cursor, ``until`` or now), or a lower bound of the duration (longest
# first). Each try that comes back short widens by what it found: by about twice the
# factor that would have filled the page, at least x2 and at most x36 (x36 when it found
# nothing), so a page takes two or three tries and sorts at most a few pages' worth.
FIRST_WINDOW = timedelta(hours=1)
OLDEST_RUN_SEARCH_FROM = datetime(2000, 1, 1, tzinfo=UTC)
OLDEST_RUN_CACHE = timedelta(minutes=5)
LONGEST_WINDOW = timedelta(days=365 * 20)
FIRST_DURATION_FLOOR_MS = 3_600_000
LEAST_DURATION_FLOOR_MS = 500
MAX_WIDENING = 36.0


def _widening(found: int, wanted: int) -> float:
    if found <= 0:
        return MAX_WIDENING
    return min(max(2.0 * wanted / found, 2.0), MAX_WIDENING)


class PageWindows:
    """The bounds of the sort key (``{"$gte": ...}``, or ``{"$lt": ...}`` oldest first)
    :meth:`HistoryStore.list_runs` tries in turn, ending with ``None`` (no bound).
    Oldest first walks forward from the cursor, the query's lower bound or ``oldest`` (when
    the store knows when its oldest run started); shortest first reads unbounded (rare)."""

    def __init__(
        self, query: RunQuery, after: Cursor | None, oldest: datetime | None = None
    ) -> None:
        self._query = query
        self._wanted = query.limit + 1
        self._width = FIRST_WINDOW
        lower = [t for t in (range_start(query.date_range, query.now), query.since) if t]
        self._floor_time = max(lower) if lower else None
        cursor_time = None if after is None else datetime.fromtimestamp(after.key / 1000, UTC)
        if query.ascending:
            self._anchor = cursor_time or self._floor_time or oldest
            self._ceiling_time = query.until or query.now
        else:
            self._anchor = cursor_time or query.until or query.now
        cap = after.key if after is not None else None
        self._least = FIRST_DURATION_FLOOR_MS if cap is None else cap // 4

    def first(self) -> Document | None:
        if self._query.sort is SortKey.STARTED:
            return self._time_bound()
        if self._query.ascending:
            return None
        return self._duration_bound()

    def widen(self, found: int) -> Document | None:
        """The next bound after one that found ``found`` runs (fewer than wanted)."""
        factor = _widening(found, self._wanted)
        if self._query.sort is SortKey.STARTED:
            self._width = self._width * factor
            return self._time_bound()
        if self._least <= 0:
            return None
        self._least = int(self._least / factor)
        return self._duration_bound()

    def _time_bound(self) -> Document | None:
        if self._anchor is None or self._width > LONGEST_WINDOW:
            return None
        if self._query.ascending:
            end = self._anchor + self._width
            if end >= self._ceiling_time:
                return None  # the query's own upper bound (or now) is the tighter one
            return {"$lt": end}
        start = self._anchor - self._width
        if self._floor_time is not None and start <= self._floor_time:
            return None  # the query's own lower bound is the tighter one
        return {"$gte": start}

    def _duration_bound(self) -> Document | None:
        if self._least < LEAST_DURATION_FLOOR_MS:
            self._least = 0
        return {"$gte": self._least}


def _records(doc: Mapping[str, Any]) -> list[LogRecord]:
    first = int(doc.get("first_seq", 0))
    return [
        LogRecord(
            run_id=doc["run_id"],
            node_id=doc["node_id"],
            attempt=int(doc["attempt"]),
            seq=first + offset,
            time=line["t"],
            stream=line.get("s", "stdout"),
            level=line.get("l", ""),
            text=line.get("x", ""),
        )
        for offset, line in enumerate(doc.get("lines") or ())
    ]
