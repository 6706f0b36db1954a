"""HistoryService: run history, CSV export, graphs, logs, analytics and retention.

Requests become :class:`flowyard.history.query.RunQuery` s here; the queries themselves
are in :mod:`flowyard.adapters.history`, the pure computations in :mod:`flowyard.history`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Literal

import grpc
from flowyard import codec
from flowyard.adapters.history import HistoryStore
from flowyard.adapters.mongo import MongoStore
from flowyard.adapters.mongo_documents import Document, error_from_doc
from flowyard.domain.definition import WorkflowDefinition
from flowyard.domain.run import RunState, RunStatus
from flowyard.errors import WorkflowNotFoundError
from flowyard.history import analytics, csv_export, graph
from flowyard.history.logs import LogFilter, LogRecord
from flowyard.history.query import Cursor, DateRange, QueryError, RunQuery, SortKey
from flowyard.v1 import history_pb2, history_pb2_grpc
from google.protobuf import duration_pb2

from flowyard_api_gateway.errors import (
    InvalidRequestError,
    translate_errors,
    translate_stream_errors,
)
from flowyard_api_gateway.run_events import RunEventsHub

Context = grpc.aio.ServicerContext[Any, Any]

# A tail re-reads its run at least this often, so a missed wake-up is never fatal.
TAIL_REFRESH_SECONDS = 2.0
EXPORT_BATCH = 2000
MAX_PURGE_BATCH = 5000

_RANGES = {
    history_pb2.DATE_RANGE_UNSPECIFIED: DateRange.ANY,
    history_pb2.DATE_RANGE_TODAY: DateRange.TODAY,
    history_pb2.DATE_RANGE_LAST_24H: DateRange.LAST_24H,
    history_pb2.DATE_RANGE_LAST_7D: DateRange.LAST_7D,
    history_pb2.DATE_RANGE_LAST_30D: DateRange.LAST_30D,
}
_SORTS = {
    history_pb2.RUN_SORT_UNSPECIFIED: SortKey.STARTED,
    history_pb2.RUN_SORT_STARTED: SortKey.STARTED,
    history_pb2.RUN_SORT_DURATION: SortKey.DURATION,
}
_LOG_FILTERS = {
    history_pb2.LOG_FILTER_UNSPECIFIED: LogFilter.ALL,
    history_pb2.LOG_FILTER_ALL: LogFilter.ALL,
    history_pb2.LOG_FILTER_OUTPUT: LogFilter.OUTPUT,
    history_pb2.LOG_FILTER_ERRORS: LogFilter.ERRORS,
}


def _now() -> datetime:
    return datetime.now(UTC)


def _filter_time(
    message: history_pb2.RunFilter, name: Literal["since", "until"]
) -> datetime | None:
    """The filter's ``since``/``until``; a timestamp protobuf cannot represent (seconds
    outside years 1-9999, nanos outside 0-999999999) is the caller's error."""
    if not message.HasField(name):
        return None
    try:
        return codec.time_from_proto(getattr(message, name))
    except ValueError as exc:
        raise InvalidRequestError(f"filter.{name}", f"not a valid time: {exc}") from None


def run_query(
    message: history_pb2.RunFilter,
    sort: history_pb2.RunSort.ValueType = history_pb2.RUN_SORT_UNSPECIFIED,
    ascending: bool = False,
    limit: int = 0,
    now: datetime | None = None,
) -> RunQuery:
    """The request's filter as a checked query; InvalidRequestError names a bad field."""
    statuses: list[RunStatus] = []
    for value in message.statuses:
        status = codec.RUN_STATUS_FROM_PROTO.get(value)
        if status is None:
            raise InvalidRequestError("filter.statuses", f"unknown run status {value}")
        statuses.append(status)
    if message.range not in _RANGES:
        raise InvalidRequestError("filter.range", f"unknown date range {message.range}")
    if sort not in _SORTS:
        raise InvalidRequestError("sort", f"unknown sort order {sort}")
    query = RunQuery(
        statuses=tuple(statuses),
        workflow_type=message.workflow_type,
        workflow=message.workflow,
        version=message.version,
        trigger_kind=message.trigger_kind,
        started_by=message.started_by,
        date_range=_RANGES[message.range],
        since=_filter_time(message, "since"),
        until=_filter_time(message, "until"),
        search=message.search,
        sort=_SORTS[sort],
        ascending=ascending,
        limit=limit,
        now=now or _now(),
    )
    try:
        return query.check()
    except QueryError as exc:
        raise InvalidRequestError(exc.field, exc.message) from None


