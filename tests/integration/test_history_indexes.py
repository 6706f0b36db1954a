"""Which plan the store picks for the queries the gateway serves, and that history pages read
in windows (see :mod:`flowyard.adapters.history`) come out exactly as one sorted query would.

Every plan must read through an index (an ``IXSCAN``) and never the whole collection
(``COLLSCAN``); a history page's equality filters must be conditions of that index scan,
not checks made after fetching. DocumentDB sorts what the index found (a ``SORT`` stage)
where MongoDB walks the index in order: the page windows keep that set small, so a sort is
allowed here.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flowyard.adapters.alert_store import AlertStore
from flowyard.adapters.history import HistoryStore, PageWindows
from flowyard.adapters.mongo import MongoStore
from flowyard.config import Settings
from flowyard.domain.run import RunStatus, TriggerKind
from flowyard.history.query import (
    INDEXES,
    Cursor,
    DateRange,
    RunQuery,
    SortKey,
    index_for,
    mongo_filter,
    mongo_sort,
    range_start,
)
from pymongo.asynchronous.collection import AsyncCollection

from tests.history_seed import Seed, seed_docs

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)
QUERIES = {
    "all, newest first": RunQuery(),
    "failed": RunQuery(statuses=(RunStatus.FAILED,)),
    "failed or stopped, 7 days": RunQuery(
        statuses=(RunStatus.FAILED, RunStatus.STOPPED), date_range=DateRange.LAST_7D
    ),
    "one workflow": RunQuery(workflow="wf-1"),
    "one workflow, failed": RunQuery(workflow="wf-1", statuses=(RunStatus.FAILED,)),
    "one workflow, version 2": RunQuery(workflow="wf-1", version=2),
    "one type": RunQuery(workflow_type="ops"),
    "by trigger": RunQuery(trigger_kind="schedule"),
    "by user": RunQuery(started_by="alice"),
    "today": RunQuery(date_range=DateRange.TODAY),
    "search by name": RunQuery(search="wf-1"),
    "search by month": RunQuery(search="dec"),
    "longest": RunQuery(sort=SortKey.DURATION),
    "longest failed": RunQuery(sort=SortKey.DURATION, statuses=(RunStatus.FAILED,)),
}


@pytest.fixture
async def history(settings: Settings) -> AsyncIterator[HistoryStore]:
    async with MongoStore(settings.mongo_url, settings.mongo_db) as store:
        history = HistoryStore(store)
        await history.ensure_indexes()
        seeds = [
            Seed(
                f"wf-{i % 3}",
                NOW - timedelta(hours=i),
                [RunStatus.FAILED, RunStatus.SUCCEEDED][i % 2],
            )
            for i in range(30)
        ]
        await store.runs.insert_many(seed_docs(seeds))
        await store.workflows.insert_many(
            [{"_id": f"wf-{i}:1", "name": f"wf-{i}", "version": 1} for i in range(3)]
        )
        yield history


def _stages(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for key in ("inputStage", "queryPlan"):
        if isinstance(plan.get(key), dict):
            found += _stages(plan[key])
    for child in plan.get("inputStages", []):
        found += _stages(child)
    return found


def _indexed_fields(scan: dict[str, Any]) -> set[str]:
    """Fields an index scan's conditions name (``[{"$eq": {"status": "failed"}}, ...]``)."""
    fields: set[str] = set()
    for condition in scan.get("indexFilterSet", []):
        for operands in condition.values():
            fields |= set(operands)
    return fields


def assert_index_scan(plan: dict[str, Any], fields: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    stages = _stages(plan)
    shown = json.dumps(plan, default=str)
    scans = [s for s in stages if s.get("stage") == "IXSCAN"]
    assert scans, shown
    assert not any(s.get("stage") == "COLLSCAN" for s in stages), shown
    if fields:
        assert any(fields <= _indexed_fields(s) for s in scans), (fields, shown)


async def explain_find(
    collection: AsyncCollection[dict[str, Any]],
    query: dict[str, Any],
    sort: dict[str, int] | None = None,
    limit: int = 0,
) -> dict[str, Any]:
    command: dict[str, Any] = {"find": collection.name, "filter": query}
    if sort:
        command["sort"] = sort
    if limit:
        command["limit"] = limit
    explained = await collection.database.command({"explain": command, "verbosity": "queryPlanner"})
    plan: dict[str, Any] = explained["queryPlanner"]["winningPlan"]
    return plan


async def test_the_history_indexes_exist(history: HistoryStore) -> None:
    names = {index["name"] async for index in await history.runs.list_indexes()}
    assert set(INDEXES) <= names


@pytest.mark.parametrize("name", list(QUERIES))
async def test_history_pages_read_through_an_index(history: HistoryStore, name: str) -> None:
    query = replace(QUERIES[name], now=NOW)
    plan = (await history.explain_list(query))["queryPlanner"]["winningPlan"]
    equality = {k for k, _ in INDEXES[index_for(query)][:-2]}
    assert_index_scan(plan, equality if not query.search else set())


async def test_a_page_after_a_cursor_reads_through_an_index(history: HistoryStore) -> None:
    query = replace(QUERIES["failed"], now=NOW, limit=5)
    _, cursor = await history.list_runs(query)
    assert cursor is not None
    window = PageWindows(query, cursor).first()
    assert window is not None
    plan = await explain_find(
        history.runs,
        mongo_filter(query, cursor, window=window),
        dict(mongo_sort(query)),
        query.limit + 1,
    )
    assert_index_scan(plan, {"status"})


async def test_run_detail_logs_timers_and_queued_runs_read_through_an_index(
    history: HistoryStore,
) -> None:
    run_id = (await history.runs.find_one({}))["_id"]  # type: ignore[index]
    by_id = await explain_find(history.runs, {"_id": run_id})
    assert_index_scan(by_id)
    assert {s.get("indexName") for s in _stages(by_id)} >= {"_id_"}
    assert_index_scan(await explain_find(history.attempts, {"run_id": run_id}), {"run_id"})
    assert_index_scan(await explain_find(history.logs, {"run_id": run_id}), {"run_id"})
    assert_index_scan(
        await explain_find(history.timers, {"due_at": {"$lte": NOW}}, {"due_at": 1}, 200),
        {"due_at"},
    )
    queued = {"workflow_id": "id-wf-1", "status": "queued"}
    assert_index_scan(
        await explain_find(history.runs, queued, {"created_at": 1}, 10),
        {"workflow_id", "status"},
    )


async def test_alert_log_reads_through_an_index(settings: Settings) -> None:
    async with AlertStore.connect(settings.mongo_url, settings.mongo_db) as alerts:
        await alerts.activity.insert_many(
            [
                {"_id": f"a{i}", "run_id": f"r{i % 5}", "at": NOW - timedelta(minutes=i)}
                for i in range(20)
            ]
        )
        plan = await explain_find(alerts.activity, {"run_id": "r1"}, {"at": -1, "_id": -1}, 51)
        assert_index_scan(plan, {"run_id"})
        plan = await explain_find(alerts.due, {"due_at": {"$lte": NOW}}, {"due_at": 1}, 200)
        assert_index_scan(plan, {"due_at"})


# --- windows give the same pages as one sorted query ---------------------------------------


def _expected(docs: list[dict[str, Any]], query: RunQuery) -> list[str]:
    lower = [t for t in (range_start(query.date_range, query.now), query.since) if t]

    def keep(doc: dict[str, Any]) -> bool:
        created = doc["created_at"].replace(tzinfo=UTC)
        if lower and created < max(lower):
            return False
        if query.until and created >= query.until:
            return False
        if query.statuses and doc["status"] not in {s.value for s in query.statuses}:
            return False
        return not (query.workflow and doc["workflow_name"] != query.workflow)

    def key(doc: dict[str, Any]) -> tuple[Any, str]:
        field = query.sort.field
        value = doc[field] if field != "created_at" else doc[field].replace(tzinfo=UTC)
        return (value, doc["_id"])

    kept = sorted(filter(keep, docs), key=key, reverse=not query.ascending)
    return [doc["_id"] for doc in kept]


async def test_pages_read_in_windows_equal_one_sorted_query(settings: Settings) -> None:
    """Runs bunched and spread over three years (some in the last minutes, long gaps), with
    durations from none to hours: every page sequence equals the reference order."""
    rng = random.Random(7)
    ages = (
        [timedelta(minutes=rng.uniform(0, 50)) for _ in range(40)]
        + [timedelta(hours=rng.uniform(1, 30)) for _ in range(40)]
        + [timedelta(days=rng.uniform(2, 60)) for _ in range(60)]
        + [timedelta(days=rng.uniform(100, 1000)) for _ in range(40)]
    )
    seeds = [
        Seed(
            f"wf-{i % 4}",
            NOW - age,
            rng.choice([RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.RUNNING]),
            trigger=rng.choice(list(TriggerKind)),
            duration=timedelta(seconds=rng.choice([0.5, 3, 40, 400, 4000, 40000])),
            run_id=f"{i:04d}{rng.getrandbits(32):08x}",
        )
        for i, age in enumerate(ages)
    ]
    async with MongoStore(settings.mongo_url, settings.mongo_db) as store:
        history = HistoryStore(store)
        docs = seed_docs(seeds)
        await store.runs.insert_many(docs)
        stored = [d async for d in store.runs.find({}, {"tasks": 0})]
        for query in (
            RunQuery(limit=7),
            RunQuery(limit=50),
            RunQuery(limit=7, statuses=(RunStatus.FAILED,)),
            RunQuery(limit=9, workflow="wf-2"),
            RunQuery(limit=11, sort=SortKey.DURATION),
            RunQuery(limit=6, sort=SortKey.DURATION, statuses=(RunStatus.FAILED,)),
            RunQuery(limit=13, ascending=True),
            RunQuery(limit=5, date_range=DateRange.LAST_30D),
            RunQuery(limit=4, date_range=DateRange.LAST_7D, statuses=(RunStatus.RUNNING,)),
            RunQuery(limit=8, sort=SortKey.DURATION, date_range=DateRange.LAST_30D),
            RunQuery(limit=5, since=NOW - timedelta(days=400), until=NOW - timedelta(days=1)),
        ):
            query = replace(query, now=NOW)
            seen: list[str] = []
            cursor: Cursor | None = None
            for _ in range(200):
                page, cursor = await history.list_runs(query, cursor)
                seen += [doc["_id"] for doc in page]
                if cursor is None:
                    break
            assert seen == _expected(stored, query), query