def _millis(value: int) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromMilliseconds(value)
    return duration


def summary_from_doc(doc: Document) -> history_pb2.RunSummary:
    trigger = doc.get("trigger") or {}
    duration_ms = int(doc.get("duration_ms", -1))
    return history_pb2.RunSummary(
        run_id=doc["_id"],
        workflow_id=doc.get("workflow_id", ""),
        workflow_name=doc.get("workflow_name", ""),
        workflow_type=doc.get("workflow_type", ""),
        workflow_version=int(doc.get("workflow_version", 0)),
        status=codec.RUN_STATUS_TO_PROTO[RunStatus(doc["status"])],
        trigger_kind=trigger.get("kind", ""),
        started_by=trigger.get("started_by", ""),
        created_at=codec.time_to_proto(doc.get("created_at")),
        started_at=codec.time_to_proto(doc.get("started_at")),
        finished_at=codec.time_to_proto(doc.get("finished_at")),
        duration=_millis(duration_ms) if duration_ms >= 0 else None,
        error=codec.error_to_proto(error_from_doc(doc.get("error"))),
        failed_node_id=doc.get("failed_node_id", ""),
        task_count=int(doc.get("task_count", 0)),
        warning_count=int(doc.get("warning_count", 0)),
        test=bool(doc.get("test", False)),
    )


def _log_line(record: LogRecord) -> history_pb2.LogLine:
    return history_pb2.LogLine(
        run_id=record.run_id,
        node_id=record.node_id,
        attempt=record.attempt,
        seq=record.seq,
        time=codec.time_to_proto(record.time),
        stream=record.stream,
        level=record.level,
        text=record.text,
    )


class HistoryServicer(history_pb2_grpc.HistoryServiceServicer):
    def __init__(
        self,
        store: MongoStore,
        history: HistoryStore,
        hub: RunEventsHub,
        consumer_lag: Callable[[], int] | None = None,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._store = store
        self._history = history
        self._hub = hub
        self._consumer_lag = consumer_lag
        self._clock = clock

    # --- history --------------------------------------------------------------------------

    @translate_errors
    async def ListRuns(
        self, request: history_pb2.ListRunsRequest, context: Context
    ) -> history_pb2.ListRunsResponse:
        query = run_query(
            request.filter, request.sort, request.ascending, request.limit, self._clock()
        )
        after = None
        if request.cursor:
            try:
                after = Cursor.decode(request.cursor, query)
            except QueryError as exc:
                raise InvalidRequestError(exc.field, exc.message) from None
        docs, next_cursor = await self._history.list_runs(query, after)
        return history_pb2.ListRunsResponse(
            runs=[summary_from_doc(doc) for doc in docs],
            next_cursor=next_cursor.encode() if next_cursor else "",
        )

    @translate_stream_errors
    async def ExportRuns(
        self, request: history_pb2.ExportRunsRequest, context: Context
    ) -> AsyncIterator[history_pb2.CsvChunk]:
        query = run_query(request.filter, request.sort, request.ascending, 0, self._clock())
        writer = csv_export.CsvWriter()
        yield history_pb2.CsvChunk(data=writer.header(), rows=0)
        rows: list[Document] = []
        async for doc in self._history.iter_runs(query, batch=EXPORT_BATCH):
            rows.append(doc)
            if len(rows) >= EXPORT_BATCH:
                yield history_pb2.CsvChunk(data=writer.rows(rows), rows=len(rows))
                rows = []
        if rows:
            yield history_pb2.CsvChunk(data=writer.rows(rows), rows=len(rows))

    # --- graph ----------------------------------------------------------------------------

    @translate_errors
    async def GetRunGraph(
        self, request: history_pb2.GetRunGraphRequest, context: Context
    ) -> history_pb2.RunGraph:
        if not request.run_id:
            raise InvalidRequestError("run_id", "is required")
        run, definition = await self._run_and_definition(request.run_id)
        if request.format == history_pb2.GRAPH_FORMAT_MERMAID:
            return history_pb2.RunGraph(
                format=history_pb2.GRAPH_FORMAT_MERMAID, text=graph.to_mermaid(run, definition)
            )
        if request.format not in (
            history_pb2.GRAPH_FORMAT_UNSPECIFIED,
            history_pb2.GRAPH_FORMAT_DOT,
        ):
            raise InvalidRequestError("format", "must be GRAPH_FORMAT_DOT or GRAPH_FORMAT_MERMAID")
        return history_pb2.RunGraph(
            format=history_pb2.GRAPH_FORMAT_DOT, text=graph.to_dot(run, definition)
        )

    async def _run_and_definition(self, run_id: str) -> tuple[RunState, WorkflowDefinition]:
        run = await self._store.get_run(run_id)
        if run.test:
            return run, await self._store.snapshot(run.run_id)
        workflow = await self._store.workflow_version(run.workflow_id, run.workflow_version)
        return run, workflow.definition

    # --- logs -----------------------------------------------------------------------------

    @translate_errors
    async def GetLogs(
        self, request: history_pb2.GetLogsRequest, context: Context
    ) -> history_pb2.GetLogsResponse:
        if not request.run_id:
            raise InvalidRequestError("run_id", "is required")
        which = self._log_filter(request.filter)
        await self._store.get_run(request.run_id)  # NOT_FOUND for an unknown run
        chunks = await self._history.log_chunks(request.run_id, request.task, request.attempt)
        return history_pb2.GetLogsResponse(
            lines=[
                _log_line(record)
                for _id, records in chunks
                for record in records
                if record.matches(which, request.grep)
            ]
        )

    @staticmethod
    def _log_filter(value: history_pb2.LogFilter.ValueType) -> LogFilter:
        which = _LOG_FILTERS.get(value)
        if which is None:
            raise InvalidRequestError("filter", f"unknown log filter {value}")
        return which

    @translate_stream_errors
    async def TailLogs(
        self, request: history_pb2.TailLogsRequest, context: Context
    ) -> AsyncIterator[history_pb2.LogLine]:
        """Lines stored so far, then new chunks as executors store them (each stored chunk
        is announced on the run-events topic, which wakes this stream), until the run has
        finished and its last lines were sent."""
        if not request.run_id:
            raise InvalidRequestError("run_id", "is required")
        which = self._log_filter(request.filter)
        sent: set[str] = set()
        with self._hub.watch(request.run_id) as changed:
            while True:
                # Read the status first: lines stored before a run finished are all there
                # when the status says finished, so the last read below catches them.
                run = await self._store.get_run(request.run_id)
                chunks = await self._history.log_chunks(request.run_id, request.task, 0, sent)
                for chunk_id, records in chunks:
                    sent.add(chunk_id)
                    for record in records:
                        if record.matches(which, request.grep):
                            yield _log_line(record)
                if run.status.finished:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), TAIL_REFRESH_SECONDS)
                changed.clear()

    # --- analytics ------------------------------------------------------------------------

    @translate_errors
    async def GetAnalytics(
        self, request: history_pb2.GetAnalyticsRequest, context: Context
    ) -> history_pb2.Analytics:
        now = self._clock()
        query = run_query(request.filter, now=now)
        if query.date_range is DateRange.ANY and query.since is None:
            query = replace(query, date_range=DateRange.LAST_30D)
        top = request.top or 10
        if not 1 <= top <= 100:
            raise InvalidRequestError("top", "must be 1-100 (0 = 10)")
        collector = analytics.Collector()
        async for doc in self._history.iter_runs(
            query, projection=analytics.PROJECTION, batch=EXPORT_BATCH
        ):
            collector.add(doc)
        queue = analytics.QueueCounter()
        async for doc in self._history.active_runs():
            queue.add(doc)
        lag = self._consumer_lag() if self._consumer_lag else -1
        return analytics.to_proto(collector, queue, lag, query, top)

    # --- retention ------------------------------------------------------------------------

    @translate_errors
    async def GetStorageCounts(
        self, request: history_pb2.GetStorageCountsRequest, context: Context
    ) -> history_pb2.StorageCounts:
        workflows = await self._store.list_workflows()
        retention = {w.name: w.definition.retention_days for w in workflows}
        names_by_id = {w.workflow_id: w.name for w in workflows}
        runs = await self._history.run_counts()
        lines_by_id = await self._history.log_line_counts()
        lines: dict[str, int] = {}
        for workflow_id, count in lines_by_id.items():
            name = names_by_id.get(workflow_id, "")
            lines[name] = lines.get(name, 0) + count
        response = history_pb2.StorageCounts()
        for name in sorted(set(runs) | set(lines) | set(retention)):
            oldest = await self._history.oldest_run(name) if runs.get(name) else None
            response.workflows.append(
                history_pb2.WorkflowStorage(
                    workflow=name,
                    runs=runs.get(name, 0),
                    log_lines=lines.get(name, 0),
                    retention_days=retention.get(name, 0),
                    oldest_run=codec.time_to_proto(oldest),
                )
            )
        response.runs = sum(runs.values())
        response.log_lines = sum(lines.values())
        return response

    @translate_errors
    async def PurgeRuns(
        self, request: history_pb2.PurgeRunsRequest, context: Context
    ) -> history_pb2.PurgeRunsResponse:
        batch = request.batch_size or 500
        if not 1 <= batch <= MAX_PURGE_BATCH:
            raise InvalidRequestError("batch_size", f"must be 1-{MAX_PURGE_BATCH} (0 = 500)")
        report = await purge_expired(
            self._store, self._history, self._clock(), batch, dry_run=request.dry_run
        )
        return report


async def purge_expired(
    store: MongoStore,
    history: HistoryStore,
    now: datetime,
    batch: int = 500,
    *,
    dry_run: bool = False,
) -> history_pb2.PurgeRunsResponse:
    """Delete every workflow's finished runs older than its retention, ``batch`` at a time."""
    response = history_pb2.PurgeRunsResponse(dry_run=dry_run)
    try:
        workflows = await store.list_workflows()
    except WorkflowNotFoundError:
        workflows = []
    for workflow in workflows:
        days = workflow.definition.retention_days
        if days <= 0:
            continue
        entry = history_pb2.WorkflowPurge(workflow=workflow.name, retention_days=days)
        if dry_run:
            entry.runs = await history.count_expired(workflow.name, days, now)
        else:
            while True:
                ids = await history.expired_run_ids(workflow.name, days, now, batch)
                if not ids:
                    break
                purged = await history.delete_runs(ids)
                entry.runs += purged.runs
                entry.attempts += purged.attempts
                entry.log_chunks += purged.log_chunks
                if len(ids) < batch:
                    break
        if entry.runs:
            response.workflows.append(entry)
            response.runs += entry.runs
    return response


async def prepare_history(store: MongoStore) -> None:
    """Create the history and log indexes (at gateway start)."""
    await HistoryStore(store).ensure_indexes()


def add_history_service(server: grpc.aio.Server, store: MongoStore, hub: RunEventsHub) -> str:
    """Register HistoryService on ``server``; returns its full name (health, reflection)."""
    history_pb2_grpc.add_HistoryServiceServicer_to_server(
        HistoryServicer(store, HistoryStore(store), hub), server
    )
    return str(history_pb2.DESCRIPTOR.services_by_name["HistoryService"].full_name)
